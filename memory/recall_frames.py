"""Scene Recall Frames: one frame that stands for a whole scene when it is recalled (SPEC §3.6-§3.7, §6 #10-11).

While a scene runs, its clean passes record the pre-RoPE keys/values of its first frames and accumulate
its mean query ``qbar`` per head (``EchoLayerMemory._collect``). At the scene's last block each layer builds
the recall frame from the candidate frames (official: scene frames 0, 4, 8 of the first 12; paper: M = 5
from the "stable stage"):

    e_{m,u} = mean_h <K_{m,u,h}, qbar_h>                 (raw dot product, per candidate m and position u)
    alpha_{m,u} = softmax_m(e_{m,u});  K_u = w * K_{0,u} + (1 - w) * sum_m alpha_{m,u} K_{m,u}   (V alike)

with w = 0.9 in the official code (a hidden default) and w = 0 in the paper (pure fusion). The
``token_select`` variant takes, per position, the candidate with the highest e. Computed in float32.
"""

from __future__ import annotations

import torch

from .config import RecallFusion


def recall_frame(candidates: list[tuple[torch.Tensor, torch.Tensor]], q_sum: torch.Tensor, q_count: float,
                 fusion: RecallFusion, base_weight: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fuse candidate frames ``[(k, v)]`` (each ``[P, H, d]``) into one recall frame, float32 ``[P, H, d]``.

    None when nothing was recorded (no candidate or no query statistics).
    """
    if not candidates or q_count <= 0:
        return None
    q_mean = (q_sum / max(q_count, 1.0)).to(torch.float32).to(candidates[0][0].device)
    k = torch.stack([c[0] for c in candidates]).to(torch.float32)  # [M, P, H, d]
    v = torch.stack([c[1] for c in candidates]).to(torch.float32)
    scores = (k * q_mean.unsqueeze(0).unsqueeze(0)).sum(dim=-1).mean(dim=-1)  # [M, P]
    base = max(0.0, min(1.0, base_weight))
    if fusion is RecallFusion.SCORE_WEIGHTED and k.shape[0] > 1:
        alpha = torch.softmax(scores, dim=0).unsqueeze(-1).unsqueeze(-1)
        fused_k, fused_v = (k * alpha).sum(dim=0), (v * alpha).sum(dim=0)
        return k[0] * base + fused_k * (1.0 - base), v[0] * base + fused_v * (1.0 - base)
    positions = torch.arange(k.shape[1], device=k.device)
    best = scores.argmax(dim=0) * k.shape[1] + positions
    return k.reshape(-1, *k.shape[2:]).index_select(0, best), v.reshape(-1, *v.shape[2:]).index_select(0, best)
