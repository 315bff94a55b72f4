"""Real host: the block forward runs unchanged on ComfyUI's own loaded Wan model.

ComfyUI builds its WanModel from comfy.ops layers inside a ModelPatcher. The same weights, driven by our
block forward through that module tree, must give what our plain-torch WanDiT gives. A 48-channel (Wan2.2
TI2V-5B, LongLive 2.0) DiT runs the same way, and end to end in a real server's queue: the tiny Wan2.2 files of
``tiny-models`` through the sampler and core VAE Decode. Runs only when COMFYUI_DIR is set (see
conftest.comfy_host / comfy_server); CI has no ComfyUI and skips it.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

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


# ------------------------------------------------------------------------------------------------------------------
# The 48-channel run end to end in the server's queue: tiny Wan2.2 DiT -> sampler -> core VAE Decode (Wan2.2 VAE)

WAN22_WIDTH, WAN22_HEIGHT = 64, 32
"""Multiples of 32 px (the Wan2.2 VAE's stride 16 times the DiT's 2x2 patches), unequal so that a transposed
frame shows. The full-size random Wan2.2 VAE decodes 61 frames of this size in about 40 s on two CPU cores."""
WAN22_SHOT_SECONDS = 2.0
"""One 8-frame block per shot at 16 fps (8 latent frames = 32 video frames): two shots make two blocks."""


def _queue(url: str, prompt: dict, timeout: float = 900) -> dict:
    """POST ``prompt`` to the server's queue and wait for its history entry (HTTP only: the /history route is
    what a client without a websocket reads). Returns the entry, with the POST answer under ``"posted"``."""
    import time
    import urllib.request

    request = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        posted = json.loads(answer.read())
    assert posted.get("node_errors") == {}, posted
    prompt_id = posted["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = json.loads(_get(url, f"/history/{prompt_id}"))
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None \
                and entry["status"].get("status_str") in ("success", "error"):
            return {**entry, "posted": posted}
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def _get(url: str, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=60) as answer:
        return answer.read()


def _view(url: str, file: dict) -> bytes:
    from urllib.parse import urlencode

    return _get(url, "/view?" + urlencode({k: file[k] for k in ("filename", "subfolder", "type")}))


def _error(entry: dict) -> dict | None:
    return next((data for kind, data in entry["status"].get("messages", []) if kind == "execution_error"), None)


@pytest.fixture(scope="module")
def wan22_models(comfy_server):
    """The tiny Wan2.2 DiT and the full-size random Wan2.2 VAE written by the tiny-models command's own function
    into the running server's models folder (its extra_model_paths base_path, which ComfyUI rescans when a folder
    changes); removed afterwards (1.4 GB)."""
    from echo_forcing.cli import tiny_models

    written = tiny_models.write_tiny_models(comfy_server.models_dir, ("wan22-dit", "wan22-vae"), seed=2,
                                            log=lambda _: None)
    try:
        yield {"dit": Path(tiny_models.WAN22_DIT_FILE).name, "vae": Path(tiny_models.WAN22_VAE_FILE).name,
               "clip": Path(tiny_models.CLIP_FILE).name, "wan21_vae": Path(tiny_models.VAE_FILE).name}
    finally:
        for file in written:
            file.path.unlink(missing_ok=True)


def wan22_prompt(models: dict, loader: str, vae: str, tag: str, seed: int = 11, decode: bool = True) -> dict:
    """An API graph built from the shipped six_shot_smooth workflow's nodes: the tiny Wan2.2 DiT through Load
    Causal DiT (model_card auto) or core Load Diffusion Model, two shots joined by a hard cut, the longlive2
    memory preset, the sampler at 64x32, core VAE Decode with ``vae`` into Save Image, and the LATENT saved."""
    shipped = json.loads((ROOT / "workflows" / "api" / "six_shot_smooth.json").read_text(encoding="utf-8"))
    node = {v["class_type"]: v for v in reversed(list(shipped.values()))}  # the first node of each type
    first = next(v for v in shipped.values() if v["class_type"] == "EchoForcingScenePrompt")

    def like(class_type: str, **inputs) -> dict:
        source = first if class_type == "EchoForcingScenePrompt" else node[class_type]
        return {"class_type": class_type, "inputs": {**source["inputs"], **inputs}}

    dit = like("EchoForcingLoadCausalDiT", ckpt_name=models["dit"], model_card="auto") if loader == "pack" else \
        {"class_type": "UNETLoader", "inputs": {"unet_name": models["dit"], "weight_dtype": "default"}}
    prompt = {
        "1": dit,
        "2": like("CLIPLoader", clip_name=models["clip"], type="sd3"),
        "4": like("EchoForcingScenePrompt", text="a harbour at dawn, fishing boats rocking on grey water",
                  duration=WAN22_SHOT_SECONDS, transition="smooth", label="harbour", clip=["2", 0]),
        "5": like("EchoForcingScenePrompt", text="a pine forest in deep snow, a fox crossing a clearing",
                  duration=WAN22_SHOT_SECONDS, transition="hard cut", label="forest", clip=["2", 0],
                  previous=["4", 0]),
        "6": like("EchoForcingMemoryConfig", preset="longlive2"),
        "7": like("EchoForcingSampler", seed=seed, width=WAN22_WIDTH, height=WAN22_HEIGHT, fps=16.0, steps=0,
                  model=["1", 0], scenes=["5", 0], config=["6", 0]),
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0],
                                                       "filename_prefix": f"echo_forcing/wan22_{tag}"}},
    }
    if decode:
        prompt["3"] = like("VAELoader", vae_name=vae)
        prompt["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}}
        prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0],
                                                             "filename_prefix": f"echo_forcing/wan22_{tag}"}}
    return prompt


def _latent(url: str, entry: dict):
    from safetensors.torch import load as load_safetensors

    return load_safetensors(_view(url, entry["outputs"]["10"]["latents"][0]))["latent_tensor"]


@pytest.mark.comfyui
@pytest.mark.parametrize("loader", ["pack", "core"])
def test_a_tiny_wan22_run_decodes_through_core_vae_decode_in_the_server_queue(comfy_server, wan22_models, loader):
    """LongLive 2.0's layout end to end in the real queue: Load Causal DiT (card auto) or core Load Diffusion
    Model -> two shots with a hard cut -> the longlive2 preset -> the sampler (8-frame blocks, UniPC) -> core VAE
    Decode with the Wan2.2 VAE from core VAELoader -> Save Image. T latent frames give 1 + 4 (T - 1) frames of
    16x the latent size; the LATENT has 48 channels; the report says which card the run took and why."""
    from PIL import Image

    from echo_forcing.models import model_cards

    log_start = len(comfy_server.log())
    entry = _queue(comfy_server.url, wan22_prompt(wan22_models, loader, wan22_models["vae"], loader))
    assert entry["status"]["status_str"] == "success", _error(entry)
    latent = _latent(comfy_server.url, entry)
    t = 2 * 8  # two shots of one 8-frame block each
    assert list(latent.shape) == [1, 48, t, WAN22_HEIGHT // 16, WAN22_WIDTH // 16], latent.shape
    assert latent.isfinite().all() and latent.std() > 0.01

    timeline = entry["outputs"]["7"]["echo_timeline"][0]
    assert timeline["total_blocks"] == 2 and [s["blocks"] for s in timeline["scenes"]] == [1, 1], timeline
    assert timeline["scenes"][1]["transition"] == "hard cut", timeline["scenes"][1]
    report = entry["outputs"]["7"]["text"][0]
    card = model_cards.by_name("longlive2-5b")
    who = wan22_models["dit"] if loader == "pack" else "the model (from a loader without model cards)"
    assert (f"note: model card {card.name}: {who} is a Wan2.2 DiT of width 256 and 2 layers (48 latent "
            f"channels), which no model card describes: it gets the {card.title} settings") in report, report

    frames = entry["outputs"]["9"]["images"]
    assert len(frames) == 1 + 4 * (t - 1) == 61, len(frames)
    for file in (frames[0], frames[30], frames[-1]):
        with Image.open(io.BytesIO(_view(comfy_server.url, file))) as picture:
            assert picture.size == (WAN22_WIDTH, WAN22_HEIGHT) and picture.mode == "RGB", (file, picture.size)
            low, high = zip(*picture.getextrema(), strict=True)
            assert max(high) - min(low) > 10, picture.getextrema()  # a random VAE's output, not a blank frame
    if loader == "core":
        loaded = re.findall(r"Requested to load (WAN2\w*)", comfy_server.log()[log_start:])
        assert loaded == ["WAN22"], loaded  # core's own detection of this run's model: Wan2.2, 48-channel latents


@pytest.mark.comfyui
def test_the_wan21_vae_on_a_48_channel_latent_fails_that_prompt_and_the_server_runs_the_next(comfy_server,
                                                                                            wan22_models):
    """Core VAE Decode with the 16-channel Wan2.1 VAE on the sampler's 48-channel LATENT: ComfyUI checks no
    channels and runs the decode, whose first convolution (``conv2``, 16 -> 16) refuses the input. The prompt
    fails at VAE Decode with torch's message, "Given groups=1, weight of size [16, 16, 1, 1, 1], expected
    input[1, 48, 16, 2, 4] to have 16 channels, but got 48 channels instead" (v0.3.64 and v0.28.0 alike; the
    pack's LATENT is a plain core LATENT), and the server runs the next prompt."""
    entry = _queue(comfy_server.url, wan22_prompt(wan22_models, "pack", wan22_models["wan21_vae"], "wan21_vae"))
    assert entry["status"]["status_str"] == "error"
    error = _error(entry)
    assert error is not None and error["node_type"] == "VAEDecode", error
    assert "to have 16 channels, but got 48 channels instead" in error["exception_message"], error  # torch's
    assert "9" not in entry["outputs"]

    after = _queue(comfy_server.url, wan22_prompt(wan22_models, "pack", wan22_models["vae"], "after_error", seed=12,
                                                  decode=False))
    assert after["status"]["status_str"] == "success", _error(after)
    assert list(_latent(comfy_server.url, after).shape) == [1, 48, 16, WAN22_HEIGHT // 16, WAN22_WIDTH // 16]
