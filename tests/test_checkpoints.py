"""Checkpoint formats of causal Wan2.1 students and the errors for bad files.

Every file is written here with the key names and layouts of the real releases, around tiny random weights.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from echo_forcing.models import WAN21_T2V_1_3B, WAN21_T2V_14B, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.models.checkpoints import (
    CheckpointError,
    convert_to_wan,
    load_wan_checkpoint,
    load_wan_model,
    merge_lora,
    read_tensors,
    validate_wan_state_dict,
)

LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
"""The 10 nn.Linear of a block that LongLive's LoRA targets."""


def _prefixed(sd, prefix="model."):
    return {prefix + k: v for k, v in sd.items()}


def _fsdp_names(sd):
    """Names as an FSDP full state dict of the SF wrapper writes them (wrapper and each block wrapped)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k = f"blocks.{i}._fsdp_wrapped_module.{rest}"
        out["_fsdp_wrapped_module.model." + k] = v
    return out


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), k


def _cast(sd, dtype):
    return {k: v.to(dtype) for k, v in sd.items()}


# --- research .pt checkpoints ------------------------------------------------------------------------------

def test_self_forcing_generator_ema_with_model_prefix(tmp_path, tiny_config, tiny_state_dict):
    critic = random_wan_state_dict(tiny_config, seed=99)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": _prefixed(tiny_state_dict),
                "critic": {**_prefixed(critic), "optimizer": {"state": {}, "lr": 1e-5}}, "step": 600}, path)
    ckpt = load_wan_checkpoint(path, dtype=torch.float32)
    _assert_same(ckpt.state_dict, tiny_state_dict)
    assert ckpt.config == tiny_config
    assert ckpt.source == "Self-Forcing/CausVid/LongLive research checkpoint (generator_ema)"
    assert any("critic" in n and "step" in n and "ignored" in n for n in ckpt.notes)


def test_fsdp_wrapped_names_generator_only(tmp_path, tiny_config, tiny_state_dict):
    raw = {"generator": _fsdp_names(tiny_state_dict)}
    assert "_fsdp_wrapped_module.model.blocks.1._fsdp_wrapped_module.ffn.0.weight" in raw["generator"]
    path = tmp_path / "checkpoint_model_000600.pt"
    torch.save(raw, path)
    ckpt = load_wan_checkpoint(path, dtype=torch.float32)
    _assert_same(ckpt.state_dict, tiny_state_dict)
    assert ckpt.source.endswith("(generator)")


def test_weights_selection_and_error(tmp_path, tiny_config, tiny_state_dict):
    other = random_wan_state_dict(tiny_config, seed=3)
    both = tmp_path / "both.pt"
    torch.save({"generator": _prefixed(other), "generator_ema": _prefixed(tiny_state_dict)}, both)
    _assert_same(load_wan_checkpoint(both, dtype=torch.float32).state_dict, tiny_state_dict)
    _assert_same(load_wan_checkpoint(both, weights="ema", dtype=torch.float32).state_dict, tiny_state_dict)
    _assert_same(load_wan_checkpoint(both, weights="generator", dtype=torch.float32).state_dict, other)

    ema_only = tmp_path / "ema_only.pt"
    torch.save({"generator_ema": _prefixed(tiny_state_dict), "step": 5}, ema_only)
    with pytest.raises(CheckpointError, match="'generator' entry") as err:
        load_wan_checkpoint(ema_only, weights="generator")
    assert "generator_ema, step" in str(err.value)
    with pytest.raises(CheckpointError, match="'generator_ema' entry"):
        convert_to_wan(tiny_state_dict, weights="ema")
    with pytest.raises(CheckpointError, match="'auto', 'ema' or 'generator'"):
        load_wan_checkpoint(both, weights="critic")


def test_causvid_generator_legacy_pickle(tmp_path, tiny_config, tiny_state_dict):
    path = tmp_path / "model.pt"
    torch.save({"generator": _prefixed(tiny_state_dict)}, path, _use_new_zipfile_serialization=False)
    ckpt = load_wan_checkpoint(path, dtype=torch.float32)
    _assert_same(ckpt.state_dict, tiny_state_dict)
    assert ckpt.config == tiny_config


@pytest.mark.parametrize(("wrapper", "source"), [
    ("model", "Self-Forcing/CausVid/LongLive research checkpoint (model)"),  # accepted by LongLive's loader
    ("state_dict", "research checkpoint (bare state dict)"),
    ("module", "research checkpoint (bare state dict)"),
])
def test_other_wrappers(tiny_state_dict, wrapper, source):
    conv = convert_to_wan({wrapper: _prefixed(tiny_state_dict), "epoch": 3})
    _assert_same(conv.state_dict, tiny_state_dict)
    assert conv.source == source


# --- LongLive base + LoRA ----------------------------------------------------------------------------------

def _lora(cfg, rank=4, seed=11):
    """``{module: (A [r, in], B [out, r])}`` for the 10 block linears of every layer."""
    gen = torch.Generator().manual_seed(seed)
    shapes = cfg.expected_shapes()
    out = {}
    for i in range(cfg.num_layers):
        for lin in LINEARS:
            out_f, in_f = shapes[f"blocks.{i}.{lin}.weight"]
            out[f"blocks.{i}.{lin}"] = (torch.randn(rank, in_f, generator=gen), torch.randn(out_f, rank, generator=gen))
    return out


def _lora_file(mats, style):
    sd = {}
    for module, (a, b) in mats.items():
        if style == "down_up":
            sd[f"diffusion_model.{module}.lora_down.weight"] = a
            sd[f"diffusion_model.{module}.lora_up.weight"] = b
            sd[f"diffusion_model.{module}.alpha"] = torch.tensor(8.0)
        else:
            adapter = ".default" if style == "adapter" else ""
            sd[f"base_model.model.{module}.lora_A{adapter}.weight"] = a
            sd[f"base_model.model.{module}.lora_B{adapter}.weight"] = b
    if style == "generator_lora":
        return {"generator_lora": sd, "critic_lora": {"x.lora_A.weight": torch.zeros(1)}, "step": 3000}
    return sd


@pytest.mark.parametrize("style", ["generator_lora", "raw", "adapter", "down_up"])
def test_longlive_base_plus_lora(tmp_path, tiny_config, tiny_state_dict, style):
    ema = random_wan_state_dict(tiny_config, seed=5)
    base = tmp_path / "longlive_base.pt"
    torch.save({"generator": _prefixed(tiny_state_dict), "generator_ema": _prefixed(ema)}, base)
    mats = _lora(tiny_config)
    lora = tmp_path / "lora.pt"
    torch.save(_lora_file(mats, style), lora)

    ckpt = load_wan_checkpoint(base, lora=lora, lora_alpha=None if style == "down_up" else 8,
                               dtype=torch.float32)
    assert len(mats) == 10 * tiny_config.num_layers
    for module, (a, b) in mats.items():
        key = module + ".weight"
        expected = tiny_state_dict[key] + 2.0 * (b @ a)  # alpha 8 / rank 4
        assert torch.equal(ckpt.state_dict[key], expected), key
        assert not torch.equal(ckpt.state_dict[key], tiny_state_dict[key]), key
    targets = {m + ".weight" for m in mats}
    for key, value in tiny_state_dict.items():  # biases, norms, embeddings, head: the generator's, untouched
        if key not in targets:
            assert torch.equal(ckpt.state_dict[key], value), key
    assert any("rather than 'generator_ema'" in n for n in ckpt.notes)


def test_lora_default_alpha_is_rank(tiny_config, tiny_state_dict):
    mats = _lora(tiny_config, rank=2)
    merged = merge_lora(tiny_state_dict, _lora_file(mats, "raw"))
    a, b = mats["blocks.1.ffn.2"]
    assert torch.equal(merged["blocks.1.ffn.2.weight"], tiny_state_dict["blocks.1.ffn.2.weight"] + 1.0 * (b @ a))
    assert merged is not tiny_state_dict
    assert not torch.equal(merged["blocks.1.ffn.2.weight"], tiny_state_dict["blocks.1.ffn.2.weight"])


def test_lora_errors(tiny_config, tiny_state_dict):
    a, b = torch.randn(4, 300), torch.randn(256, 4)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q does not match") as err:
        merge_lora(tiny_state_dict, {"blocks.0.self_attn.q.lora_A.weight": a, "blocks.0.self_attn.q.lora_B.weight": b})
    assert "A [4, 300], B [256, 4], weight [256, 256]" in str(err.value)
    with pytest.raises(CheckpointError, match="rank mismatch"):
        merge_lora(tiny_state_dict, {"blocks.0.ffn.0.lora_A.weight": torch.randn(4, 256),
                                     "blocks.0.ffn.0.lora_B.weight": torch.randn(512, 3)})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.0 has no B"):
        merge_lora(tiny_state_dict, {"base_model.model.blocks.1.ffn.0.lora_A.weight": torch.randn(4, 256)})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.0 has no A"):
        merge_lora(tiny_state_dict, {"base_model.model.blocks.1.ffn.0.lora_B.weight": torch.randn(512, 4)})
    with pytest.raises(CheckpointError, match=r"targets blocks\.7\.ffn\.0"):
        merge_lora(tiny_state_dict, {"blocks.7.ffn.0.lora_A.weight": torch.randn(4, 256),
                                     "blocks.7.ffn.0.lora_B.weight": torch.randn(512, 4)})


# --- safetensors -------------------------------------------------------------------------------------------

def test_comfyui_repackaged_safetensors(tmp_path, tiny_config, tiny_state_dict):
    path = tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors"
    save_file(_prefixed(_cast(tiny_state_dict, torch.bfloat16), "model.diffusion_model."), path)
    ckpt = load_wan_checkpoint(path)
    _assert_same(ckpt.state_dict, _cast(tiny_state_dict, torch.bfloat16))
    assert ckpt.source == "ComfyUI repackaged safetensors"
    assert ckpt.config == tiny_config


def test_plain_wan_safetensors(tmp_path, tiny_config, tiny_state_dict):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(tiny_state_dict, path)
    ckpt = load_wan_checkpoint(path, dtype=torch.float16)
    _assert_same(ckpt.state_dict, _cast(tiny_state_dict, torch.float16))
    assert ckpt.source == "plain Wan state dict"


def _scaled_fp8_file(sd, cfg):
    """ComfyUI scaled fp8 layout: fp8 block linears, float32 scalar ``scale_weight`` = absmax / 448."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, v in sd.items():
        out["model.diffusion_model." + k] = v
    for i in range(cfg.num_layers):
        for lin in LINEARS:
            w = sd[f"blocks.{i}.{lin}.weight"]
            scale = (w.abs().max() / 448.0).float()
            out[f"model.diffusion_model.blocks.{i}.{lin}.weight"] = (w / scale).to(torch.float8_e4m3fn)
            out[f"model.diffusion_model.blocks.{i}.{lin}.scale_weight"] = scale
    out["model.diffusion_model.blocks.0.ffn.0.scale_input"] = torch.tensor(1.0)
    out["model.diffusion_model.head.head.weight"] = sd["head.head.weight"].to(torch.float8_e4m3fn)  # no scale
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_fp8_safetensors(tmp_path, tiny_config, tiny_state_dict, dtype):
    raw = _scaled_fp8_file(tiny_state_dict, tiny_config)
    path = tmp_path / "wan2.1_t2v_1.3B_fp8_scaled.safetensors"
    save_file(raw, path)
    ckpt = load_wan_checkpoint(path, dtype=dtype)
    assert sorted(ckpt.state_dict) == sorted(tiny_state_dict)
    assert {v.dtype for v in ckpt.state_dict.values()} == {dtype}
    assert ckpt.source == "scaled fp8 safetensors"
    assert any("dequantised 20 scaled fp8" in n for n in ckpt.notes)
    for i in range(tiny_config.num_layers):
        for lin in LINEARS:
            key = f"blocks.{i}.{lin}.weight"
            q = raw["model.diffusion_model." + key]
            scale = raw[f"model.diffusion_model.blocks.{i}.{lin}.scale_weight"]
            exact = q.float() * scale
            assert torch.equal(ckpt.state_dict[key], exact.to(dtype)), key
            w = tiny_state_dict[key]
            bound = w.abs() / 16 + scale * 2.0 ** -9  # e4m3: 3 mantissa bits; subnormal step 2^-9
            assert (exact - w).abs().le(bound).all(), key
    head = ckpt.state_dict["head.head.weight"]
    assert torch.equal(head, raw["model.diffusion_model.head.head.weight"].float().to(dtype))
    assert torch.equal(ckpt.state_dict["blocks.0.norm3.weight"], tiny_state_dict["blocks.0.norm3.weight"].to(dtype))


def test_load_wan_model_matches_source(tmp_path, tiny_config, tiny_state_dict):
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": _prefixed(tiny_state_dict)}, path)
    model = load_wan_model(path, dtype=torch.float32)
    assert isinstance(model, WanDiT) and model.config == tiny_config
    _assert_same(model.state_dict(), tiny_state_dict)
    bf16 = load_wan_model(path)
    _assert_same(bf16.state_dict(), _cast(tiny_state_dict, torch.bfloat16))


# --- bad inputs --------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code that writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_unsafe_pickle_is_refused_without_running_it(tmp_path, tiny_state_dict):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload really writes its marker when unpickled
    assert control.exists()
    marker = tmp_path / "marker"
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": _prefixed(tiny_state_dict), "config": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_wan_checkpoint(path)
    msg = str(err.value)
    assert "refused for safety" in msg and "pickled code" in msg
    assert "it asked for exec" in msg and "safetensors" in msg and "self_forcing_dmd.pt" in msg
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_pt(tmp_path, tiny_state_dict, zip_format):
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": _prefixed(tiny_state_dict)}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"self_forcing_dmd\.pt is truncated or corrupt") as err:
        read_tensors(path)
    assert "re-download" in str(err.value)


def test_truncated_safetensors(tmp_path, tiny_state_dict):
    path = tmp_path / "wan.safetensors"
    save_file(tiny_state_dict, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"wan\.safetensors is truncated or corrupt.*re-download"):
        load_wan_checkpoint(path)


@pytest.mark.parametrize(("keys", "arch"), [
    (["input_blocks.0.0.weight", "input_blocks.1.0.in_layers.2.weight", "out.2.weight"], "Stable Diffusion"),
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"], "Flux"),
])
def test_other_architecture_safetensors(tmp_path, keys, arch):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(4, 4) for k in keys}, path)
    with pytest.raises(CheckpointError) as err:
        load_wan_checkpoint(path)
    msg = str(err.value)
    assert "not a Wan2.1 text-to-video DiT" in msg and arch in msg
    assert "patch_embedding.weight" in msg and "blocks.0.self_attn.q.weight" in msg  # missing Wan keys
    assert keys[0] in msg  # what was found


def test_wrong_architecture_within_wan(tmp_path, tiny_state_dict):
    sd = dict(tiny_state_dict)
    sd["blocks.1.ffn.0.weight"] = torch.zeros(600, 256)
    sd["blocks.1.ffn.0.bias"] = torch.zeros(600)
    sd["blocks.1.ffn.2.weight"] = torch.zeros(256, 600)
    del sd["blocks.0.norm3.bias"]
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_wan_checkpoint(path)
    msg = str(err.value)
    assert "1 missing keys: blocks.0.norm3.bias" in msg
    assert "1 unexpected keys: blocks.0.extra.weight" in msg
    assert "3 shape mismatches" in msg
    assert "blocks.1.ffn.0.weight: file [600, 256] vs expected [512, 256]" in msg
    assert "blocks.1.ffn.2.weight: file [256, 600] vs expected [256, 512]" in msg
    assert "nothing was loaded" in msg


def test_many_missing_keys_are_counted(tiny_state_dict):
    sd = {k: v for k, v in tiny_state_dict.items() if not k.startswith("blocks.1.") or k == "blocks.1.modulation"}
    with pytest.raises(CheckpointError) as err:
        validate_wan_state_dict(sd)
    msg = str(err.value)
    assert "26 missing keys: blocks.1.self_attn.q.weight; blocks.1.self_attn.q.bias;" in msg
    assert msg.count("blocks.1.") == 10 and "... (+16 more)" in msg
    assert "unexpected" not in msg and "mismatch" not in msg


def test_image_to_video_checkpoint(tmp_path, tiny_state_dict):
    path = tmp_path / "wan2.1_i2v.safetensors"
    save_file({**tiny_state_dict, "img_emb.proj.0.weight": torch.zeros(1280)}, path)
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_wan_checkpoint(path)
    lora = tmp_path / "lora.pt"
    torch.save(_lora_file(_lora(WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1, text_dim=64)), "raw"), lora)
    with pytest.raises(CheckpointError, match="image-to-video"):  # the base is judged before the LoRA
        load_wan_checkpoint(path, lora=lora)


def test_unknown_extension_and_missing_file(tmp_path):
    gguf = tmp_path / "wan.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint extension '\.gguf'.*\.safetensors, \.pt"):
        read_tensors(gguf)
    with pytest.raises(CheckpointError, match=r"not found.*absent\.pt"):
        load_wan_checkpoint(tmp_path / "absent.pt")


# --- full-size shapes on the meta device -------------------------------------------------------------------

def test_full_size_1_3b_on_meta():
    with torch.device("meta"):
        model = WanDiT(WAN21_T2V_1_3B)
    sd = model.state_dict()
    assert len(sd) == 825
    assert {k: tuple(v.shape) for k, v in sd.items()} == WAN21_T2V_1_3B.expected_shapes()
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800
    assert WanConfig.from_state_dict(sd) == WAN21_T2V_1_3B
    assert validate_wan_state_dict(sd) == WAN21_T2V_1_3B


def test_full_size_14b_round_trip():
    cfg = WanConfig.from_state_dict(WAN21_T2V_14B.expected_shapes())
    assert cfg == WAN21_T2V_14B
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim) == (5120, 40, 40, 13824)
    with torch.device("meta"):
        model = WanDiT(WAN21_T2V_14B)
    assert validate_wan_state_dict(model.state_dict()) == WAN21_T2V_14B
