"""Difference-aware memory decay: how fast carried old memory fades after a switch (SPEC §3.9, §6 #12-15).

After the first block of a new scene, each spatial position u gets a rate from how different the new
scene's first clean frame is from the carried old frame at that position:

    d_u = 1 - cos(k_old[u], k_new[u])          (cosine over all heads, pre-RoPE keys)
    delta_u = (d_u - min d) / (max d - min d)   (0 everywhere when the range is <= 1e-6)
    rate_u = max_rate - (max_rate - min_rate) * delta_u

so a more different position forgets faster. After every block the old tokens' weights are multiplied by
their rate (keys and values are scaled by the weight in attention), and after ``clear_after_blocks`` blocks
the old slots are deleted. Block r of the scene therefore sees w = w0 * rate^r, which is the paper's
``w = exp(-r mu)`` with ``mu = -ln(rate)`` (``DecayConfig.from_mu`` / ``mu_range`` convert): smooth rates
0.80..0.95 are mu 0.051..0.223, recall 0.55..0.90 are mu 0.105..0.598. Not in the paper: the deletion, and
a hard cut's fixed first-block weight 0.8 with deletion after one block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import DecayConfig, DecayStrategy, DecayTarget
from .devices import to_device
from .hierarchical_memory import EchoLayerMemory


def difference_rates(new_frame: torch.Tensor, old_frame: torch.Tensor, min_rate: float,
                     max_rate: float) -> torch.Tensor:
    """Per-position rates ``[P]`` float32 from pre-RoPE keys ``[1, P, H, d]`` of the new and the old frame."""
    new = F.normalize(new_frame.to(torch.float32).flatten(2), dim=-1, eps=1e-6)
    old = F.normalize(old_frame.to(torch.float32).flatten(2), dim=-1, eps=1e-6)
    diff = (1.0 - (new * old).sum(dim=-1)).mean(dim=0)
    low, high = diff.min(), diff.max()
    if float((high - low).item()) > 1e-6:
        normalized = (diff - low) / (high - low)
    else:
        normalized = torch.zeros_like(diff)
    return (max_rate - (max_rate - min_rate) * normalized).clamp(min=min_rate, max=max_rate)


def start_decay(layer: EchoLayerMemory, decay: DecayConfig, start: int, tokens: int, evict_tokens: int,
                first_weight: float | None = None) -> None:
    """Mark ``tokens`` old tokens at ``start`` for decay and schedule the deletion of ``evict_tokens``."""
    if tokens <= 0:
        return
    span = slice(start, start + tokens)
    if first_weight is not None:
        layer.weights[span] = first_weight
    layer.decay_mask[span] = True
    layer.decay_start, layer.decay_count, layer.decay_active = start, tokens, True
    if decay.strategy is DecayStrategy.FIXED:
        layer.decay_rates[span] = decay.fixed_rate
    layer.evict_steps, layer.evict_start, layer.evict_count = decay.clear_after_blocks, 0, evict_tokens
    if first_weight is not None and first_weight != 1.0:
        layer.weights_trivial = False


def estimate_rates(layer: EchoLayerMemory, decay: DecayConfig, select_k: torch.Tensor | None) -> None:
    """After the context pass of a scene's first block: per-position rates for a diff-strategy decay."""
    if decay.strategy is not DecayStrategy.DIFF or not layer.decay_active or layer.decay_count <= 0:
        return
    p = layer.frame_tokens
    reference_tokens = layer.decay_count
    if decay.target is DecayTarget.OLD_RECENT:
        if select_k is None:
            return
        reference_tokens = select_k.shape[0]
    ref = min(p, reference_tokens, layer.config.frames_per_block * p)
    new_first = layer.block_frame(0)[0][:ref].unsqueeze(0)
    old = select_k[:ref].unsqueeze(0) if decay.target is DecayTarget.OLD_RECENT else layer.k[:, :ref]
    rates = difference_rates(new_first, to_device(old, new_first.device), decay.min_rate, decay.max_rate)
    repeats = -(-layer.decay_count // ref)
    span = slice(layer.decay_start, layer.decay_start + layer.decay_count)
    layer.decay_rates[span] = rates.repeat(repeats)[:layer.decay_count]


def apply_decay(layer: EchoLayerMemory) -> None:
    """End of a block: w <- w * rate on the decaying tokens."""
    if not layer.decay_active:
        return
    mask = layer.decay_mask
    if not bool(mask.any()):
        layer.decay_active = False
        return
    layer.weights[mask] *= layer.decay_rates[mask]
    layer.weights_trivial = False  # (a rate of exactly 1 leaves the weights at 1, and multiplying by 1 is exact)


def evict_step(layer: EchoLayerMemory) -> int:
    """End of a block: count down and delete the old slots when due; returns the frames deleted."""
    if layer.evict_steps <= 0:
        return 0
    layer.evict_steps -= 1
    if layer.evict_steps > 0:
        return 0
    p = layer.frame_tokens
    dropped = layer.drop_slots(layer.evict_start // p, -(-layer.evict_count // p))
    layer.timing_offset = max(0, layer.timing_offset - dropped)
    layer.decay_start = layer.decay_count = 0
    layer.decay_active = False
    layer.decay_mask.zero_()
    layer.decay_rates.fill_(1.0)
    layer.evict_start = layer.evict_count = 0
    layer.weights_trivial = True  # only the old tokens ever had weights other than 1, and they are gone
    return dropped
