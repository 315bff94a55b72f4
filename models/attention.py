"""The attention kernel: PyTorch scaled-dot-product attention over ``[B, L, heads, head_dim]`` tensors.

No mask and the default ``1/sqrt(head_dim)`` scale, as in the official code's SDPA fallback; the inputs'
dtype is kept (the official fallback casts to bf16, which only matters for float32 parity runs).
PyTorch picks its fused kernel (flash / memory-efficient on GPU, flash on CPU) for these inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with q ``[B, Lq, H, D]``, k/v ``[B, Lk, H, D]`` -> ``[B, Lq, H, D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """:func:`attention` with ``bias`` ``[Lk]`` added to every query's scaled logits of each key (``log(b)`` weighs
    a key's share of the softmax by ``b``: Krea Realtime's attention bias on past frames)."""
    mask = bias.to(device=q.device, dtype=q.dtype)[None, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
