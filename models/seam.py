"""The seam between the DiT (models/) and the cache policies (memory/).

For every layer and every forward call the block forward computes the pre-RoPE queries, keys and values
of the current block (after the qk RMS norm) and hands them, with a ``BlockCall`` describing the call, to
that layer's memory object. The memory object updates its regions and answers with an
``AttentionWindow``: the keys/values to attend over (still without RoPE), the temporal position of every
key frame and query frame, and optional per-token weights. RoPE and the attention kernel stay in models/
(a policy that must keep tokens at their own positions may store keys rotated with ``models.rope`` and say
so with ``keys_rotated``). models/ never imports memory/; policies implement ``LayerMemory``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class BlockCall:
    """One forward call of the DiT on a block of latent frames."""

    start_frame: int
    """Absolute latent-frame index of the block's first frame (counted from the start of the video)."""
    num_frames: int
    """Latent frames in the block (3 for the chunk-wise students)."""
    timestep: float
    """The block's timestep (all its frames share it): 1000, 937.5, ... or 0 for the context pass."""
    context_pass: bool
    """True for the clean pass at t = 0 that writes the finished block into the cache."""
    grid: tuple[int, int]
    """Tokens per latent frame as (rows, columns), e.g. (30, 52) at 480x832."""

    @property
    def frame_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames


@dataclass(frozen=True)
class AttentionWindow:
    """What one layer attends over in one call."""

    k: torch.Tensor
    """Pre-RoPE keys ``[B, S, heads, head_dim]``, S a whole number of frames."""
    v: torch.Tensor
    """Values ``[B, S, heads, head_dim]``."""
    k_time: torch.Tensor | None
    """Temporal RoPE position of every key frame, long ``[S / frame_tokens]`` (None when ``keys_rotated``)."""
    q_time: torch.Tensor
    """Temporal RoPE position of every query frame, long ``[num_frames]``."""
    weights: torch.Tensor | None = None
    """Per-key-token weight ``[S]`` multiplying the rotated keys and the values; None means all ones."""
    weighted_tokens: int | None = None
    """Only the first ``weighted_tokens`` keys may have a weight other than 1 (None: any of them), so the DiT
    scales that span and leaves the rest of the window as it is (multiplying by 1 is exact)."""
    logit_bias: torch.Tensor | None = None
    """Per-key-token bias ``[S]`` added to the scaled attention logits (Krea's ``log(bias)`` on past frames); None
    for none."""
    keys_rotated: bool = False
    """The keys already carry their RoPE (a policy that keeps rotated keys, e.g. token-level compression
    whose tokens keep their own positions); the DiT then rotates only the queries."""


class LayerMemory(Protocol):
    """A cache policy's per-layer state."""

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        """Take this call's pre-RoPE ``q, k, v`` ``[B, F*h*w, heads, head_dim]``; return the window to attend."""
        ...
