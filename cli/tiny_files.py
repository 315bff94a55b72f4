"""Tiny random model files in the layouts that ComfyUI's own loaders read (``python -m echo_forcing tiny-models``).

Three architectures, each written out from its description (widths, layers, stages) rather than from a module:

* a tiny causal Wan2.1 T2V DiT (``TINY_DIT_CONFIG``: the plain Wan key layout of ``WanConfig.expected_shapes``
  with two layers of two 128-wide heads), plus a LongLive-style PEFT LoRA for it (``tiny_lora_state_dict``);
* the CLIP-L text tower (openai ViT-L/14's text model, as SD1.x/SD3 ``clip_l`` files store it): every weight at
  full shape, because a text-encoder loader builds the fixed architecture and keeps whatever the file omits
  uninitialised;
* the Wan2.1 VAE (``models.wan_vae``'s layout and random weights: dim 96, z_dim 16, stages x1 x2 x4 x4), every
  weight at full shape for the same reason.

Names and shapes match the released files; tests/test_tiny_models.py checks them against ComfyUI's instantiated
modules. The values are random but tame (fan-in-scaled normals, norm gains 1, zero biases for the CLIP and VAE
layouts) so that every forward stays finite. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..models.config import WanConfig
from ..models.wan_vae import random_wan_vae_state_dict

Shapes = dict[str, tuple[int, ...]]

TINY_DIT_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096)
"""Two 128-wide heads, two layers; text width 4096 and frequency width 256 are what ComfyUI's Wan detection fixes."""

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


def random_clip_l_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random CLIP-L text tower (123.65M parameters, 247 MB in fp16)."""
    return _fill(clip_l_shapes(), seed, dtype, _clip_init)


def random_wan21_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A complete random Wan2.1 VAE (126.9M parameters, 254 MB in fp16) whose encode and decode stay finite
    (``models.wan_vae``, which the pack's own encoder reads)."""
    return random_wan_vae_state_dict(seed, dtype=dtype)


def tiny_lora_state_dict(cfg: WanConfig = TINY_DIT_CONFIG, rank: int = 4, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random LoRA factors for ``cfg``: A ~ N(0, 1/in), B ~ N(0, 0.01^2), so the merged delta is small but non-zero
    (PEFT starts B at zero, which would make a merge test prove nothing)."""
    return _fill(tiny_lora_shapes(cfg, rank), seed, dtype,
                 lambda name, shape: "normal:0.01" if ".lora_B." in name else "fan_in")
