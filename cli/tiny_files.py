"""Tiny random model files in the layouts that ComfyUI's own loaders read (``python -m echo_forcing tiny-models``).

Each architecture is written out from its description (widths, layers, stages) rather than from a module:

* a tiny causal Wan2.1 T2V DiT (``TINY_DIT_CONFIG``: the plain Wan key layout of ``WanConfig.expected_shapes``
  with two layers of two 128-wide heads), plus a LongLive-style PEFT LoRA for it (``tiny_lora_state_dict``);
* the same DiT with Wan2.2 TI2V-5B's 48 latent channels (``TINY_WAN22_DIT_CONFIG``, LongLive 2.0's layout);
* the CLIP-L text tower (openai ViT-L/14's text model, as SD1.x/SD3 ``clip_l`` files store it): every weight at
  full shape, because a text-encoder loader builds the fixed architecture and keeps whatever the file omits
  uninitialised;
* the Wan2.1 VAE (``models.wan_vae``'s layout and random weights: dim 96, z_dim 16, stages x1 x2 x4 x4), every
  weight at full shape for the same reason;
* the Wan2.2 VAE (``wan22_vae_shapes``: 48 latent channels, 16x spatial stride) at full size, because ComfyUI
  builds every Wan2.2 VAE at the released widths whatever the file holds (see ``WAN22_VAE``).

Names and shapes match the released files; tests/test_tiny_models.py checks them against ComfyUI's instantiated
modules. The values are random but tame (fan-in-scaled normals, norm gains 1, zero biases for the CLIP and VAE
layouts) so that every forward stays finite. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch

from ..models.config import WanConfig
from ..models.wan_vae import random_wan_vae_state_dict

Shapes = dict[str, tuple[int, ...]]

TINY_DIT_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
"""Two 128-wide heads, two layers; text width 4096 and frequency width 256 are what ComfyUI's Wan detection fixes."""

TINY_WAN22_DIT_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, in_dim=48,
                                  out_dim=48)
"""``TINY_DIT_CONFIG`` with Wan2.2 TI2V-5B's 48 latent channels: ComfyUI's Wan detection reads the channels off
``patch_embedding`` / ``head.head`` and makes it a WAN22 model (latent format Wan22, VAE stride 16)."""

WAN22_VAE = {"dim": 160, "dec_dim": 256, "z_dim": 48}
"""The widths of every Wan2.2 VAE ComfyUI builds: ``comfy.sd.VAE`` recognises the file by
``decoder.middle.0.residual.0.gamma`` plus ``decoder.upsamples.0.upsamples.0.residual.2.weight`` and constructs
``comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48, ...)`` with the decoder's default width 256, reading no width off
the file (v0.3.64 and v0.28.0 alike). It then loads the file non-strictly, so a smaller file would leave weights
uninitialised and a narrower one fails on shape: the tiny file is full size (704.7M parameters, 1.41 GB in fp16)."""
WAN22_DIM_MULT = (1, 2, 4, 4)
WAN22_TEMPORAL_DOWN = (False, True, True)
"""Encoder stages that halve time (the decoder's stages double it in the reverse order: True, True, False)."""

LORA_TARGETS = (*(f"{attn}.{lin}" for attn in ("self_attn", "cross_attn") for lin in "qkvo"), "ffn.0", "ffn.2")
"""The block linears a LongLive LoRA adapts (PEFT ``target_modules``)."""

LORA_PREFIX = "base_model.model."
"""PEFT's prefix in ``get_peft_model_state_dict`` output, as in LongLive's ``lora.pt``."""

CLIP_L = {"width": 768, "layers": 12, "mlp": 3072, "vocab": 49408, "positions": 77}
"""openai/clip-vit-large-patch14 text tower; ComfyUI's CLIP-L config is fixed to exactly this."""

def parameter_count(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


def clip_l_shapes(width: int = CLIP_L["width"], layers: int = CLIP_L["layers"], mlp: int = CLIP_L["mlp"],
                  vocab: int = CLIP_L["vocab"], positions: int = CLIP_L["positions"]) -> Shapes:
    """Every tensor of a CLIP text tower in the Hugging Face ``CLIPTextModel`` naming, plus ``text_projection``."""
    shapes: Shapes = {
        "text_model.embeddings.token_embedding.weight": (vocab, width),
        "text_model.embeddings.position_embedding.weight": (positions, width),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (width,)
            shapes[f"{p}{norm}.bias"] = (width,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (width, width)
            shapes[f"{p}self_attn.{proj}.bias"] = (width,)
        shapes[p + "mlp.fc1.weight"] = (mlp, width)
        shapes[p + "mlp.fc1.bias"] = (mlp,)
        shapes[p + "mlp.fc2.weight"] = (width, mlp)
        shapes[p + "mlp.fc2.bias"] = (width,)
    shapes["text_model.final_layer_norm.weight"] = (width,)
    shapes["text_model.final_layer_norm.bias"] = (width,)
    shapes["text_projection.weight"] = (width, width)
    return shapes


def tiny_lora_shapes(cfg: WanConfig = TINY_DIT_CONFIG, rank: int = 4) -> Shapes:
    """A LongLive-style PEFT LoRA on every block linear: ``<prefix>blocks.i.<linear>.lora_A/lora_B.weight``."""
    shapes: Shapes = {}
    wan = cfg.expected_shapes()
    for i in range(cfg.num_layers):
        for target in LORA_TARGETS:
            out_features, in_features = wan[f"blocks.{i}.{target}.weight"]
            shapes[f"{LORA_PREFIX}blocks.{i}.{target}.lora_A.weight"] = (rank, in_features)
            shapes[f"{LORA_PREFIX}blocks.{i}.{target}.lora_B.weight"] = (out_features, rank)
    return shapes


def _conv(shapes: Shapes, name: str, c_out: int, c_in: int, *kernel: int) -> None:
    shapes[name + ".weight"] = (c_out, c_in, *kernel)
    shapes[name + ".bias"] = (c_out,)


def _wan22_residual(shapes: Shapes, p: str, c_in: int, c_out: int) -> None:
    """``ResidualBlock``: RMS norm (index 0), causal 3x3x3 conv (2), RMS norm (3), causal conv (6), and a 1x1x1
    shortcut where the width changes (1, 4 and 5 are SiLU, SiLU and dropout)."""
    shapes[p + "residual.0.gamma"] = (c_in, 1, 1, 1)
    _conv(shapes, p + "residual.2", c_out, c_in, 3, 3, 3)
    shapes[p + "residual.3.gamma"] = (c_out, 1, 1, 1)
    _conv(shapes, p + "residual.6", c_out, c_out, 3, 3, 3)
    if c_in != c_out:
        _conv(shapes, p + "shortcut", c_out, c_in, 1, 1, 1)


def _wan22_middle(shapes: Shapes, p: str, c: int) -> None:
    """Residual block, single-head attention over a frame's pixels (image RMS norm, 1x1 qkv, 1x1 out), residual."""
    _wan22_residual(shapes, p + "0.", c, c)
    shapes[p + "1.norm.gamma"] = (c, 1, 1)
    _conv(shapes, p + "1.to_qkv", 3 * c, c, 1, 1)
    _conv(shapes, p + "1.proj", c, c, 1, 1)
    _wan22_residual(shapes, p + "2.", c, c)


def wan22_vae_shapes(dim: int = WAN22_VAE["dim"], dec_dim: int = WAN22_VAE["dec_dim"],
                     z_dim: int = WAN22_VAE["z_dim"]) -> Shapes:
    """Every tensor of a Wan2.2 VAE file (``wan2.2_vae.safetensors``, the state dict of ``comfy.ldm.wan.vae2_2.
    WanVAE``): 196 tensors at any width, 704.7M parameters at the real widths (:data:`WAN22_VAE`).

    The frames go in and out as 2x2 pixel patches (12 channels). Encoder: causal conv 12 -> ``dim``; four stages of
    widths 1, 2, 4, 4 x ``dim``, each ``encoder.downsamples.i.downsamples.{0,1}`` residual blocks, then (stages
    0-2) ``.2`` a spatial /2 (``resample.1``: 3x3 conv, stride 2) with a temporal /2 (``time_conv``: 3x1x1) in
    stages 1 and 2; the stage's shortcut averages pixels and has no weights; middle; RMS norm and causal conv to
    ``2 z_dim`` (mean and log-variance), then ``conv1`` (1x1x1). Decoder: ``conv2`` (1x1x1 on ``z_dim``), causal
    conv to ``4 dec_dim``; middle; four stages of widths 4, 4, 2, 1 x ``dec_dim`` with three residual blocks each
    (``decoder.upsamples.i.upsamples.{0,1,2}``), then (stages 0-2) ``.3`` a spatial x2 (``resample.1``: 3x3 conv
    keeping the width) with a temporal x2 in stages 0 and 1 (``time_conv``: 3x1x1 to twice the width); RMS norm
    and causal conv to 12 channels.
    """
    shapes: Shapes = {}
    _conv(shapes, "encoder.conv1", dim, 12, 3, 3, 3)
    widths = [dim * m for m in (1, *WAN22_DIM_MULT)]
    for stage, (c_in, c_out) in enumerate(pairwise(widths)):
        p = f"encoder.downsamples.{stage}.downsamples."
        _wan22_residual(shapes, p + "0.", c_in, c_out)
        _wan22_residual(shapes, p + "1.", c_out, c_out)
        if stage < len(WAN22_DIM_MULT) - 1:
            _conv(shapes, p + "2.resample.1", c_out, c_out, 3, 3)
            if WAN22_TEMPORAL_DOWN[stage]:
                _conv(shapes, p + "2.time_conv", c_out, c_out, 3, 1, 1)
    _wan22_middle(shapes, "encoder.middle.", widths[-1])
    shapes["encoder.head.0.gamma"] = (widths[-1], 1, 1, 1)
    _conv(shapes, "encoder.head.2", 2 * z_dim, widths[-1], 3, 3, 3)
    _conv(shapes, "conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1)
    _conv(shapes, "conv2", z_dim, z_dim, 1, 1, 1)
    widths = [dec_dim * m for m in (WAN22_DIM_MULT[-1], *reversed(WAN22_DIM_MULT))]
    _conv(shapes, "decoder.conv1", widths[0], z_dim, 3, 3, 3)
    _wan22_middle(shapes, "decoder.middle.", widths[0])
    temporal_up = WAN22_TEMPORAL_DOWN[::-1]
    for stage, (c_in, c_out) in enumerate(pairwise(widths)):
        p = f"decoder.upsamples.{stage}.upsamples."
        for block in range(3):
            _wan22_residual(shapes, f"{p}{block}.", c_in if block == 0 else c_out, c_out)
        if stage < len(WAN22_DIM_MULT) - 1:
            _conv(shapes, p + "3.resample.1", c_out, c_out, 3, 3)
            if temporal_up[stage]:
                _conv(shapes, p + "3.time_conv", 2 * c_out, c_out, 3, 1, 1)
    shapes["decoder.head.0.gamma"] = (widths[-1], 1, 1, 1)
    _conv(shapes, "decoder.head.2", 12, widths[-1], 3, 3, 3)
    return shapes


def _fill(shapes: Shapes, seed: int, dtype: torch.dtype, init: Callable[[str, tuple[int, ...]], str]) -> dict:
    """Draw every tensor in sorted key order; ``init`` says "one", "zero", "normal:<std>", "gain:<std>"
    (1 + N(0, std^2)) or "fan_in"."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        kind = init(name, shape)
        if kind == "one":
            t = torch.ones(shape)
        elif kind == "zero":
            t = torch.zeros(shape)
        elif kind.startswith("gain:"):
            t = 1.0 + float(kind.split(":")[1]) * torch.randn(shape, generator=gen)
        else:
            std = float(kind.split(":")[1]) if kind.startswith("normal:") else math.prod(shape[1:]) ** -0.5
            t = torch.randn(shape, generator=gen) * std
        out[name] = t.to(dtype)
    return out


def _clip_init(name: str, shape: tuple[int, ...]) -> str:
    if "layer_norm" in name:
        return "one" if name.endswith(".weight") else "zero"
    if name.endswith(".bias"):
        return "zero"
    if "position_embedding" in name:
        return "normal:0.01"
    return "normal:0.02"  # token embeddings and linears, as CLIP's own initialisation


def random_clip_l_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random CLIP-L text tower (123.65M parameters, 247 MB in fp16)."""
    return _fill(clip_l_shapes(), seed, dtype, _clip_init)


def random_wan21_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random Wan2.1 VAE (126.9M parameters, 254 MB in fp16) whose encode and decode stay finite
    (``models.wan_vae``, which the pack's own encoder reads)."""
    return random_wan_vae_state_dict(seed, dtype=dtype)


def _wan_vae_init(name: str, shape: tuple[int, ...]) -> str:
    """As ``models.wan_vae.random_wan_vae_state_dict``: norm gains near one, small biases, convs ~ N(0, 1/fan_in)."""
    if name.endswith(".gamma"):
        return "gain:0.1"
    return "normal:0.02" if name.endswith(".bias") else "fan_in"


def random_wan22_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16, dim: int = WAN22_VAE["dim"],
                                dec_dim: int = WAN22_VAE["dec_dim"]) -> dict[str, torch.Tensor]:
    """A complete random Wan2.2 VAE (48 latent channels; 704.7M parameters, 1.41 GB in fp16 at the real widths,
    the only ones ComfyUI loads) whose encode and decode stay finite and of order one. Smaller ``dim`` /
    ``dec_dim`` keep every name, for fast tests. Deterministic per seed (and widths)."""
    return _fill(wan22_vae_shapes(dim, dec_dim, WAN22_VAE["z_dim"]), seed, dtype, _wan_vae_init)


def tiny_lora_state_dict(cfg: WanConfig = TINY_DIT_CONFIG, rank: int = 4, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random LoRA factors for ``cfg``: A ~ N(0, 1/in), B ~ N(0, 0.01^2), so the merged delta is small but non-zero
    (PEFT starts B at zero, which would make a merge test prove nothing)."""
    return _fill(tiny_lora_shapes(cfg, rank), seed, dtype,
                 lambda name, shape: "normal:0.01" if ".lora_B." in name else "fan_in")
