"""The frame-slot buffer the baseline caches share (docs/BASELINES.md §9): whole frames of pre-RoPE keys and
values in slots, filled from the front, and Self-Forcing's roll.

Each baseline layer cache (``self_forcing``, ``longlive``, ``rolling_sink``, ``deep_forcing``,
``infinity_rope``, ``tethercache``) is a ``FrameBuffer`` subclass: the buffer and its fill pointers are
the subclass's own state, changed only by its ``update`` and scene methods; ``evict_slots`` is the roll they
call on their own tensors. A video the layout cannot hold is refused with ``CacheLengthError`` (by the
policy's ``check_length`` before any work, or by ``update`` if a call still does not fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.seam import AttentionWindow

SELF_FORCING_FRAMES = 21
"""Latent frames of Self-Forcing's cache (the length it was trained on: 21 x 1560 = 32760 tokens at 480x832)."""


class CacheLengthError(ValueError):
    """The requested video does not fit the cache configuration."""


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def evict_slots(k: torch.Tensor, v: torch.Tensor, per_slot: Sequence[torch.Tensor], first: int, count: int,
                filled: int, frame_tokens: int) -> int:
    """Drop ``count`` frame slots at ``first`` from a buffer filled up to ``filled`` slots: the later slots of
    ``k``/``v`` (``[B, slots*P, H, d]``) and of every per-slot array move left. Returns the new filled length.

    Self-Forcing's roll (``first`` = the sink size), shared by the rolling baselines.
    """
    kept = filled - first - count
    if kept > 0:
        src = slice((first + count) * frame_tokens, (first + count + kept) * frame_tokens)
        dst = slice(first * frame_tokens, (first + kept) * frame_tokens)
        k[:, dst] = k[:, src].clone()
        v[:, dst] = v[:, src].clone()
        for array in per_slot:
            array[first:first + kept] = array[first + count:first + count + kept].clone()
    return filled - count


class FrameBuffer:
    """What the baseline layer caches share: a buffer of ``buffer_frames`` whole frames of keys and values on
    the compute device (allocated at the first call, shaped like its keys), filled up to ``local_end`` frames,
    and the window over the filled part. Subclasses add their own per-slot state and write rules."""

    def __init__(self, buffer_frames: int):
        self.buffer_frames = buffer_frames
        self.k: torch.Tensor | None = None  # [B, buffer_frames * P, H, D]
        self.v: torch.Tensor | None = None
        self.frame_tokens = 0
        self.local_end = 0  # frames filled in the buffer
        self.global_end = 0  # absolute end frame of the last write

    def allocate(self, like: torch.Tensor, grid: tuple[int, int]) -> None:
        """Allocate the buffer for keys shaped like ``like`` ``[B, *, H, D]`` with ``grid`` tokens per frame."""
        b, _, h, d = like.shape
        self.frame_tokens = grid[0] * grid[1]
        self.k = torch.zeros((b, self.buffer_frames * self.frame_tokens, h, d), dtype=like.dtype, device=like.device)
        self.v = torch.zeros_like(self.k)

    def window(self, q_time: torch.Tensor, k_time: torch.Tensor | None, **options) -> AttentionWindow:
        """The filled frames ``[0, local_end)`` as the window to attend."""
        tokens = self.local_end * self.frame_tokens
        return AttentionWindow(k=self.k[:, :tokens], v=self.v[:, :tokens], k_time=k_time, q_time=q_time, **options)

    @property
    def device_bytes(self) -> int:
        return tensor_bytes(self.k, self.v)

    @property
    def storage_bytes(self) -> int:
        return 0
