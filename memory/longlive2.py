"""LongLive 2.0's KV cache ("S8 + R24", multi-shot), behind the memory seam.

What it is: LongLive 2.0 (NVlabs/LongLive @ 7860ad9, the 5B student on Wan2.2-TI2V-5B) generates 8-frame blocks
with a 32-frame cache whose first block is a sink (any block size works: the sink is the first block), and makes
multi-shot videos: a block that starts a new shot shifts every later RoPE temporal position by 8 more and is
pinned as a second sink. Its rollout is the block loop with the flow UniPC solver (``models.flow_unipc``) and a
clean context pass per block.

Layout (per layer): up to ``local_attn_size`` = 32 frames of keys and values in slot order, stored pre-RoPE with
the position each was written at (LongLive stores them rotated; rotating at attention time with the same
position is the same). Slots 0..7 hold block 0 for the whole video (the sink).

Write rule: the first call of a block that would overflow rolls first: a protected prefix stays (the sink, plus
the pinned shot block when it sits right after the sink), the next 8 frames leave and the rest close the gap (a
pinned block further on moves down with them, until it reaches the prefix). The block is appended; its later
calls and its context pass overwrite the same slots. Every call attends the whole cache.

Shots: a shot begins at a hard cut or a recall (LongLive's "The scene transitions." prompts); a smooth
transition only changes the text. From a shot's first block on, positions are frame index + 8 x shots so far;
after the block's context pass its slots become the pinned shot sink (replacing an earlier pin, which then rolls
out like any block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, Transition, check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots
from .state import BlockReport, MemoryState, SceneInfo

SHOT_ENTRIES = (Transition.HARD_CUT, Transition.RECALL)
"""Transitions that start a new LongLive 2.0 shot (the others continue the shot with a new prompt)."""


@dataclass(frozen=True)
class LongLive2CacheConfig:
    """LongLive 2.0's cache: ``local_attn_size`` frames, the first ``sink_blocks`` blocks a sink, shot offsets and
    pins."""

    local_attn_size: int = 32
    sink_blocks: int = 1
    """The first blocks of the video kept as the sink (LongLive 2.0: block 0, 8 frames)."""
    shot_rope_offset: int = 8
    """RoPE temporal positions move on by this much at every new shot (0: none)."""
    pin_shots: bool = True
    """Keep the first block of the latest shot as a second sink."""

    def __post_init__(self):
        check_int("local_attn_size", self.local_attn_size, 1, None)
        check_int("sink_blocks", self.sink_blocks, 0, None)
        check_int("shot_rope_offset", self.shot_rope_offset, 0, None)
        if not isinstance(self.pin_shots, bool):
            raise ConfigError(f"pin_shots must be True or False, got {self.pin_shots!r}")

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length; the cache must hold the sink, a pinned block, the previous block and the current one."""
        blocks = self.sink_blocks + 2 + (1 if self.pin_shots else 0)
        if blocks * frames_per_block > self.local_attn_size:
            raise CacheLengthError(f"a LongLive 2.0 cache of {self.local_attn_size} frames cannot keep {blocks} "
                                   f"blocks of {frames_per_block} frames (the sink, a pinned shot block, the previous "
                                   "block and the current one)")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> LongLive2State:
        return LongLive2State(self, [LongLive2LayerCache(self) for _ in range(num_layers)], scenes or ())


class LongLive2State(MemoryState):
    """The shots: a hard cut or recall starts one (RoPE offset on, its first block pinned after its context
    pass); any other transition continues the shot with the new prompt."""

    def __init__(self, config: LongLive2CacheConfig, layers: Sequence[LongLive2LayerCache],
                 scenes: Sequence[SceneInfo]):
        super().__init__(layers)
        self.config = config
        self.entries = tuple(s.entry for s in scenes)
        self.new_shot = False  # the next block to finish is the first of a shot (pinned after its context pass)

    def start_scene(self, scene: int, start_frame: int) -> dict:
        starts = scene < len(self.entries) and self.entries[scene] in SHOT_ENTRIES
        if starts:
            self.new_shot = True
            for layer in self.layers:
                layer.shots += 1
        mode = Transition.HARD_CUT.value if starts else Transition.SMOOTH.value
        return {"scene": scene, "mode": mode, "shot": self.layers[0].shots,
                "rope_offset": self.layers[0].shots * self.config.shot_rope_offset}

    def end_block(self, scene: int, first_in_scene: bool, last_in_scene: bool) -> BlockReport:
        if self.new_shot and self.config.pin_shots and self.config.sink_blocks:
            for layer in self.layers:
                layer.pin_last_block()
        self.new_shot = False
        return BlockReport(slots=self.layers[0].local_end,
                           notes={"shot": self.layers[0].shots, "pinned_slot": self.layers[0].pinned})

    def boundary_fields(self) -> dict:
        return {"new_shot": self.new_shot}

    def resume_fields(self, fields: dict) -> None:
        self.new_shot = bool(fields.get("new_shot", False))


class LongLive2LayerCache(FrameBuffer):
    """One layer's LongLive 2.0 cache: pre-RoPE keys and values, the position of every slot, the pinned block."""

    def __init__(self, config: LongLive2CacheConfig):
        super().__init__(config.local_attn_size)
        self.config = config
        self.positions = torch.zeros(config.local_attn_size, dtype=torch.long)  # RoPE temporal id of each slot
        self.shots = 0  # new shots so far (the RoPE offset is shots x shot_rope_offset)
        self.pinned = -1  # first slot of the pinned shot block, -1 for none
        self.block_frames = 0

    def pin_last_block(self) -> None:
        self.pinned = self.local_end - self.block_frames

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        offset = self.shots * self.config.shot_rope_offset
        if call.end_frame > self.global_end:  # the block's first call: roll if it does not fit, then append
            self.block_frames = f
            if self.local_end + f > self.buffer_frames:
                self._roll(f, p)
            first = self.local_end
            self.local_end, self.global_end = first + f, call.end_frame
        else:
            first = self.local_end - f
        self.k[:, first * p:(first + f) * p] = k
        self.v[:, first * p:(first + f) * p] = v
        q_time = torch.arange(call.start_frame, call.end_frame) + offset
        self.positions[first:first + f] = q_time
        return self.window(q_time, self.positions[:self.local_end].clone())

    def _roll(self, f: int, p: int) -> None:
        """Drop ``f`` frames after the protected prefix (the sink, and a pin right after it); a pin further on
        moves down with the frames behind it."""
        sink = self.config.sink_blocks * f
        keep = sink + f if self.pinned == sink else sink
        if self.local_end - keep < f:
            raise CacheLengthError(f"a LongLive 2.0 cache of {self.buffer_frames} frames has no room for a "
                                   f"{f}-frame block after its protected {keep} frames")
        if keep < self.pinned < keep + f:
            raise CacheLengthError("the pinned shot block is not aligned to the blocks")
        self.local_end = evict_slots(self.k, self.v, [self.positions], keep, f, self.local_end, p)
        if self.pinned > keep:
            self.pinned -= f
