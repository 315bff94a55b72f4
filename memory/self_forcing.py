"""The plain Self-Forcing KV cache (docs/BASELINES.md §1), behind the memory seam of ``models.seam``.

Two variants, as in the Self-Forcing code:

* global (``local_attn_size = None``): a buffer of ``capacity`` frames (21 by default) that only grows; a
  video longer than the buffer is refused before any work (``SelfForcingCacheConfig.check_length``).
* rolling (``local_attn_size = N``): a buffer of N frames; when a new block does not fit, the oldest frames
  after the first ``sink_size`` frames are dropped and the rest shift left.

Keys sit at their ABSOLUTE temporal positions (the latent-frame index), queries too. Self-Forcing stores
keys already rotated; here keys are stored pre-RoPE with their positions and the DiT rotates the window,
which gives the same numbers (the rotation is the same deterministic function of key and position).

Write rule (per layer, per call): a call covering frames ``[s, e)`` writes at
``local_end + (e - global_end) - F``: the first call of a block appends, the later denoising calls and the
clean context pass of the same block overwrite the same slots. The buffer and the roll are the baselines'
shared ``memory.frame_cache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .frame_cache import SELF_FORCING_FRAMES, CacheLengthError, FrameBuffer, evict_slots
from .state import MemoryState, SceneInfo
from .unified_rope import PRETRAINED_FRAMES, ROPE_MODES, check_rope, unified_window


@dataclass(frozen=True)
class SelfForcingCacheConfig:
    """Layout of the Self-Forcing cache. ``local_attn_size=None`` is the global cache."""

    local_attn_size: int | None = None
    sink_size: int = 0
    capacity: int = SELF_FORCING_FRAMES
    rope: str = "absolute"
    """"absolute": keys and queries at their frame index (the code); "unified": the unified relative RoPE
    recipe (memory/unified_rope.py), ids within the trained range however long the video."""
    rope_frames: int = PRETRAINED_FRAMES
    """Unified RoPE: frames of the model's trained range (the newest id stops at rope_frames - 1)."""

    def __post_init__(self):
        if self.local_attn_size is not None and self.local_attn_size < 1:
            raise ValueError(f"local_attn_size must be at least 1 frame, got {self.local_attn_size}")
        if self.sink_size < 0:
            raise ValueError(f"sink_size must be >= 0, got {self.sink_size}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1 frame, got {self.capacity}")
        if self.local_attn_size is not None and self.sink_size >= self.local_attn_size:
            raise ValueError(f"sink_size ({self.sink_size}) must be smaller than local_attn_size "
                             f"({self.local_attn_size})")
        check_rope(self.rope, ROPE_MODES, self.rope_frames)

    @property
    def rolling(self) -> bool:
        return self.local_attn_size is not None

    @property
    def buffer_frames(self) -> int:
        return self.local_attn_size if self.rolling else self.capacity

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Refuse a video this cache cannot hold, before any work is done."""
        if not self.rolling and num_frames > self.capacity:
            raise CacheLengthError(
                f"the global Self-Forcing cache holds {self.capacity} latent frames but {num_frames} were "
                f"requested; use a rolling cache (local_attn_size) for longer videos")
        if self.rolling and self.sink_size + frames_per_block > self.local_attn_size:
            raise CacheLengthError(
                f"a rolling cache of {self.local_attn_size} frames cannot keep {self.sink_size} sink frames "
                f"and a {frames_per_block}-frame block")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> MemoryState:
        """One cache per layer; a new prompt only changes the text (no scene logic, like Self-Forcing)."""
        return MemoryState([SelfForcingLayerCache(self) for _ in range(num_layers)])


class SelfForcingLayerCache(FrameBuffer):
    """One layer's Self-Forcing cache: pre-RoPE keys and values plus the absolute frame index of each slot."""

    def __init__(self, config: SelfForcingCacheConfig):
        super().__init__(config.buffer_frames)
        self.config = config
        self.frame_pos = torch.zeros(config.buffer_frames, dtype=torch.long)  # absolute frame of each slot

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cap = self.config.buffer_frames
        new_frames = call.end_frame - self.global_end  # > 0 on the first call of a block, 0 on repeats
        end = self.local_end
        if self.config.rolling and new_frames > 0 and self.local_end + f > cap:
            end = evict_slots(self.k, self.v, [self.frame_pos], self.config.sink_size, self.local_end + f - cap,
                              self.local_end, p)
        end += new_frames
        if end > cap or end - f < 0:
            raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit a "
                                   f"{cap}-frame cache (filled to {self.local_end})")
        self.k[:, (end - f) * p:end * p] = k
        self.v[:, (end - f) * p:end * p] = v
        self.frame_pos[end - f:end] = torch.arange(call.start_frame, call.end_frame)
        self.local_end, self.global_end = end, call.end_frame
        q_time, k_time = torch.arange(call.start_frame, call.end_frame), self.frame_pos[:end].clone()
        if self.config.rope == "unified":
            q_time, k_time = unified_window(q_time, k_time, self.config.sink_size, self.config.rope_frames)
        return self.window(q_time, k_time)
