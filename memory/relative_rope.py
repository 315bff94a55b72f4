"""Relative-time RoPE positions of the Echo-Forcing window (paper appendix C.5).

Keys are stored pre-RoPE and re-rotated on every call from their *slot order*: slot s gets temporal
position s (anchors 0..11, compressed 12..14, recent 15..17, current block 18..20 once the cache is full),
whatever frame they came from. Queries sit where the current block's slots are: frame ``min(p, budget - F)``
with ``p`` the block's scene-local slot time.

During the first block of a scene a *RoPE jump* J separates the new scene from the carried memory: the
last ``jump_frames`` key positions and the query positions are shifted by +J (hard cut 45, smooth 0,
recall 0..6). From the second block on the positions are contiguous again.
"""

from __future__ import annotations

import torch


def jumped_positions(start: int, count: int, jump: int | None, jump_frames: int) -> torch.Tensor:
    """Positions ``start .. start+count-1``; with a jump, the last ``jump_frames`` of them are shifted by +jump."""
    positions = torch.arange(start, start + count)
    if jump is not None and jump_frames > 0:
        positions[max(0, count - jump_frames):] += jump
    return positions


def key_positions(window_frames: int, budget_frames: int, jump: int | None, jump_frames: int) -> torch.Tensor:
    """Temporal positions of the ``window_frames`` key slots (slot order, from 0)."""
    return jumped_positions(0, min(window_frames, budget_frames), jump, jump_frames)


def query_positions(slot_time: int, block_frames: int, budget_frames: int, jump: int | None,
                    jump_frames: int) -> torch.Tensor:
    """Temporal positions of the current block's query frames (the block's own slots)."""
    start = max(0, min(slot_time, budget_frames - block_frames))
    return jumped_positions(start, block_frames, jump, jump_frames)
