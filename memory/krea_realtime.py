"""Krea Realtime's KV re-computation ("Krea R3"), behind the memory seam.

What it is: Krea Realtime 14B (krea-ai/realtime-video @ acf4b7b; weights krea/krea-realtime-video) is a
Self-Forcing student of Wan2.1-T2V-14B that keeps no rolling cache. Before every block after the first it throws
its cache away and re-encodes a short clean context in one call at timestep 0: the video's first frame and the
last ``context_frames - 1`` frames before the block, at positions 0..n-1, with full attention among them
(``context_frames`` 3, the release's). The block is then denoised at positions n..n+2, attending to the context
and to itself. No context pass follows a block: the next block's re-computation replaces it. Positions never grow,
so a video can run for any length.

Its step list ends with a call at timestep 0 (1000, 937.5, 833.3, 625, 0 at shift 5; ``models.schedule``), and the
block's output is that call's estimate.

Attention bias (``attention_bias``; the release's remote code and its ports, not the GitHub code): the denoising
calls add ``log(bias)`` to the logits of the past context frames (all but the first), so the block leans on the
first frame and itself; the re-computation has none.

Not here yet: the release's default re-encodes the first context frame from the last decoded pixels through the
VAE (``keep_first_frame`` off), which needs a VAE in the loop. This cache is the ``keep_first_frame`` mode: the
video's true first frame is the context's first frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, check_int
from .frame_cache import CacheLengthError, FrameBuffer
from .state import MemoryState, SceneInfo


@dataclass(frozen=True)
class KreaCacheConfig:
    """Krea Realtime's re-computed context: ``context_frames`` frames (the first + the latest) before each block."""

    context_frames: int = 3
    keep_first_frame: bool = True
    """The context starts with the video's first latent frame (the VAE re-encoding of the release's default mode
    is not offered yet)."""
    attention_bias: float = 1.0
    """Weight of the past context frames (all but the first) in the denoising calls' attention: ``log(bias)`` is
    added to their logits (the release's remote code and its ports; 1 = none, 0.3 the ports' default)."""

    def __post_init__(self):
        check_int("context_frames", self.context_frames, 1, 3,
                  " (the re-computation attends in 3-frame chunks; up to 3 frames it is full attention, as released)")
        if isinstance(self.attention_bias, bool) or not isinstance(self.attention_bias, (int, float)) \
                or not 0 < self.attention_bias <= 1:
            raise ConfigError(f"attention_bias must be a number in (0, 1], got {self.attention_bias!r}")
        if self.keep_first_frame is not True:
            raise ConfigError("keep_first_frame must be True: re-encoding the first context frame through the VAE "
                              "is not offered yet")

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length; the cache holds the context and one block."""
        if frames_per_block < 1:
            raise CacheLengthError("blocks must have at least one frame")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> MemoryState:
        return KreaState(self, [KreaLayerCache(self) for _ in range(num_layers)])


class KreaState(MemoryState):
    """The frames each block re-encodes; no context pass after a block."""

    context_pass_per_block = False

    def __init__(self, config: KreaCacheConfig, layers: Sequence[KreaLayerCache]):
        super().__init__(layers)
        self.config = config

    def context_frames(self, start_frame: int) -> list[int]:
        if start_frame == 0:
            return []
        latest = list(range(1, start_frame))[-(self.config.context_frames - 1):] if self.config.context_frames > 1 \
            else []
        return [0, *latest]


class KreaLayerCache(FrameBuffer):
    """One layer's cache: the re-computed context at slots 0..n-1 and the block being denoised after it."""

    def __init__(self, config: KreaCacheConfig):
        super().__init__(config.context_frames + 3)
        self.config = config
        self.context = 0  # frames of re-computed context in front of the block

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None or self.buffer_frames < self.config.context_frames + f:
            self.buffer_frames = self.config.context_frames + f
            self.allocate(k, call.grid)
        if call.context_pass:  # the re-computation: the context replaces the cache, full attention among it
            if f > self.config.context_frames:
                raise CacheLengthError(f"a {f}-frame re-computation does not fit a {self.config.context_frames}-frame "
                                       "context")
            self.k[:, :f * p] = k
            self.v[:, :f * p] = v
            self.context = self.local_end = f
            self.global_end = call.end_frame
            return self.window(torch.arange(f), torch.arange(f))
        if call.start_frame == 0:
            self.context = 0
        first = self.context
        self.k[:, first * p:(first + f) * p] = k
        self.v[:, first * p:(first + f) * p] = v
        self.local_end = first + f
        bias = None
        if self.config.attention_bias != 1.0 and first > 1:  # past frames: the context but its first frame
            bias = torch.zeros((first + f) * p, dtype=torch.float32)
            bias[p:first * p] = math.log(self.config.attention_bias)
        return self.window(torch.arange(first, first + f), torch.arange(first + f), logit_bias=bias)
