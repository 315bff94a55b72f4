"""Infinity-RoPE's KV cache: Block-Relativistic RoPE, KV Flush and RoPE Cut ("Infinity-RoPE R21"), behind the seam.

What it is: Infinity-RoPE (paper "Infinity-RoPE"; code yesiltepe-hidir/infinity-rope @ 63d7b84f) runs the
Self-Forcing student past its trained horizon and across scenes without training: positions are relative to
the window (Block-Relativistic RoPE), a scene boundary flushes the cache down to the global sink and the
latest frames (KV Flush), and a hard cut moves the first block of the new scene far away in time (RoPE Cut).
Reference: docs/BASELINES.md §5 (this preset is Echo's "R21": budget 21, sink 1).

Layout (per layer): a buffer of ``local_attn_size`` = L frames whose first ``sink_size`` frames (frame 0 of the
video by default) never roll out; Self-Forcing's roll otherwise (§5.1). Window = the whole filled buffer.

Positions (§5.2): keys are stored pre-RoPE and the frame in slot i sits at temporal position i on every call
(the code keeps slot 0 already rotated at position 0, which is the same rotation). Queries (``slot_queries``):
* True (default): at the slots of the current block, i.e. where its own keys sit (L-3..L-1 once full, 3..5
  right after a flush to 3 frames);
* False, as the code: at the block's absolute start frames while that start is < L (the buffer still filling),
  otherwise at L-3..L-1, also right after a flush while the buffer refills, when the block's own keys sit at
  3..5, 6..8, ... (the disagreement of §5.4).

Scenes (``create(num_layers, scenes)``; SceneInfo.entry Transition.HARD_CUT marks a hard cut):
* KV Flush (§5.4), in ``start_scene`` before the scene's first call: keep the sink and the last
  ``flush_keep_frames`` frames (moved to the slots right after the sink), drop the rest; the kept K/V are not
  re-encoded. ``flush_on="hardcut"`` flushes at hard cuts only (the paper's description: "KV flush to sink +
  last frame at a hard cut"); ``flush_on="every"`` flushes at every scene boundary, as the code does. Other
  boundaries only change the text.
* RoPE Cut (§5.5): during all calls of the first block of a hard-cut scene, the current block's keys and the
  queries sit at ``cut_position``, +1, +2 (absolute values, not an offset); earlier slots keep 0, 1, ...; the
  next block uses ordinary slot positions again (``begin_block`` disarms the cut).

Options reproducing the code (§5.4, §7.3-7.4): ``flush_on="every"``, ``flush_keep_frames=2`` (the code keeps
sink + 2 frames), ``slot_queries=False`` and ``flush_from="physical"``: the code copies the last
``flush_keep_frames`` PHYSICAL slots of the buffer (L-2, L-1), which are stale while the buffer refills after
an earlier flush (a cut at s = 36 after a flush at s = 27 keeps frames 25, 26 again); the default
``flush_from="written"`` keeps the last frames actually written.

Where this differs from the Infinity-RoPE code (deliberately): with ``sink_size=0`` the frame rolled into slot
0 is rotated at position 0 like any slot (the code would attend it unrotated, §5.2); RoPE positions have no
upper limit; the code's sink is frame 0 stored rotated, here the sink is stored pre-RoPE like every slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, Transition, check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots
from .state import MemoryState, SceneInfo

FLUSH_ON = ("hardcut", "every")
FLUSH_FROM = ("written", "physical")


@dataclass(frozen=True)
class InfinityRopeCacheConfig:
    """Infinity-RoPE's cache: slot-relative positions, KV flush at scene boundaries, RoPE cut at hard cuts."""

    local_attn_size: int = 21
    sink_size: int = 1
    flush_on: str = "hardcut"
    """"hardcut": flush at hard cuts only (paper); "every": at every scene boundary (code)."""
    flush_keep_frames: int = 1
    """Frames kept after the sink at a flush (paper 1, code 2)."""
    cut_position: int = 45
    """Temporal position of the first frame of a hard cut's first block (the code's transition_from)."""
    slot_queries: bool = True
    """Queries at the current block's slots; False: the code's rule (absolute while filling, else L-3..L-1)."""
    flush_from: str = "written"
    """"written": the flush keeps the last frames written; "physical": the last physical slots (code)."""

    def __post_init__(self):
        check_int("local_attn_size", self.local_attn_size, 1, None)
        check_int("sink_size", self.sink_size, 0, self.local_attn_size - 1,
                   f" (smaller than local_attn_size={self.local_attn_size}, to leave room for a block)")
        check_int("flush_keep_frames", self.flush_keep_frames, 0, self.local_attn_size - self.sink_size - 1,
                   f" (the sink of {self.sink_size} and the kept frames must leave room in local_attn_size="
                   f"{self.local_attn_size})")
        check_int("cut_position", self.cut_position, 0, None)
        if self.flush_on not in FLUSH_ON:
            raise ConfigError(f"flush_on must be one of {', '.join(FLUSH_ON)}, got {self.flush_on!r}")
        if self.flush_from not in FLUSH_FROM:
            raise ConfigError(f"flush_from must be one of {', '.join(FLUSH_FROM)}, got {self.flush_from!r}")
        if not isinstance(self.slot_queries, bool):
            raise ConfigError(f"slot_queries must be True or False, got {self.slot_queries!r}")

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; the buffer must hold the sink, the frames kept by a flush and one block."""
        need = self.sink_size + self.flush_keep_frames + frames_per_block
        if need > self.local_attn_size:
            raise CacheLengthError(
                f"local_attn_size={self.local_attn_size} cannot hold sink_size={self.sink_size} + "
                f"flush_keep_frames={self.flush_keep_frames} + a {frames_per_block}-frame block; local_attn_size "
                f"must be at least {need}")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> InfinityRopeState:
        return InfinityRopeState(self, [InfinityRopeLayerCache(self) for _ in range(num_layers)], scenes)


class InfinityRopeState(MemoryState):
    """Scene hooks of Infinity-RoPE: KV flush and the RoPE cut of a hard cut's first block."""

    def __init__(self, config: InfinityRopeCacheConfig, layers: Sequence[InfinityRopeLayerCache],
                 scenes: Sequence[SceneInfo] | None = None):
        super().__init__(layers)
        self.config = config
        self.scenes = list(scenes or [])

    def start_scene(self, scene: int, start_frame: int) -> dict:
        entry = self.scenes[scene].entry if scene < len(self.scenes) else None
        hard = entry is Transition.HARD_CUT
        report = {"scene": scene, "mode": (entry or Transition.SMOOTH).value, "flushed_to": None, "cut": hard}
        if hard or self.config.flush_on == "every":
            for layer in self.layers:
                layer.flush()
            report["flushed_to"] = self.layers[0].local_end
        for layer in self.layers:
            layer.arm_cut(hard)
        return report

    def begin_block(self, first_in_scene: bool) -> None:
        if not first_in_scene:
            for layer in self.layers:
                layer.arm_cut(False)


class InfinityRopeLayerCache(FrameBuffer):
    """One layer's Infinity-RoPE buffer: pre-RoPE keys and values, positions from the slot index."""

    def __init__(self, config: InfinityRopeCacheConfig):
        super().__init__(config.local_attn_size)
        self.config = config
        self.frame_src = torch.full((config.local_attn_size,), -1, dtype=torch.long)  # video frame per slot (-1: none)
        self.cut = False  # the RoPE cut is armed (first block of a hard-cut scene)

    def arm_cut(self, on: bool) -> None:
        """Arm (a hard cut's first block) or disarm the RoPE cut."""
        self.cut = on

    def flush(self) -> None:
        """KV flush: keep the sink and the last ``flush_keep_frames`` frames (slots right after the sink)."""
        cfg, cap = self.config, self.config.local_attn_size
        if self.k is None:
            return
        sink = min(cfg.sink_size, self.local_end)
        if cfg.flush_from == "physical":
            keep = cfg.flush_keep_frames
            src = cap - keep
        else:
            keep = min(cfg.flush_keep_frames, self.local_end - sink)
            src = self.local_end - keep
        p = self.frame_tokens
        if keep and src != sink:
            self.k[:, sink * p:(sink + keep) * p] = self.k[:, src * p:(src + keep) * p].clone()
            self.v[:, sink * p:(sink + keep) * p] = self.v[:, src * p:(src + keep) * p].clone()
            self.frame_src[sink:sink + keep] = self.frame_src[src:src + keep].clone()
        self.local_end = sink + keep

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cfg, cap = self.config, self.config.local_attn_size
        new_frames = call.end_frame - self.global_end
        end = self.local_end + new_frames
        if new_frames > 0 and end > cap:  # roll, keeping the sink
            end = evict_slots(self.k, self.v, [self.frame_src], cfg.sink_size, end - cap, self.local_end,
                              p) + new_frames
        if end - f < 0 or end > cap:
            raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit the "
                                   f"{cap}-frame Infinity-RoPE buffer (filled to {self.local_end})")
        self.k[:, (end - f) * p:end * p] = k
        self.v[:, (end - f) * p:end * p] = v
        self.frame_src[end - f:end] = torch.arange(call.start_frame, call.end_frame)
        self.local_end, self.global_end = end, max(self.global_end, call.end_frame)
        k_time = torch.arange(end)
        if self.cut:
            q_time = torch.arange(cfg.cut_position, cfg.cut_position + f)
            k_time[end - f:] = q_time
        elif cfg.slot_queries:
            q_time = torch.arange(end - f, end)
        elif call.start_frame < cap:
            q_time = torch.arange(call.start_frame, call.end_frame)
        else:
            q_time = torch.arange(cap - f, cap)
        return self.window(q_time, k_time)

