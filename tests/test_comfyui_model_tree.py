"""Real host: the block forward runs unchanged on ComfyUI's own loaded Wan model.

ComfyUI builds its WanModel from comfy.ops layers inside a ModelPatcher. The same weights, driven by our
block forward through that module tree, must give what our plain-torch WanDiT gives. Runs only when
COMFYUI_DIR is set (see conftest.comfy_host); CI has no ComfyUI and skips it.
"""

from __future__ import annotations

import json

import pytest

SCRIPT = r"""
import json, sys, torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.model_management as mm
import comfy.sd
from echo_forcing.memory import SelfForcingCacheConfig
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutSettings, rollout

weight_dtype = getattr(torch, sys.argv[1])
# ComfyUI detects a Wan2.1 DiT by its keys; it fixes text_dim at 4096 and freq_dim at 256.
cfg = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
sd = random_wan_state_dict(cfg, seed=3)
patcher = comfy.sd.load_diffusion_model_state_dict({"model.diffusion_model." + k: v for k, v in sd.items()},
                                                   model_options={"dtype": weight_dtype})
mm.load_models_gpu([patcher])
tree = patcher.model.diffusion_model
stored = {n: p.dtype for n, p in tree.named_parameters()}
# our plain module gets exactly the values ComfyUI stores (rounded to its weight dtype), in float32
ours = CausalWan(WanDiT.from_state_dict({k: v.to(stored[k]).float() for k, v in sd.items()}), dtype=torch.float32)
theirs = CausalWan(tree, dtype=torch.float32, device=mm.get_torch_device())
context = torch.randn(1, 20, 4096, generator=torch.Generator().manual_seed(1))
settings = RolloutSettings(num_frames=6, height=64, width=96, seed=5)
a = rollout(ours, ours.encode_text(context), settings, SelfForcingCacheConfig()).latents
b = rollout(theirs, theirs.encode_text(context), settings, SelfForcingCacheConfig()).latents
q = tree.blocks[0].self_attn.q
from echo_forcing.pipeline.memory_need import weight_bytes
stored_bytes = sum(p.numel() * p.element_size() for p in tree.parameters())  # what the sampler's plan counts
print(json.dumps({
    "weights_after_run": sorted({str(p.dtype) for n, p in tree.named_parameters() if n.startswith("blocks.")
                                 and n.endswith("weight") and p.dim() == 2}),
    "stored_fraction_of_float32": stored_bytes / weight_bytes(cfg, torch.float32),
    "model_class": type(patcher.model).__name__,
    "tree_class": type(tree).__name__,
    "linear_class": type(q).__module__ + "." + type(q).__qualname__,
    "modulation_dtype": str(tree.blocks[0].modulation.dtype),
    "config_matches": theirs.config == ours.config,
    "max_abs_diff": (a - b).abs().max().item(),
    "scale": a.abs().max().item(),
}))
"""


@pytest.mark.comfyui
@pytest.mark.parametrize("weight_dtype", ["float32", "float8_e4m3fn"])
def test_block_forward_on_comfyui_wan_model_matches_the_pack_module(comfy_host, weight_dtype):
    """float32 weights, and fp8 weights that ComfyUI casts on every call (modulation stored in fp8 too)."""
    out = comfy_host.run(SCRIPT, weight_dtype)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["model_class"] == "WAN21"
    assert result["tree_class"] == "WanModel"
    assert result["linear_class"].startswith("comfy.ops.")  # ComfyUI's cast-on-call layers, not nn.Linear
    assert result["modulation_dtype"] == f"torch.{weight_dtype}"
    assert result["config_matches"]
    # the weights stay as stored through a run (fp8 stays one byte each on the device) and the memory plan
    # counts them so: a quarter of float32 for fp8
    assert result["weights_after_run"] == [f"torch.{weight_dtype}"]
    expected = {"float32": 1.0, "float8_e4m3fn": 0.25}[weight_dtype]
    assert abs(result["stored_fraction_of_float32"] - expected) < 0.02, result
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["scale"]), result


WAN22_SCRIPT = r"""
import json, torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.latent_formats
import comfy.model_management as mm
import comfy.sd
from echo_forcing.memory.presets import make_policy
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.models.flow_unipc import unipc_timesteps
from echo_forcing.pipeline import RolloutSettings, rollout
from echo_forcing.pipeline.latents import WAN22, from_comfy_latent, to_comfy_latent

cfg = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, in_dim=48, out_dim=48)
sd = random_wan_state_dict(cfg, seed=3)
patcher = comfy.sd.load_diffusion_model_state_dict({"model.diffusion_model." + k: v for k, v in sd.items()})
mm.load_models_gpu([patcher])
tree = patcher.model.diffusion_model
ours = CausalWan(WanDiT.from_state_dict(sd), dtype=torch.float32)
theirs = CausalWan(tree, dtype=torch.float32, device=mm.get_torch_device())
context = torch.randn(1, 20, 4096, generator=torch.Generator().manual_seed(1))
settings = RolloutSettings(num_frames=16, height=64, width=64, seed=5, frames_per_block=8, solver="unipc",
                           steps=unipc_timesteps(4, 5.0), vae_stride=16)
a = rollout(ours, ours.encode_text(context), settings, make_policy("longlive2")).latents
b = rollout(theirs, theirs.encode_text(context), settings, make_policy("longlive2")).latents
fmt = comfy.latent_formats.Wan22()
raw = to_comfy_latent(a)
print(json.dumps({
    "model_class": type(patcher.model).__name__,
    "latent_channels": fmt.latent_channels,
    "mean_matches": torch.allclose(fmt.latents_mean.flatten().float(), torch.tensor(WAN22.mean)),
    "std_matches": torch.allclose(fmt.latents_std.flatten().float(), torch.tensor(WAN22.std)),
    "process_in_matches": torch.allclose(fmt.process_in(raw), a.permute(0, 2, 1, 3, 4), atol=1e-5),
    "round_trip": torch.allclose(from_comfy_latent(raw), a, atol=1e-6),
    "shape": list(a.shape),
    "max_abs_diff": (a - b).abs().max().item(),
    "scale": a.abs().max().item(),
}))
"""


@pytest.mark.comfyui
def test_a_wan22_5b_layout_loads_as_core_wan22_and_runs_with_longlive2_settings(comfy_host):
    """A 48-channel DiT (Wan2.2-TI2V-5B's layout, LongLive 2.0's) loaded by ComfyUI is core's WAN22 model; the
    block forward with 8-frame blocks, the UniPC solver and the longlive2 cache gives the latents of the pack's own
    module, and the pack's Wan2.2 latent statistics are ComfyUI's (VAE Decode gets the latents it expects)."""
    out = comfy_host.run(WAN22_SCRIPT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["model_class"] == "WAN22" and result["latent_channels"] == 48, result
    assert result["mean_matches"] and result["std_matches"] and result["process_in_matches"], result
    assert result["round_trip"] and result["shape"] == [1, 16, 48, 4, 4], result
    assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["scale"]), result
