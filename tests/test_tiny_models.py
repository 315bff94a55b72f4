"""``python -m echo_forcing tiny-models``: tiny random model files that ComfyUI's own loaders accept.

In CI (no ComfyUI) the command writes the DiT files and the pack's loader reads them; the CLIP-L, Wan2.1 VAE
and Wan2.2 VAE layouts are checked by their key counts and parameter totals, computed from shapes only (nothing
allocated). Those figures were read off ComfyUI's own modules built on the meta device (``comfy.clip_model.
CLIPTextModel`` with ``sd1_clip_config.json``, ``comfy.ldm.wan.vae.WanVAE`` and ``comfy.ldm.wan.vae2_2.WanVAE``
with the configs ``comfy.sd.VAE`` uses): the same 197 / 194 / 196 names with identical shapes (the Wan2.2 one
in v0.3.64 and v0.28.0). The real-host tests (COMFYUI_DIR) load the default files with ComfyUI's own loader
nodes through an ``extra_model_paths.yaml`` entry, as a user would, and compare the Wan2.2 VAE layout with the
module ComfyUI builds; tests/test_comfyui_model_tree.py runs the Wan2.2 files through a server's queue.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from echo_forcing.__main__ import main
from echo_forcing.cli import tiny_models
from echo_forcing.cli.tiny_files import (
    TINY_DIT_CONFIG,
    TINY_WAN22_DIT_CONFIG,
    WAN22_VAE,
    clip_l_shapes,
    parameter_count,
    random_wan22_vae_state_dict,
    tiny_lora_shapes,
    wan22_vae_shapes,
)
from echo_forcing.cli.tiny_models import (
    CLIP_FILE,
    DIT_FILE,
    LORA_FILE,
    SELF_FORCING_FILE,
    VAE_FILE,
    WAN22_DIT_FILE,
    WAN22_VAE_FILE,
    TinyModelsError,
    extra_model_paths_snippet,
    parse_only,
)
from echo_forcing.models import WanConfig, load_wan_checkpoint, load_wan_model, model_cards
from echo_forcing.models.checkpoints import read_tensors
from echo_forcing.models.wan_vae import wan_vae_shapes

DIT_FILES = (DIT_FILE, SELF_FORCING_FILE, LORA_FILE)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_command_writes_dit_files_that_the_pack_loader_reads(tmp_path, capsys):
    assert main(["tiny-models", str(tmp_path), "--only", "dit"]) == 0
    assert _files(tmp_path) == sorted(DIT_FILES)  # no CLIP / VAE, no temporary files left behind
    printed = capsys.readouterr().out
    assert f"base_path: {tmp_path.resolve().as_posix()}" in printed and "diffusion_models: diffusion_models" in printed

    expected = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
    assert TINY_DIT_CONFIG == expected and expected.freq_dim == 256 and expected.head_dim == 128
    plain = assert_plain_and_research_files_hold_the_same_weights(tmp_path, expected)
    assert_lora_merges_as_longlive_does(tmp_path, plain)

    dit = load_wan_model(tmp_path / DIT_FILE, dtype=torch.float32)
    assert dit.config == expected


def assert_plain_and_research_files_hold_the_same_weights(root, expected: WanConfig):
    """The plain Wan file and the Self-Forcing pickle (both entries) load to the same small weights of the
    ``expected`` shape; the plain file's loaded checkpoint."""
    plain = load_wan_checkpoint(root / DIT_FILE, dtype=torch.float32)
    research = load_wan_checkpoint(root / SELF_FORCING_FILE, dtype=torch.float32)
    assert plain.config == research.config == expected
    assert plain.source == "plain Wan state dict"
    assert research.source.endswith("(generator_ema)")
    assert len(plain.state_dict) == 69 and plain.config.parameter_count() == 3_259_200
    assert plain.state_dict.keys() == research.state_dict.keys()
    assert all(torch.equal(v, research.state_dict[k]) for k, v in plain.state_dict.items())
    generator = load_wan_checkpoint(root / SELF_FORCING_FILE, weights="generator", dtype=torch.float32)
    assert all(torch.equal(v, generator.state_dict[k]) for k, v in plain.state_dict.items())
    raw = read_tensors(root / SELF_FORCING_FILE)
    assert sorted(raw) == ["generator", "generator_ema"]
    assert all(k.startswith("model.") for k in raw["generator_ema"])
    stds = [v.std().item() for k, v in plain.state_dict.items() if k.endswith(".weight") and v.dim() == 2]
    assert max(stds) < 0.1  # small weights (fan-in scaled), so a forward stays finite
    return plain


def assert_lora_merges_as_longlive_does(root, plain) -> None:
    """The LoRA file has PEFT's layout and merges into every block linear, W += (alpha / r) B A with alpha = r."""
    lora = read_tensors(root / LORA_FILE)["generator_lora"]
    assert {k: tuple(v.shape) for k, v in lora.items()} == tiny_lora_shapes(TINY_DIT_CONFIG, rank=4)
    merged = load_wan_checkpoint(root / SELF_FORCING_FILE, lora=root / LORA_FILE, dtype=torch.float32)
    name = "blocks.1.cross_attn.v"
    a, b = lora[f"base_model.model.{name}.lora_A.weight"], lora[f"base_model.model.{name}.lora_B.weight"]
    delta = merged.state_dict[name + ".weight"] - plain.state_dict[name + ".weight"]
    assert delta.abs().max() > 0 and torch.allclose(delta, b @ a, atol=1e-6)
    changed = {k for k, v in merged.state_dict.items() if not torch.equal(v, plain.state_dict[k])}
    assert changed == {f"blocks.{i}.{t}.weight" for i in range(2) for t in
                       ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                        "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")}


def test_seed_changes_the_weights_and_the_same_seed_repeats_them(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "5")):
        assert main(["tiny-models", str(tmp_path / name), "--only", "dit", "--seed", seed]) == 0
    a, b, c = (read_tensors(tmp_path / n / DIT_FILE) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.ffn.0.weight"], c["blocks.0.ffn.0.weight"])


def test_refuses_to_overwrite_without_force(tmp_path):
    assert main(["tiny-models", str(tmp_path), "--only", "dit"]) == 0
    before = {f: (tmp_path / f).stat().st_mtime_ns for f in DIT_FILES}
    out = subprocess.run([sys.executable, "-m", "echo_forcing", "tiny-models", str(tmp_path), "--only", "dit",
                          "--seed", "3"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "refusing to overwrite 3 existing file(s)" in out.stderr and "--force" in out.stderr
    assert str(tmp_path / DIT_FILE) in out.stderr
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in DIT_FILES} == before
    old = read_tensors(tmp_path / DIT_FILE)["head.head.weight"]
    assert main(["tiny-models", str(tmp_path), "--only", "dit", "--seed", "3", "--force"]) == 0
    assert not torch.equal(read_tensors(tmp_path / DIT_FILE)["head.head.weight"], old)
    assert _files(tmp_path) == sorted(DIT_FILES)


def test_only_option():
    assert parse_only(None) == ("dit", "clip", "vae")  # the Wan2.2 parts (1.4 GB) only when asked for
    assert parse_only("vae, DIT") == ("dit", "vae")
    assert parse_only("wan22-vae,dit,Wan22-DiT") == ("dit", "wan22-dit", "wan22-vae")
    for bad in ("", "dit,unet", ",", "wan22"):
        with pytest.raises(TinyModelsError, match="subset of dit,clip,vae,wan22-dit,wan22-vae"):
            parse_only(bad)


def test_extra_model_paths_snippet_names_comfyui_folders(tmp_path):
    lines = extra_model_paths_snippet(tmp_path).splitlines()
    assert lines[0] == "echo_forcing_tiny:"
    assert lines[1] == f"    base_path: {tmp_path.resolve().as_posix()}"
    folders = {ln.split(":")[0].strip() for ln in lines[2:]}
    assert folders == {"diffusion_models", "text_encoders", "vae", "loras"}
    assert {f.split("/")[0] for f in (DIT_FILE, SELF_FORCING_FILE, LORA_FILE, CLIP_FILE, VAE_FILE, WAN22_DIT_FILE,
                                      WAN22_VAE_FILE)} == folders


def test_clip_l_layout_matches_comfyui():
    shapes = clip_l_shapes()
    assert len(shapes) == 197
    assert parameter_count(shapes) == 123_650_304  # ComfyUI's CLIPTextModel, text_projection included
    assert parameter_count(shapes) - 768 * 768 == 123_060_480  # the text tower alone (HF CLIPTextModel)
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes["text_model.embeddings.position_embedding.weight"] == (77, 768)
    assert shapes["text_model.encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    assert shapes["text_projection.weight"] == (768, 768)
    assert "text_model.encoder.layers.12.mlp.fc1.weight" not in shapes  # 12 layers: detected as CLIP-L
    assert sum(k.startswith("text_model.encoder.layers.") for k in shapes) == 12 * 16


def test_wan21_vae_layout_matches_comfyui():
    shapes = wan_vae_shapes()
    assert len(shapes) == 194
    assert parameter_count(shapes) == 126_892_531
    assert shapes["decoder.middle.0.residual.0.gamma"] == (384, 1, 1, 1)  # ComfyUI's Wan VAE detection key
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in shapes  # that would be the Wan 2.2 VAE
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3) and shapes["conv1.weight"] == (32, 32, 1, 1, 1)
    assert shapes["decoder.conv1.weight"] == (384, 16, 3, 3, 3)
    assert shapes["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    assert shapes["encoder.middle.1.norm.gamma"] == (384, 1, 1)
    # temporal resampling only where Wan2.1 has it: encoder stages 2-3, decoder stages 1-2
    assert sorted(k for k in shapes if "time_conv.weight" in k) == [
        "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.7.time_conv.weight",
        "encoder.downsamples.5.time_conv.weight", "encoder.downsamples.8.time_conv.weight"]
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert max(int(k.split(".")[2]) for k in shapes if k.startswith("decoder.upsamples.")) == 14


SMALL_WAN22_VAE = {"dim": 16, "dec_dim": 8}
"""Widths for fast tests of the Wan2.2 VAE's names and values (ComfyUI itself only loads the real widths)."""


def _small_wan22_vae(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return random_wan22_vae_state_dict(seed, dtype, **SMALL_WAN22_VAE)


def test_wan22_vae_layout_matches_comfyui():
    """The names and shapes of ``comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48)`` with its decoder's default
    width 256, as ``comfy.sd.VAE`` builds it for any file holding ``decoder.upsamples.0.upsamples.0.residual.2.
    weight`` (read off v0.3.64 and v0.28.0 on the meta device; the real-host test repeats the comparison)."""
    assert WAN22_VAE == {"dim": 160, "dec_dim": 256, "z_dim": 48}
    shapes = wan22_vae_shapes()
    assert len(shapes) == 196
    assert parameter_count(shapes) == 704_688_668  # 1.41 GB in fp16, like the released wan2.2_vae.safetensors
    # ComfyUI's detection: the Wan VAE key, plus the nested up-sampling stage that only Wan2.2 has
    assert shapes["decoder.middle.0.residual.0.gamma"] == (1024, 1, 1, 1)
    assert shapes["decoder.upsamples.0.upsamples.0.residual.2.weight"] == (1024, 1024, 3, 3, 3)
    assert not set(shapes) & {"decoder.upsamples.0.residual.2.weight", "encoder.downsamples.0.residual.2.weight"}
    # 2x2 pixel patches in and out (12 channels); 48 latent channels, mean and log-variance from the encoder
    assert shapes["encoder.conv1.weight"] == (160, 12, 3, 3, 3)
    assert shapes["encoder.head.2.weight"] == (96, 640, 3, 3, 3) and shapes["conv1.weight"] == (96, 96, 1, 1, 1)
    assert shapes["conv2.weight"] == (48, 48, 1, 1, 1) and shapes["decoder.conv1.weight"] == (1024, 48, 3, 3, 3)
    assert shapes["decoder.head.0.gamma"] == (256, 1, 1, 1) and shapes["decoder.head.2.weight"] == (12, 256, 3, 3, 3)
    assert shapes["encoder.middle.1.norm.gamma"] == (640, 1, 1)
    assert shapes["decoder.middle.1.to_qkv.weight"] == (3072, 1024, 1, 1)
    # time halves in encoder stages 1 and 2, doubles in decoder stages 0 and 1 (time_conv to twice the width)
    assert sorted(k for k in shapes if k.endswith("time_conv.weight")) == [
        "decoder.upsamples.0.upsamples.3.time_conv.weight", "decoder.upsamples.1.upsamples.3.time_conv.weight",
        "encoder.downsamples.1.downsamples.2.time_conv.weight",
        "encoder.downsamples.2.downsamples.2.time_conv.weight"]
    assert shapes["decoder.upsamples.1.upsamples.3.time_conv.weight"] == (2048, 1024, 3, 1, 1)
    assert shapes["decoder.upsamples.2.upsamples.3.resample.1.weight"] == (512, 512, 3, 3)  # keeps the width
    assert "decoder.upsamples.3.upsamples.3.resample.1.weight" not in shapes
    assert shapes["decoder.upsamples.2.upsamples.0.shortcut.weight"] == (512, 1024, 1, 1, 1)
    assert shapes["encoder.downsamples.3.downsamples.1.residual.6.weight"] == (640, 640, 3, 3, 3)
    assert "encoder.downsamples.3.downsamples.2.resample.1.weight" not in shapes
    # any widths keep every name
    assert wan22_vae_shapes(SMALL_WAN22_VAE["dim"], SMALL_WAN22_VAE["dec_dim"]).keys() == shapes.keys()


def test_wan22_vae_weights_are_complete_tame_and_deterministic():
    a, b, c = _small_wan22_vae(0), _small_wan22_vae(0), _small_wan22_vae(1)
    shapes = wan22_vae_shapes(SMALL_WAN22_VAE["dim"], SMALL_WAN22_VAE["dec_dim"])
    assert {k: tuple(v.shape) for k, v in a.items()} == shapes
    assert {v.dtype for v in a.values()} == {torch.float16}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.conv1.weight"], c["decoder.conv1.weight"])
    assert all(v.isfinite().all() for v in a.values())
    gains = torch.cat([v.flatten().float() for k, v in a.items() if k.endswith(".gamma")])
    assert (gains - 1).abs().max() < 0.7 and 0.05 < gains.std() < 0.15  # RMS norm gains near one
    biases = torch.cat([v.flatten().float() for k, v in a.items() if k.endswith(".bias")])
    assert biases.abs().max() < 0.15
    for name in ("decoder.upsamples.0.upsamples.0.residual.2.weight", "encoder.head.2.weight", "conv2.weight"):
        w = a[name].float()
        fan_in = w[0].numel()  # each output's inputs: a unit input gives outputs of order one
        assert abs(w.std().item() * fan_in ** 0.5 - 1) < 0.25, name
    assert random_wan22_vae_state_dict(0, torch.float32, **SMALL_WAN22_VAE)["conv1.weight"].dtype == torch.float32


def test_wan22_parts_write_a_48_channel_dit_the_pack_reads_and_the_wan22_vae(tmp_path, monkeypatch, capsys):
    """``--only wan22-dit,wan22-vae``: the 48-channel DiT at its real (tiny) size, which the pack's loader reads
    and gives LongLive 2.0's card, and the VAE file (drawn here at small widths: the real one is 1.41 GB)."""
    monkeypatch.setattr(tiny_models, "random_wan22_vae_state_dict", _small_wan22_vae)
    assert main(["tiny-models", str(tmp_path), "--only", "wan22-vae,wan22-dit"]) == 0
    assert _files(tmp_path) == sorted([WAN22_DIT_FILE, WAN22_VAE_FILE])
    assert "Wan2.2 VAE" in capsys.readouterr().out

    expected = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, in_dim=48, out_dim=48)
    assert TINY_WAN22_DIT_CONFIG == expected
    loaded = load_wan_checkpoint(tmp_path / WAN22_DIT_FILE, dtype=torch.float32)
    assert loaded.config == expected and loaded.source == "plain Wan state dict"
    assert loaded.state_dict["patch_embedding.weight"].shape == (256, 48, 1, 2, 2)
    assert loaded.state_dict["head.head.weight"].shape == (48 * 4, 256)  # ComfyUI reads out_dim off this
    assert load_wan_model(tmp_path / WAN22_DIT_FILE, dtype=torch.float32).config == expected
    card, how = model_cards.card_for_file(tmp_path / WAN22_DIT_FILE, 256, 2, 48)
    assert card.name == "longlive2-5b" and card.settings()["vae_stride"] == 16 and card.frames_per_block == 8
    assert "is a Wan2.2 DiT of width 256 and 2 layers (48 latent channels)" in how

    vae = read_tensors(tmp_path / WAN22_VAE_FILE)
    assert {k: tuple(v.shape) for k, v in vae.items()} == wan22_vae_shapes(**SMALL_WAN22_VAE)
    assert all(torch.equal(v, _small_wan22_vae(5)[k]) for k, v in vae.items())  # the part's own seed stream


def test_wan22_parts_are_not_overwritten_without_force(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_models, "random_wan22_vae_state_dict", _small_wan22_vae)
    assert main(["tiny-models", str(tmp_path), "--only", "wan22-dit,wan22-vae"]) == 0
    before = {f: (tmp_path / f).stat().st_mtime_ns for f in (WAN22_DIT_FILE, WAN22_VAE_FILE)}
    with pytest.raises(TinyModelsError, match=r"refusing to overwrite 1 existing file\(s\): .*wan22_vae"):
        tiny_models.write_tiny_models(tmp_path, ("dit", "wan22-vae"), seed=3, log=lambda _: None)
    assert _files(tmp_path) == sorted([WAN22_DIT_FILE, WAN22_VAE_FILE])  # refused before writing the DiT files
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in before} == before
    old = read_tensors(tmp_path / WAN22_DIT_FILE)["head.head.weight"]
    assert main(["tiny-models", str(tmp_path), "--only", "wan22-dit", "--seed", "3", "--force"]) == 0
    assert not torch.equal(read_tensors(tmp_path / WAN22_DIT_FILE)["head.head.weight"], old)


WAN22_LAYOUT_SCRIPT = r"""
import json, torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.ldm.wan.vae2_2
import comfy.sd
from echo_forcing.cli.tiny_files import wan22_vae_shapes

class Built(Exception):
    pass

made = {}
def record(**config):  # what comfy.sd.VAE asks for, without allocating 705M parameters
    made.update(config)
    raise Built
real = comfy.ldm.wan.vae2_2.WanVAE
comfy.ldm.wan.vae2_2.WanVAE = record
keys = ("decoder.middle.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.2.weight")
try:
    comfy.sd.VAE(sd={k: torch.zeros(1) for k in keys})
except Built:
    pass
with torch.device("meta"):
    module = real(**made)
theirs = {k: list(v.shape) for k, v in module.state_dict().items()}
ours = {k: list(v) for k, v in wan22_vae_shapes().items()}
print(json.dumps({"config": made, "same": theirs == ours, "only_theirs": sorted(set(theirs) - set(ours))[:5],
                  "only_ours": sorted(set(ours) - set(theirs))[:5],
                  "differ": [k for k in theirs if k in ours and theirs[k] != ours[k]][:5], "count": len(theirs)}))
"""


@pytest.mark.comfyui
def test_wan22_vae_layout_is_the_module_comfyui_builds_for_it(comfy_host):
    """comfy.sd.VAE, given the two keys it detects a Wan2.2 VAE by, builds vae2_2.WanVAE at fixed widths (no
    width is read from the file); that module's state dict is exactly ``wan22_vae_shapes()``."""
    out = comfy_host.run(WAN22_LAYOUT_SCRIPT)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["config"]["dim"] == 160 and res["config"]["z_dim"] == 48 and "dec_dim" not in res["config"], res
    assert res["same"] and res["count"] == 196, res


HOST_SCRIPT = r"""
import json, logging, os, sys, torch
import comfy.cli_args
comfy.cli_args.args.cpu = True
messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Collect())
logging.getLogger().setLevel(logging.DEBUG)  # "clip unexpected" / "Leftover VAE keys" are debug messages
import folder_paths
from utils.extra_config import load_extra_path_config  # before nodes, which puts comfy/ (comfy/utils.py) on sys.path
import comfy.model_management as mm
import nodes

load_extra_path_config(sys.argv[1])
name = {k: os.path.basename(v) for k, v in json.loads(sys.argv[2]).items()}
res = {"listed": {f: sorted(folder_paths.get_filename_list(f)) for f in ("diffusion_models", "text_encoders", "vae",
                                                                         "loras")}}
(model,) = nodes.UNETLoader().load_unet(name["dit"], "default")
res["model_class"] = type(model.model).__name__
(clip,) = nodes.CLIPLoader().load_clip(name["clip"], type="sd3")
(cond,) = nodes.CLIPTextEncode().encode(clip, "a lighthouse on a cliff at dusk")
c = cond[0][0]
res["cond_shape"] = list(c.shape)
res["cond_finite"] = bool(torch.isfinite(c).all())
res["cond_nonzero"] = bool(c[..., :768].abs().max() > 0)
(vae,) = nodes.VAELoader().load_vae(name["vae"])
latent = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))
(images,) = nodes.VAEDecode().decode(vae, {"samples": latent})
res["decode_shape"] = list(images.shape)
res["decode_finite"] = bool(torch.isfinite(images).all())
res["decode_std"] = images.std().item()
(encoded,) = nodes.VAEEncode().encode(vae, images)
res["encode_shape"] = list(encoded["samples"].shape)
res["encode_finite"] = bool(torch.isfinite(encoded["samples"]).all())
mm.load_models_gpu([model])
with torch.no_grad():  # the DiT takes the CLIP conditioning as its text context
    out = model.model.diffusion_model(latent, torch.tensor([500.0]), c.to(latent))
res["dit_out_shape"] = list(out.shape)
res["dit_finite"] = bool(torch.isfinite(out).all())
res["key_messages"] = [m[:300] for m in messages if any(w in m.lower() for w in ("missing:", "unexpected", "leftover",
                                                                                  "missing vae", "left over"))]
print(json.dumps(res))
"""


@pytest.mark.comfyui
def test_comfyui_own_loaders_accept_the_tiny_models(comfy_host, tmp_path):
    """UNETLoader (WAN21), CLIPLoader type sd3 + CLIPTextEncode ([1, 77, 4096]), VAELoader + VAEDecode/VAEEncode."""
    models = tmp_path / "models"
    try:
        _check_on_host(comfy_host, tmp_path, models)
    finally:  # 0.5 GB of weights: do not leave them in pytest's kept temporary folders
        shutil.rmtree(models, ignore_errors=True)


def _check_on_host(comfy_host, tmp_path, models):
    made = subprocess.run([sys.executable, "-m", "echo_forcing", "tiny-models", str(models)],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    assert _files(models) == sorted([*DIT_FILES, CLIP_FILE, VAE_FILE])
    assert (models / CLIP_FILE).stat().st_size > 2 * 123_650_304  # every weight stored, in fp16
    assert (models / VAE_FILE).stat().st_size > 2 * 126_892_531
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(made.stdout[made.stdout.index("echo_forcing_tiny:"):], encoding="utf-8")

    files = {"dit": DIT_FILE, "clip": CLIP_FILE, "vae": VAE_FILE}
    out = comfy_host.run(HOST_SCRIPT, str(config), json.dumps(files), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for path in (*DIT_FILES, CLIP_FILE, VAE_FILE):  # found through the base_path entry (the host may list more)
        folder, filename = path.split("/")
        assert filename in res["listed"][folder], (path, res["listed"])
    assert res["key_messages"] == []  # no missing / unexpected / leftover keys in any loader
    assert res["model_class"] == "WAN21"
    assert res["cond_shape"] == [1, 77, 4096] and res["cond_finite"] and res["cond_nonzero"]
    assert res["decode_shape"] == [9, 32, 48, 3] and res["decode_finite"] and res["decode_std"] > 0.01
    assert res["encode_shape"] == [1, 16, 3, 4, 6] and res["encode_finite"]
    assert res["dit_out_shape"] == [1, 16, 3, 4, 6] and res["dit_finite"]
