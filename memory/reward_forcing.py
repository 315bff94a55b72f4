"""Reward Forcing's KV cache: a short rolling window behind an EMA sink ("Reward-Forcing S3+R6"), behind the seam.

What it is: Reward Forcing (code JaydenLyh/Reward-Forcing @ 4317f5a, "[fix] ema sink") keeps the Self-Forcing
sampler and changes only the attention cache, to 9 frames instead of 21 (fewer keys per call: its reported
23.1 FPS): a sink of the video's first 3 frames and the 6 latest frames (the previous block and the current
one). The sink is not frozen: every frame that leaves the window is blended into it ("EMA-Sink").

Layout (per layer): slots 0..2 = sink, slots 3..8 = rolling (3 previous frames + the current block). The first
call of a block that does not fit rolls: the oldest rolling frames (slots 3..5) leave, slots 6..8 move to 3..5
and the block is written at 6..8; later calls of the block overwrite its slots in place. Right after that
roll, before attention, the frames that left are blended into the sink, slot by slot and token by token:

    sink_k <- alpha * sink_k + (1 - alpha) * evicted_k        (values alike), alpha = 0.999

on every layer, head and channel, with the pre-RoPE keys, computed as the code computes it: each product
rounded to the cache dtype, then the sum (in bf16 ``0.999 * x`` rounds back to ``x``, so the official sink moves
only where an evicted value is much larger; an fp32 update would drift away from it). The first blend happens
at block 3 (frames 9..11), with frames 3..5. Training never evicts (21-frame cache), so this is an
inference-time rule of the released sampler.

Positions: slot positions. The keys of the window sit at 0..n-1 in slot order, the queries on the block's
slots (6..8 in steady state), so no id ever exceeds 8.

Prompt switches: Reward Forcing has none; here a switch only changes the text (docs/BASELINES.md §7.2).

The code replaces the sink by the evicted frames when their counts differ (a sink of another size than a
block); this preset keeps the released sizes, 3-frame blocks and a 3-frame sink, and refuses other block sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots
from .state import MemoryState, SceneInfo


@dataclass(frozen=True)
class RewardForcingCacheConfig:
    """Reward Forcing's cache: ``sink_size`` EMA sink frames + ``local_attn_size - sink_size`` rolling frames."""

    local_attn_size: int = 9
    sink_size: int = 3
    ema_alpha: float = 0.999
    """Weight of the sink in its blend with the frames that leave the window (the code's compression_alpha)."""

    def __post_init__(self):
        check_int("local_attn_size", self.local_attn_size, 2, None)
        check_int("sink_size", self.sink_size, 1, self.local_attn_size - 1,
                  f" (smaller than local_attn_size={self.local_attn_size}, to leave room for a block)")
        if isinstance(self.ema_alpha, bool) or not isinstance(self.ema_alpha, (int, float)) \
                or not 0.0 <= self.ema_alpha <= 1.0:
            raise ConfigError(f"ema_alpha must be a number in [0, 1], got {self.ema_alpha!r}")

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; blocks must be as large as the sink (each block's frames that leave blend into it)."""
        if frames_per_block != self.sink_size:
            raise CacheLengthError(f"Reward Forcing blends the {frames_per_block} frames a block pushes out into its "
                                   f"{self.sink_size}-frame sink, one for one: it needs {self.sink_size}-frame "
                                   "blocks (the released student makes 3-frame blocks)")
        if self.sink_size + 2 * frames_per_block > self.local_attn_size:
            raise CacheLengthError(f"a Reward Forcing window of {self.local_attn_size} frames cannot keep a "
                                   f"{self.sink_size}-frame sink, the previous block and the current one")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> MemoryState:
        return MemoryState([RewardForcingLayerCache(self) for _ in range(num_layers)])


class RewardForcingLayerCache(FrameBuffer):
    """One layer's Reward Forcing window: pre-RoPE keys and values, the sink blended with what leaves."""

    def __init__(self, config: RewardForcingCacheConfig):
        super().__init__(config.local_attn_size)
        self.config = config

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cap, sink = self.config.local_attn_size, self.config.sink_size
        new_frames = call.end_frame - self.global_end  # > 0 on the first call of a block
        end = self.local_end
        evicted = None
        if new_frames > 0 and end + f > cap:
            count = end + f - cap
            span = slice(sink * p, (sink + count) * p)
            evicted = self.k[:, span].clone(), self.v[:, span].clone()
            end = evict_slots(self.k, self.v, [], sink, count, end, p)
        end += max(new_frames, 0)
        if end > cap or end - f < 0:
            raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit a "
                                   f"{cap}-frame Reward Forcing window (filled to {self.local_end})")
        self.k[:, (end - f) * p:end * p] = k
        self.v[:, (end - f) * p:end * p] = v
        if evicted is not None:
            self._blend_into_sink(*evicted)
        self.local_end, self.global_end = end, max(self.global_end, call.end_frame)
        return self.window(torch.arange(end - f, end), torch.arange(end))

    def _blend_into_sink(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """EMA of the sink with the frames that just left (one for one), each product in the cache dtype."""
        alpha, tokens = self.config.ema_alpha, self.config.sink_size * self.frame_tokens
        for buffer, gone in ((self.k, k), (self.v, v)):
            buffer[:, :tokens] = alpha * buffer[:, :tokens] + (1.0 - alpha) * gone
