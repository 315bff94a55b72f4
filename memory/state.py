"""What the rollout drives: a cache policy's per-layer memories plus its scene-level hooks.

``pipeline.rollout`` creates one ``MemoryState`` per video from a policy (``create``), hands
``state.layers`` to the DiT (one ``models.seam.LayerMemory`` per layer) and calls the hooks around every
block. The base class is a cache without scene logic (the hooks do nothing); Echo-Forcing and the
baselines override what they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..models.seam import AttentionWindow
from .config import Transition
from .scene_pool import ScenePool
from .snapshot import MemorySnapshot, capture, restore


@dataclass(frozen=True)
class SceneInfo:
    """What the memory needs to know about one scene of the video."""

    prompt: str
    num_blocks: int
    entry: Transition | None = None
    """How the scene is entered (a ``Transition`` or its value); None for the first scene."""
    recall_target: int | str | None = None
    """For recall entries: index of an earlier scene of this video, or the label of a pool entry."""
    label: str | None = None

    def __post_init__(self):
        if self.entry is not None:
            object.__setattr__(self, "entry", Transition(self.entry))


@dataclass
class BlockReport:
    """What happened to the memory in one block (for progress reports and the run report)."""

    slots: int = 0
    """Frames in the working cache after the block."""
    notes: dict = field(default_factory=dict)


class MemoryState:
    """Per-layer memories of one video and the scene hooks the rollout calls (no-ops here)."""

    def __init__(self, layers: Sequence):
        self.layers = list(layers)

    def start_scene(self, scene: int, start_frame: int) -> dict:
        """Called before the first block of every scene but the first; returns a report of the switch."""
        return {}

    def begin_block(self, first_in_scene: bool) -> None:
        """Called before the denoising calls of every block."""

    def before_context_pass(self) -> None:
        """Called between the last denoising call and the clean context pass of every block."""

    def end_block(self, scene: int, first_in_scene: bool, last_in_scene: bool) -> BlockReport:
        """Called after the context pass of every block."""
        return BlockReport(slots=getattr(self.layers[0], "local_end", 0))

    def recache_frames(self, scene: int) -> int:
        """Latent frames to re-encode with the new prompt before a scene starts (LongLive's KV re-cache)."""
        return 0

    def result_pool(self) -> ScenePool | None:
        """The scene pool after the video (a new object), or None for policies without one."""
        return None

    # ---- shot boundaries (memory.snapshot) -------------------------------------------------------------------

    def boundary_fields(self) -> dict:
        """The scene-level state the video so far decided (not derived from the plan), for a snapshot taken
        between two shots. The layers are captured whole (or as their ``snapshot_fields`` say)."""
        return {}

    def resume_fields(self, fields: dict) -> None:
        """Take over ``boundary_fields`` of a snapshot (this state is fresh, made for the new plan)."""

    def snapshot(self, copy: bool = True, device: torch.device | str | None = None) -> MemorySnapshot:
        """This state between two shots, in CPU memory (``memory.snapshot``); ``device``: where it runs."""
        return capture(self, copy, device)

    def resume(self, snapshot: MemorySnapshot, device: torch.device | str | None = None) -> None:
        """Continue from ``snapshot`` on ``device``: this state must be fresh (no block run yet) and of the
        same policy."""
        restore(snapshot, self, device)

    @property
    def device_bytes(self) -> int:
        return sum(m.device_bytes for m in self.layers)

    @property
    def storage_bytes(self) -> int:
        return sum(getattr(m, "storage_bytes", 0) for m in self.layers)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


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
