"""LongLive 1.0's KV cache and prompt-switch re-cache ("LongLive S3+R9"), behind the memory seam.

What it is: LongLive (NVlabs, "LongLive: Real-time Interactive Long Video Generation"; code NVlabs/LongLive @
2462895, the last LongLive 1.0 commit) fine-tunes the Self-Forcing student for long, interactive videos. At
inference its cache is Self-Forcing's rolling cache with a frame sink, and a prompt switch re-encodes the
latest frames with the new prompt ("KV re-cache"). Reference: docs/BASELINES.md §2.

Layout (per layer, defaults): a buffer of ``local_attn_size`` = 12 frames; slots 0..2 are the sink (frames
0..2 of the video, written by block 0 like any block); slots 3..11 are the rolling part (6 previous frames +
the current block, "R9"). The first call of a block that does not fit rolls: the oldest non-sink frames leave
and the rest shift left. The window is the whole filled buffer, no mask (§2.1).

Positions: keys at their ABSOLUTE frame index, queries too (§2.2); the sink keeps 0..2 for the whole video.
Keys are stored pre-RoPE with the absolute index of each slot and the DiT rotates them, which reproduces
LongLive's post-RoPE storage (same deterministic rotation of the same key at the same position).

Write rule: the first call of a block appends (or rolls first); later calls of the block overwrite its slots.
A "recompute" call (end <= global_end and start > 0) never writes into sink slots and does not move the end
pointers (§2.1).

Prompt switch (§2.3): the rollout first calls ``start_scene``, then runs ONE clean call (timestep 0, new prompt)
over the last n = ``recache_frames(scene)`` latent frames, clamped to the frames generated so far, with all n
frames as queries attending bidirectionally over the window. With ``global_sink`` (the default) and t >= 15
that call is a recompute: frames t-9..t-1 are re-encoded into slots 3..11, the first 3 frames of the call
only ask (their K/V are neither stored nor attended) and the sink keeps frames 0..2 as encoded under the
first prompt; for t <= 12 the call starts at frame 0 and re-encodes the sink too. With ``global_sink=False``
the switch zeroes the buffer and the re-cache call writes from slot 0, so frames t-12..t-10 become the new
sink at their own positions. Nothing else changes at a switch: the rollout hands the new scene's text to
every later call.

Where this differs from the LongLive code (deliberately):
* Sink protection of recompute calls: LongLive skips every sink slot; here a recompute call skips a sink slot
  only when that slot holds another frame than the one being written. With the defaults (sink 3 = one block)
  both rules are the same; with a sink longer than a block LongLive's rule would stop the later calls of
  block 1 from overwriting their own (sink) slots, leaving noisy keys there.
* ``recache_frames`` is a knob (LongLive re-caches min(12, t) = the buffer size). With ``global_sink=False``
  the buffer's filled length becomes the n re-encoded frames (LongLive keeps its end pointers, which is the
  same when n is the buffer size); with ``recache_frames=0`` such a switch then simply restarts the buffer.
* RoPE positions have no upper limit (LongLive's table fails past ~1021 frames; §7.8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, Transition, check_int
from .frame_cache import CacheLengthError, FrameBuffer, evict_slots
from .state import MemoryState, SceneInfo
from .unified_rope import PRETRAINED_FRAMES, ROPE_MODES, check_rope, unified_window


@dataclass(frozen=True)
class LongLiveCacheConfig:
    """LongLive 1.0's cache: rolling buffer with a frame sink at absolute positions, KV re-cache at switches."""

    local_attn_size: int = 12
    """Frames in the buffer (= the attention budget), sink included."""
    sink_size: int = 3
    """Frames at the front of the buffer that never roll out (frames 0..sink_size-1 of the video)."""
    global_sink: bool = True
    """Keep the sink across prompt switches; False zeroes the buffer at a switch and the re-cached frames
    (their first ``sink_size`` frames) become the new sink."""
    recache_frames: int = 12
    """Latent frames re-encoded with the new prompt at a switch (0 switches the re-cache off)."""
    rope: str = "absolute"
    """"absolute": keys and queries at their frame index (the code); "unified": the unified relative RoPE
    recipe (memory/unified_rope.py): sink at 0..2, the newest frame's id stops at 20."""
    rope_frames: int = PRETRAINED_FRAMES
    """Unified RoPE: frames of the model's trained range (the newest id stops at rope_frames - 1)."""

    def __post_init__(self):
        check_int("local_attn_size", self.local_attn_size, 1, None)
        check_int("sink_size", self.sink_size, 0, self.local_attn_size - 1,
                   f" (smaller than local_attn_size={self.local_attn_size}, to leave room for a block)")
        if not isinstance(self.global_sink, bool):
            raise ConfigError(f"global_sink must be True or False, got {self.global_sink!r}")
        check_int("recache_frames", self.recache_frames, 0, self.local_attn_size,
                   f" (at most local_attn_size={self.local_attn_size}: the re-cache call writes into the buffer)")
        check_rope(self.rope, ROPE_MODES, self.rope_frames)

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; the buffer must hold the sink and one block."""
        if self.sink_size + frames_per_block > self.local_attn_size:
            raise CacheLengthError(
                f"a LongLive buffer of local_attn_size={self.local_attn_size} frames cannot keep "
                f"sink_size={self.sink_size} sink frames and a {frames_per_block}-frame block; sink_size must lie "
                f"in 0..{self.local_attn_size - frames_per_block}")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> LongLiveState:
        return LongLiveState(self, [LongLiveLayerCache(self) for _ in range(num_layers)])


class LongLiveState(MemoryState):
    """Scene hooks of LongLive: optional zeroing (no global sink) and the re-cache length."""

    def __init__(self, config: LongLiveCacheConfig, layers: Sequence[LongLiveLayerCache]):
        super().__init__(layers)
        self.config = config

    def start_scene(self, scene: int, start_frame: int) -> dict:
        if not self.config.global_sink:
            for layer in self.layers:
                layer.restart_for_recache()
        return {"scene": scene, "mode": Transition.SMOOTH.value,
                "recache_frames": min(self.config.recache_frames, start_frame), "global_sink": self.config.global_sink}

    def recache_frames(self, scene: int) -> int:
        return self.config.recache_frames


class LongLiveLayerCache(FrameBuffer):
    """One layer's LongLive buffer: pre-RoPE keys/values plus the absolute frame (= position) of each slot."""

    def __init__(self, config: LongLiveCacheConfig):
        super().__init__(config.local_attn_size)
        self.config = config
        self.frame_pos = torch.zeros(config.local_attn_size, dtype=torch.long)  # absolute frame of each slot
        self.write_from_zero = False  # set by a switch without global sink: the re-cache call fills slot 0 on

    def restart_for_recache(self) -> None:
        """A switch without global sink: zero the buffer; the next (re-cache) call writes from slot 0."""
        if self.k is not None:
            self.k.zero_()
            self.v.zero_()
        self.local_end = 0
        self.write_from_zero = True

    def _write(self, slot: int, k: torch.Tensor, v: torch.Tensor, frame: int, p: int) -> None:
        self.k[:, slot * p:(slot + 1) * p] = k
        self.v[:, slot * p:(slot + 1) * p] = v
        self.frame_pos[slot] = frame

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cap, sink = self.config.local_attn_size, self.config.sink_size
        new_frames = call.end_frame - self.global_end  # > 0 on the first call of a block
        from_zero, self.write_from_zero = self.write_from_zero, False
        if from_zero and new_frames <= 0:  # the re-cache call after a switch without global sink
            if f > cap:
                raise CacheLengthError(f"a {f}-frame re-cache does not fit a {cap}-frame LongLive buffer")
            for i in range(f):
                self._write(i, k[:, i * p:(i + 1) * p], v[:, i * p:(i + 1) * p], call.start_frame + i, p)
            self.local_end = f
        elif new_frames > 0:
            end = self.local_end + new_frames
            if end > cap:  # roll: the oldest non-sink frames leave, the rest shift left
                end = evict_slots(self.k, self.v, [self.frame_pos], sink, end - cap, self.local_end, p) + new_frames
            if end - f < 0:
                raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit a "
                                       f"{cap}-frame LongLive buffer (filled to {self.local_end})")
            self.k[:, (end - f) * p:end * p] = k
            self.v[:, (end - f) * p:end * p] = v
            self.frame_pos[end - f:end] = torch.arange(call.start_frame, call.end_frame)
            self.local_end, self.global_end = end, call.end_frame
        else:  # a repeat call of the block, or the re-cache call: overwrite in place, pointers stay
            first = self.local_end + new_frames - f
            if first < 0:
                raise CacheLengthError(f"a {f}-frame call ending at frame {call.end_frame} reaches before the "
                                       f"start of the {self.local_end}-frame LongLive buffer")
            recompute = call.start_frame > 0
            for i in range(f):
                slot, frame = first + i, call.start_frame + i
                if recompute and slot < sink and int(self.frame_pos[slot]) != frame:
                    continue  # a recompute never overwrites the sink with other frames
                self._write(slot, k[:, i * p:(i + 1) * p], v[:, i * p:(i + 1) * p], frame, p)
        q_time, k_time = torch.arange(call.start_frame, call.end_frame), self.frame_pos[:self.local_end].clone()
        if self.config.rope == "unified":
            q_time, k_time = unified_window(q_time, k_time, self.config.sink_size, self.config.rope_frames)
        return self.window(q_time, k_time)
