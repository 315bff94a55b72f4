"""Rolling Sink's KV cache ("Rolling-Sink S15+R6"), behind the memory seam.

What it is: Rolling Sink (paper "Rolling Sink"; code Rolling-Sink/Rolling-Sink @ d7fc0d9f) keeps the
Self-Forcing student's 21-frame attention budget for videos of any length without training: the oldest part
of the window is a sink fed from a pool of the video's first clean frames, replayed back and forth
("Sliding Semantics"), while every frame keeps a contiguous position ("Sliding Indices"). Reference:
docs/BASELINES.md §3.

Layout (per layer, budget L = 21, blocks of 3 frames): slots 0..L-7 (15) = sink, slots L-6..L-4 = the
previous block (clean), slots L-3..L-1 = the current block. The buffer rolls like Self-Forcing's with no sink
(the oldest 3 frames leave on the first call of a block that does not fit). The pool is the clean PRE-RoPE
K/V of frames 0..L-4 (18), taken from the context passes. At the context pass of every block with start
s >= L, the pool group for R = s - 3 replaces the previous block's slots (L-6..L-4): with u = R mod 18, pool
frames [15 - u, 18 - u) in descending order when floor(R / 18) is odd, else [u, u + 3) ascending (tokens inside
a frame keep their order). The next roll moves that group into the sink region, so after 5 more blocks the
sink holds pool groups only: a 15-frame window sliding 3 frames per block over 17, 16, ..., 0, 0, 1, ..., 17,
17, ... (period 36 frames = 12 blocks). Before that, original frames and the first groups mix (§3.1).

Positions: every slot keeps the absolute position of the frame it held first (an inserted group takes the
positions of the slots it overwrites), so the window is always contiguous: s-18 .. s+2 in steady state
(absolute = slot + s - 18; §3.2). Keys are stored pre-RoPE with those positions and rotated by the DiT, which
reproduces the original's post-RoPE storage.

Prompt switches: Rolling Sink has none (single prompt, §3.3); here a switch only changes the text
(docs/BASELINES.md §7.2), the cache is left alone.

Where this differs from the Rolling Sink code (deliberately):
* The original inserts the group at the context pass AFTER that call's attention; the seam asks the memory
  before attention, so the insertion is deferred to the next block's first call, before its roll. Every
  attention call sees exactly what it sees in the original.
* The pool lives off the compute device (pinned CPU memory under a GPU, like Echo-Forcing's anchor pool): 3
  frames go in per context pass of blocks 0..5 and 3 come back per block; the original keeps it on the GPU.
* The pool is written from context passes only (the original mirrors every call that ends within the first
  21 frames; the context pass is the last write of a block, so the pool content is the same) and only the
  18 frames that are ever read are kept.
* The original pipeline draws the initial noise for ONE block and tiles it over all blocks (§3.4, §7.7). That
  is a property of the pipeline's noise, not of the cache, and is not reproduced here.
* RoPE positions have no upper limit (the original's table has 8192 rows; §7.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots, tensor_bytes
from .state import MemoryState, SceneInfo

GROUP = 3
"""Frames per pool group = frames per block (Rolling Sink's layout is built from 3-frame groups)."""


def sink_group(previous_start: int, pool_frames: int, group: int = GROUP) -> list[int]:
    """Pool frames (in insertion order) that replace the previous block, which starts at ``previous_start``."""
    u = previous_start % pool_frames
    if (previous_start // pool_frames) % 2 == 1:  # the "reverse" leg
        return list(range(pool_frames - u - 1, pool_frames - group - u - 1, -1))
    return list(range(u, u + group))


@dataclass(frozen=True)
class RollingSinkCacheConfig:
    """Rolling Sink's cache: budget ``budget_frames`` = sink (budget - 6) + previous block + current block."""

    budget_frames: int = 21

    def __post_init__(self):
        check_int("budget_frames", self.budget_frames, 3 * GROUP, None,
                   " (the sink is budget_frames - 6 frames and must hold at least one 3-frame group)")
        if self.budget_frames % GROUP:
            raise ConfigError(f"budget_frames must be a multiple of {GROUP} (whole 3-frame groups), got "
                              f"{self.budget_frames}; use {self.budget_frames - self.budget_frames % GROUP} or "
                              f"{self.budget_frames - self.budget_frames % GROUP + GROUP}")

    @property
    def sink_frames(self) -> int:
        return self.budget_frames - 2 * GROUP

    @property
    def pool_frames(self) -> int:
        return self.budget_frames - GROUP

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; the layout needs 3-frame blocks."""
        if frames_per_block != GROUP:
            raise CacheLengthError(f"the Rolling Sink cache is built from {GROUP}-frame groups; frames_per_block "
                                   f"must be {GROUP}, got {frames_per_block}")

    def create(self, num_layers: int, scenes: list[SceneInfo] | None = None) -> MemoryState:
        """One cache per layer; a prompt switch only changes the text (no scene logic)."""
        return MemoryState([RollingSinkLayerCache(self) for _ in range(num_layers)])


class RollingSinkLayerCache(FrameBuffer):
    """One layer's Rolling Sink buffer and pool, keys pre-RoPE."""

    def __init__(self, config: RollingSinkCacheConfig):
        super().__init__(config.budget_frames)
        self.config = config
        cap = config.budget_frames
        self.pool_k: torch.Tensor | None = None  # [B, pool_frames * P, H, D], clean pre-RoPE frames 0..pool-1
        self.pool_v: torch.Tensor | None = None
        self.frame_pos = torch.zeros(cap, dtype=torch.long)  # temporal position of each slot
        self.frame_src = torch.full((cap,), -1, dtype=torch.long)  # which frame of the video each slot holds
        self.pending: int | None = None  # start frame R of the block whose slots get the next pool group

    def allocate(self, like: torch.Tensor, grid: tuple[int, int]) -> None:
        super().allocate(like, grid)
        b, _, h, d = like.shape
        p, cfg = self.frame_tokens, self.config
        storage = torch.device("cpu") if like.device.type == "cuda" else like.device
        pin = like.device.type == "cuda"
        shape = (b, cfg.pool_frames * p, h, d)
        self.pool_k = torch.zeros(shape, dtype=like.dtype, device=storage, pin_memory=pin)
        self.pool_v = torch.zeros(shape, dtype=like.dtype, device=storage, pin_memory=pin)

    def _insert_group(self, p: int) -> None:
        """Overwrite the previous block's slots (budget-6 .. budget-4) with the next pool group."""
        cfg = self.config
        first = cfg.sink_frames
        for i, frame in enumerate(sink_group(self.pending, cfg.pool_frames)):
            slot = first + i
            self.k[:, slot * p:(slot + 1) * p] = self.pool_k[:, frame * p:(frame + 1) * p].to(self.k.device)
            self.v[:, slot * p:(slot + 1) * p] = self.pool_v[:, frame * p:(frame + 1) * p].to(self.v.device)
            self.frame_src[slot] = frame
        self.pending = None

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cap = self.config.budget_frames
        new_frames = call.end_frame - self.global_end
        if new_frames > 0:
            if self.pending is not None:  # the insertion of the previous context pass, deferred (see module doc)
                self._insert_group(p)
            end = self.local_end + new_frames
            if end > cap:  # roll with no sink: the oldest frames leave
                end = evict_slots(self.k, self.v, [self.frame_pos, self.frame_src], 0, end - cap, self.local_end,
                                  p) + new_frames
        else:
            end = self.local_end + new_frames
        if end - f < 0 or end > cap:
            raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit the "
                                   f"{cap}-frame Rolling Sink buffer (filled to {self.local_end})")
        self.k[:, (end - f) * p:end * p] = k
        self.v[:, (end - f) * p:end * p] = v
        self.frame_pos[end - f:end] = torch.arange(call.start_frame, call.end_frame)
        self.frame_src[end - f:end] = torch.arange(call.start_frame, call.end_frame)
        self.local_end, self.global_end = end, max(self.global_end, call.end_frame)
        if call.context_pass:
            pool = self.config.pool_frames
            for i in range(f):
                frame = call.start_frame + i
                if frame < pool:
                    self.pool_k[:, frame * p:(frame + 1) * p] = k[:, i * p:(i + 1) * p].to(self.pool_k.device)
                    self.pool_v[:, frame * p:(frame + 1) * p] = v[:, i * p:(i + 1) * p].to(self.pool_v.device)
            if call.start_frame >= cap:
                self.pending = call.start_frame - GROUP
        return self.window(torch.arange(call.start_frame, call.end_frame), self.frame_pos[:end].clone())

    @property
    def storage_bytes(self) -> int:
        """Persistent bytes on the storage device (the pool; the compute device itself when that is the CPU)."""
        return tensor_bytes(self.pool_k, self.pool_v)
