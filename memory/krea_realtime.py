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

First frame (``keep_first_frame``): with it on, the context's first frame is the video's first latent frame. The
release's default (off) re-encodes it instead, once the video is long enough: before the block at frame ``s``
with ``s - F >= context_frames`` (``F`` the block's frames), the first context frame is the VAE encoding, on its
own, of the last decoded pixel frame of latent ``s - context_frames``, the picture just before the rest of the
context, so the anchor follows the video instead of pinning its opening. The rollout decodes every block as it is
made for this (``pipeline.pixel_reencoding``, the Wan2.1 VAE's streaming decoder) and needs the VAE.
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
    """The context starts with the video's first latent frame; False: the release's default, the first context
    frame re-encoded from the decoded pixels (needs the VAE in the loop)."""
    attention_bias: float = 1.0
    """Weight of the past context frames (all but the first) in the denoising calls' attention: ``log(bias)`` is
    added to their logits (the release's remote code and its ports; 1 = none, 0.3 the ports' default)."""

    def __post_init__(self):
        check_int("context_frames", self.context_frames, 1, 3,
                  " (the re-computation attends in 3-frame chunks; up to 3 frames it is full attention, as released)")
        if isinstance(self.attention_bias, bool) or not isinstance(self.attention_bias, (int, float)) \
                or not 0 < self.attention_bias <= 1:
            raise ConfigError(f"attention_bias must be a number in (0, 1], got {self.attention_bias!r}")
        if not isinstance(self.keep_first_frame, bool):
            raise ConfigError(f"keep_first_frame must be True or False, got {self.keep_first_frame!r}")
        if not self.keep_first_frame and self.context_frames < 2:
            raise ConfigError("keep_first_frame off re-encodes the first of at least 2 context frames; with "
                              f"context_frames {self.context_frames} keep it on")

    @property
    def needs_pixels(self) -> bool:
        """The first context frame is re-encoded from decoded pixels: the rollout needs the VAE."""
        return not self.keep_first_frame

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

    def reencoded_context(self, start_frame: int, frames_per_block: int) -> int | None:
        kv = self.config.context_frames
        if self.config.keep_first_frame or start_frame - frames_per_block < kv:
            return None
        return start_frame - kv


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
