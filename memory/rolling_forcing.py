"""Rolling Forcing's KV cache ("RoF": a sink block + the last clean blocks), behind the memory seam.

What it is: Rolling Forcing (TencentARC/RollingForcing @ a1477d0) denoises a *window* of up to five blocks in
one DiT call, each block at its own noise level (the oldest nearly clean, the newest pure noise); the rollout
side is ``pipeline/rolling_windows.py``. This module is its cache: 24 frame slots per layer, block 0 as a sink
that never leaves, then the latest clean blocks; every call writes the K/V of its *first* block only (the
window's oldest), so the cache holds the clean context passes of finished blocks.

Write rule (every call, denoising or context): the call's first block goes to its slots, block 0 to the sink
slots 0..2, block b >= 1 appended after the blocks before it (overwritten in place when it is already there).
When a new block does not fit, the oldest non-sink block leaves (the rest shift down). The denoising call's
write is noisy and is always overwritten by the same window's context pass before anything reads it.

What a call attends (the official rules, positions as RoPE temporal ids, keys kept pre-RoPE here):

* a window starting at frame 0 (the first five windows): only its own frames, at 0..F-1;
* a denoising call on the window ``S..E-1`` (blocks ``s..e``, ``n`` blocks): the sink, then the ``W`` clean
  blocks right before the window (``W = min(s - 1, (budget - sink - 3n) / 3)``: one in steady state), then the
  window's own fresh keys; the cached blocks and the window at their absolute frame positions, the sink
  immediately before the first cached block (``S - 3W - 3 ..``): relative, contiguous;
* a context pass on block ``s`` (frames ``S..S+2``, t = 0): the cached frames in ``[E - budget, E)`` at their
  absolute positions, so the sink (at 0..2) only while ``E <= budget`` (21 frames) and never after.

Queries sit at their absolute positions. Positions are absolute frame indices, so they grow with the video (the
official RoPE table stops near 1020 latent frames; the pack's has no limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots
from .state import MemoryState, SceneInfo


@dataclass(frozen=True)
class RollingForcingCacheConfig:
    """Rolling Forcing's cache: ``cache_frames`` slots (a ``block_frames`` sink + rolling clean blocks), calls
    attending at most ``attention_frames`` frames; the rollout denoises joint windows of blocks."""

    block_frames: int = 3
    """Frames per block, also the sink (block 0)."""
    cache_frames: int = 24
    attention_frames: int = 21
    """The attention budget of a call (the length the student was trained on)."""

    rolling_window = True
    """The rollout denoises a window of blocks per call (``pipeline.rolling_windows``), not one block."""

    def __post_init__(self):
        check_int("block_frames", self.block_frames, 1, None)
        check_int("attention_frames", self.attention_frames, 2 * self.block_frames, None,
                  f" (at least the sink and one block of {self.block_frames} frames)")
        check_int("cache_frames", self.cache_frames, self.attention_frames + self.block_frames, None,
                  f" (the sink plus the last attention_frames={self.attention_frames} frames a context pass reads)")

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length; blocks must be the cache's (the sink is one block)."""
        if frames_per_block != self.block_frames:
            raise CacheLengthError(f"the Rolling Forcing cache keeps {self.block_frames}-frame blocks (its sink is "
                                   f"block 0); the video has {frames_per_block}-frame blocks")

    def check_window(self, window_blocks: int) -> None:
        """A joint window of ``window_blocks`` blocks (one per denoising step) must fit the attention budget
        with the sink."""
        if self.block_frames * (window_blocks + 1) > self.attention_frames:
            raise CacheLengthError(
                f"Rolling Forcing denoises as many blocks at once as it has steps: {window_blocks} blocks and the "
                f"sink are {self.block_frames * (window_blocks + 1)} frames, over the {self.attention_frames}-frame "
                f"attention budget; use at most {self.attention_frames // self.block_frames - 1} steps")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> MemoryState:
        return MemoryState([RollingForcingLayerCache(self) for _ in range(num_layers)])


class RollingForcingLayerCache(FrameBuffer):
    """One layer's Rolling Forcing cache: pre-RoPE keys and values and the absolute frame of every slot."""

    def __init__(self, config: RollingForcingCacheConfig):
        super().__init__(config.cache_frames)
        self.config = config
        self.frame_pos = torch.full((config.cache_frames,), -1, dtype=torch.long)  # absolute frame of each slot

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f, block = call.frame_tokens, call.num_frames, self.config.block_frames
        if call.start_frame % block or f % block:
            raise CacheLengthError(f"a call on frames {call.start_frame}..{call.end_frame - 1} is not made of whole "
                                   f"{block}-frame blocks")
        if self.k is None:
            self.allocate(k, call.grid)
        slot = self._write(call.start_frame, k[:, :block * p], v[:, :block * p], p)
        start, end = call.start_frame, call.end_frame
        q_time = torch.arange(start, end)
        if start == 0:  # the first windows attend to themselves
            return AttentionWindow(k=k, v=v, k_time=torch.arange(f), q_time=q_time)
        if call.context_pass:
            first = self.local_end - int((self.frame_pos[:self.local_end] >= end - self.config.attention_frames).sum())
            return AttentionWindow(k=self.k[:, first * p:self.local_end * p], v=self.v[:, first * p:self.local_end * p],
                                   k_time=self.frame_pos[first:self.local_end].clone(), q_time=q_time)
        room = (self.config.attention_frames - block - f) // block
        cached = min(start // block - 1, room) * block  # clean frames right before the window
        keys = torch.cat((self.k[:, :block * p], self.k[:, (slot - cached) * p:slot * p], k), dim=1)
        values = torch.cat((self.v[:, :block * p], self.v[:, (slot - cached) * p:slot * p], v), dim=1)
        sink_time = torch.arange(block) + (start - cached - block)
        k_time = torch.cat((sink_time, self.frame_pos[slot - cached:slot], q_time))
        return AttentionWindow(k=keys, v=values, k_time=k_time, q_time=q_time)

    def _write(self, start: int, k: torch.Tensor, v: torch.Tensor, p: int) -> int:
        """Write one block's keys and values (block 0 into the sink); its first slot."""
        block = self.config.block_frames
        frames = torch.arange(start, start + block)
        held = (self.frame_pos[:self.local_end] == start).nonzero()
        if start == 0 or len(held):
            slot = 0 if start == 0 else int(held[0])
        else:
            if self.local_end and start != int(self.frame_pos[self.local_end - 1]) + 1:
                raise CacheLengthError(f"block at frame {start} does not follow the cached frames (last "
                                       f"{int(self.frame_pos[self.local_end - 1])})")
            if self.local_end + block > self.buffer_frames:  # the oldest clean block after the sink leaves
                self.local_end = evict_slots(self.k, self.v, [self.frame_pos], block, block, self.local_end, p)
            slot = self.local_end
        self.k[:, slot * p:(slot + block) * p] = k
        self.v[:, slot * p:(slot + block) * p] = v
        self.frame_pos[slot:slot + block] = frames
        self.local_end = max(self.local_end, slot + block)
        self.global_end = max(self.global_end, start + block)
        return slot
