"""Tiny random model files in the layouts that ComfyUI's own loaders read (``python -m echo_forcing tiny-models``).

Three architectures, each written out from its description (widths, layers, stages) rather than from a module:

* a tiny causal Wan2.1 T2V DiT (``TINY_DIT_CONFIG``: the plain Wan key layout of ``WanConfig.expected_shapes``
  with two layers of two 128-wide heads), plus a LongLive-style PEFT LoRA for it (``tiny_lora_state_dict``);
* the CLIP-L text tower (openai ViT-L/14's text model, as SD1.x/SD3 ``clip_l`` files store it): every weight at
  full shape, because a text-encoder loader builds the fixed architecture and keeps whatever the file omits
  uninitialised;
* the Wan2.1 VAE (dim 96, z_dim 16, stages x1 x2 x4 x4, two residual blocks a stage, temporal down-sampling in
  the last two stages), every weight at full shape for the same reason.

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

Shapes = dict[str, tuple[int, ...]]

TINY_DIT_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
"""Two 128-wide heads, two layers; text width 4096 and frequency width 256 are what ComfyUI's Wan detection fixes."""

LORA_TARGETS = (*(f"{attn}.{lin}" for attn in ("self_attn", "cross_attn") for lin in "qkvo"), "ffn.0", "ffn.2")
"""The block linears a LongLive LoRA adapts (PEFT ``target_modules``)."""

LORA_PREFIX = "base_model.model."
"""PEFT's prefix in ``get_peft_model_state_dict`` output, as in LongLive's ``lora.pt``."""

CLIP_L = {"width": 768, "layers": 12, "mlp": 3072, "vocab": 49408, "positions": 77}
"""openai/clip-vit-large-patch14 text tower; ComfyUI's CLIP-L config is fixed to exactly this."""

WAN21_VAE = {"dim": 96, "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2,
             "temporal_downsample": (False, True, True)}
"""The Wan2.1 VAE hyper-parameters (fixed in ComfyUI, which detects the VAE by its keys)."""


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


def wan21_vae_shapes(dim: int = WAN21_VAE["dim"], z_dim: int = WAN21_VAE["z_dim"],
                     dim_mult: tuple[int, ...] = WAN21_VAE["dim_mult"],
                     num_res_blocks: int = WAN21_VAE["num_res_blocks"],
                     temporal_downsample: tuple[bool, ...] = WAN21_VAE["temporal_downsample"]) -> Shapes:
    """Every tensor of the Wan2.1 causal 3-D VAE.

    Building blocks: causal 3-D convs (``k x k x k``, or ``3 x 1 x 1`` in time), channel RMS norms (a gain of
    shape ``[C, 1, 1, 1]``, ``[C, 1, 1]`` inside attention), residual blocks ``norm, SiLU, conv, norm, SiLU,
    dropout, conv`` (indices 0/2/3/6) with a 1x1x1 shortcut when the width changes, a single-head 2-D attention
    in the middle, and resamplers whose spatial conv sits at index 1 (after the pad / upsample), with a temporal
    conv where the stage also resamples time. The decoder mirrors the encoder with one more residual block per
    stage; each upsampler halves the width.
    """
    shapes: Shapes = {}

    def conv(name: str, c_out: int, c_in: int, *kernel: int) -> None:
        shapes[name + ".weight"] = (c_out, c_in, *kernel)
        shapes[name + ".bias"] = (c_out,)

    def norm(name: str, c: int, spatial: bool = False) -> None:
        shapes[name + ".gamma"] = (c, 1, 1) if spatial else (c, 1, 1, 1)

    def residual(p: str, c_in: int, c_out: int) -> None:
        norm(p + "residual.0", c_in)
        conv(p + "residual.2", c_out, c_in, 3, 3, 3)
        norm(p + "residual.3", c_out)
        conv(p + "residual.6", c_out, c_out, 3, 3, 3)
        if c_in != c_out:
            conv(p + "shortcut", c_out, c_in, 1, 1, 1)

    def middle(p: str, c: int) -> None:
        residual(p + "middle.0.", c, c)
        norm(p + "middle.1.norm", c, spatial=True)
        conv(p + "middle.1.to_qkv", 3 * c, c, 1, 1)
        conv(p + "middle.1.proj", c, c, 1, 1)
        residual(p + "middle.2.", c, c)

    stages = len(dim_mult)
    widths = [dim * m for m in (1, *dim_mult)]
    conv("encoder.conv1", widths[0], 3, 3, 3, 3)
    index = 0
    for stage, (c_in, c_out) in enumerate(pairwise(widths)):
        for _ in range(num_res_blocks):
            residual(f"encoder.downsamples.{index}.", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage < stages - 1:
            conv(f"encoder.downsamples.{index}.resample.1", c_out, c_out, 3, 3)
            if temporal_downsample[stage]:
                conv(f"encoder.downsamples.{index}.time_conv", c_out, c_out, 3, 1, 1)
            index += 1
    middle("encoder.", widths[-1])
    norm("encoder.head.0", widths[-1])
    conv("encoder.head.2", 2 * z_dim, widths[-1], 3, 3, 3)

    conv("conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1)  # to (mean, log-variance)
    conv("conv2", z_dim, z_dim, 1, 1, 1)  # from the latent

    widths = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
    temporal_upsample = tuple(reversed(temporal_downsample))
    conv("decoder.conv1", widths[0], z_dim, 3, 3, 3)
    middle("decoder.", widths[0])
    index = 0
    for stage, (c_in, c_out) in enumerate(pairwise(widths)):
        if stage > 0:
            c_in //= 2  # the previous stage's upsampler halved the width
        for _ in range(num_res_blocks + 1):
            residual(f"decoder.upsamples.{index}.", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage < stages - 1:
            conv(f"decoder.upsamples.{index}.resample.1", c_out // 2, c_out, 3, 3)
            if temporal_upsample[stage]:
                conv(f"decoder.upsamples.{index}.time_conv", 2 * c_out, c_out, 3, 1, 1)
            index += 1
    norm("decoder.head.0", widths[-1])
    conv("decoder.head.2", 3, widths[-1], 3, 3, 3)
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


def _fill(shapes: Shapes, seed: int, dtype: torch.dtype, init: Callable[[str, tuple[int, ...]], str]) -> dict:
    """Draw every tensor in sorted key order; ``init`` says "one", "zero", "normal:<std>" or "fan_in"."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        kind = init(name, shape)
        if kind == "one":
            t = torch.ones(shape)
        elif kind == "zero":
            t = torch.zeros(shape)
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


def _vae_init(name: str, shape: tuple[int, ...]) -> str:
    if name.endswith(".gamma"):
        return "one"
    if name.endswith(".bias"):
        return "zero"
    return "fan_in"


def random_clip_l_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random CLIP-L text tower (123.65M parameters, 247 MB in fp16)."""
    return _fill(clip_l_shapes(), seed, dtype, _clip_init)


def random_wan21_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random Wan2.1 VAE (126.9M parameters, 254 MB in fp16) whose encode and decode stay finite."""
    return _fill(wan21_vae_shapes(), seed, dtype, _vae_init)


def tiny_lora_state_dict(cfg: WanConfig = TINY_DIT_CONFIG, rank: int = 4, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random LoRA factors for ``cfg``: A ~ N(0, 1/in), B ~ N(0, 0.01^2), so the merged delta is small but non-zero
    (PEFT starts B at zero, which would make a merge test prove nothing)."""
    return _fill(tiny_lora_shapes(cfg, rank), seed, dtype,
                 lambda name, shape: "normal:0.01" if ".lora_B." in name else "fan_in")
