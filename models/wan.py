"""A plain-torch Wan2.1 text-to-video DiT with the original Wan parameter names.

This module only *holds* the weights under the names the block forward (``models.block_forward``) looks
up; it has no cache logic of its own. ComfyUI's loaded Wan model has the same module tree, so the block
forward runs unchanged on either.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import WanConfig


class WanRMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32 and cast back, then scaled (Wan's qk-norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm that returns the input dtype (non-affine unless asked, as in Wan)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).type_as(x)


class WanAttention(nn.Module):
    """Projections of one attention layer: ``q, k, v, o`` and the qk RMS norms."""

    def __init__(self, dim: int, qk_norm: bool, eps: float):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()


class WanBlock(nn.Module):
    """One transformer block: self-attention, text cross-attention, GELU(tanh) FFN, adaLN modulation."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = WanLayerNorm(d, cfg.eps)
        self.self_attn = WanAttention(d, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(d, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(d, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(d, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))


class WanHead(nn.Module):
    """Output head: non-affine LayerNorm, (shift, scale) modulation, Linear to patch pixels."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * cfg.patch_volume)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))


class WanDiT(nn.Module):
    """Wan2.1 T2V DiT module tree; ``state_dict()`` keys are exactly the original Wan names."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> WanDiT:
        """Build the module for ``state_dict`` (plain Wan names, already validated) and load it strictly.

        Construction happens on the meta device, so no memory is spent on weights that are overwritten.
        """
        cfg = WanConfig.from_state_dict(state_dict)
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)


def random_wan_state_dict(cfg: WanConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Random weights for ``cfg`` with every tensor non-trivial (unlike Wan's init, which zeroes the head).

    Used for tests, the built-in demo model and benchmarks: linear/conv weights ~ N(0, 1/fan_in), biases
    ~ N(0, 0.02^2), norm weights ~ 1 + N(0, 0.1^2), modulations ~ N(0, 1/dim); drawn in sorted key order
    (on ``device``, with that device's generator: full 1.3B shapes are drawn on the GPU in benchmarks).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in sorted(cfg.expected_shapes().items()):
        if name.endswith("modulation"):
            t = torch.randn(shape, generator=gen, device=device) / cfg.dim ** 0.5
        elif name.endswith("bias"):
            t = torch.randn(shape, generator=gen, device=device) * 0.02
        elif len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=device)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen, device=device) / fan_in ** 0.5
        out[name] = t.to(dtype)
    return out
