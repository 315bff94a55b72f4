"""What the rollout drives: a cache policy's per-layer memories plus its scene-level hooks.

``pipeline.rollout`` creates one ``MemoryState`` per video from a policy (``create``), hands
``state.layers`` to the DiT (one ``models.seam.LayerMemory`` per layer) and calls the hooks around every
block. The base class is a cache without scene logic (the hooks only report); Echo-Forcing and the
baselines override what they need. ``memory.policy`` writes down the contract; the frame buffer the
baselines share is ``memory.frame_cache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

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
    """Per-layer memories of one video and the scene hooks the rollout calls (no-ops here).

    The rollout calls, per scene: ``start_scene`` (every scene but the first), then ``recache_frames`` (and
    one clean call of that many latest frames if > 0); per block: ``begin_block``, ``context_frames`` (and one
    clean call of those frames if any), the denoising calls, ``before_context_pass``, the clean context pass
    (unless ``context_pass_per_block`` is False), ``end_block``. A policy whose ``needs_pixels`` is True gets
    every block decoded as it is made, and ``reencoded_context`` names what to re-encode from those pixels.
    ``memory.policy`` states the rules every state keeps (bounded memory, inputs left unchanged, resumable at shot
    boundaries, its reports).
    """

    snapshot_layout = 1
    """Version of what ``memory.snapshot`` captures of this state (the fields of its layers and
    ``boundary_fields``); a state class raises it when that changes, so a stored snapshot of the older layout
    is refused with a clear message instead of being misread."""

    def __init__(self, layers: Sequence):
        self.layers = list(layers)

    def start_scene(self, scene: int, start_frame: int) -> dict:
        """Called before the first block of every scene but the first; returns a report of the switch: at
        least the scene and the mode, how the memory entered it (a ``Transition`` value). A cache without
        scene logic carries all of its memory into the new scene whatever the plan says: a smooth
        continuation (only the text changes)."""
        return {"scene": scene, "mode": Transition.SMOOTH.value}

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

    context_pass_per_block = True
    """Whether every block ends with its clean context pass (False: the memory re-encodes its context itself,
    ``context_frames``, as Krea Realtime's KV re-computation)."""

    def context_frames(self, start_frame: int) -> list[int]:
        """Latent frames (of the video so far) to re-encode in one clean call before the block at ``start_frame``
        is denoised (Krea's KV re-computation); none for a cache the context passes write."""
        return []

    def reencoded_context(self, start_frame: int, frames_per_block: int) -> int | None:
        """The latent frame whose last decoded pixel frame, encoded alone through the VAE, replaces the first of
        ``context_frames`` before the block at ``start_frame`` (Krea's release default); None: the context is the
        latents themselves. Only asked of a state whose policy ``needs_pixels``."""
        return None

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
