"""Transitions: what crosses a switch into a new scene (official ``KV_scene_control``).

At the first block of a new scene every layer (``enter_scene``):
1. keeps the carried old frame (see below) in slot 0 and, for a smooth transition, the previous scene's last
   ``old_recent_frames`` (2) clean frames after it; everything else of the old scene's cache is dropped;
2. restarts the hierarchical memory for the new scene: candidate history, query calibration and anchor pool
   are cleared (the pool starts with the old slots), scene-local slot time starts after the old slots;
3. arms the RoPE jump for the scene's first block (hard cut +45, smooth 0, recall 0..6) and the decay of
   the old slots (``memory.decay``): smooth and recall fade them by per-position rates and delete them
   after 5 blocks; a hard cut weights its old frame 0.8 for one block and then deletes it.

| mode     | old slots                              | first-block weight | decay rates         | deleted after |
|----------|----------------------------------------|--------------------|---------------------|---------------|
| smooth   | recall frame of the smooth chain's first scene + 2 last frames | 1.0 | 0.80..0.95 per position | 5 blocks |
| hard cut | recall frame of the previous scene     | 0.8                | 1.0                 | 1 block       |
| recall   | recall frame of the best-matching earlier scene | 1.0       | 0.55..0.90 per position | 5 blocks |

Which old frame a transition carries (official defaults, old-memory source "compress"; ``CarriedFrames``):
* smooth: the recall frame of the FIRST scene of the current run of smooth transitions (the "smooth
  anchor", reset by every hard cut or recall), else the newest recall frame;
* hard cut: the newest recall frame (the previous scene's);
* recall: the recall frame of the pool entry most similar to the new prompt (``memory.routing``), or the
  scene the user named (``memory.scene_pool.SceneRegistry.choose``).

Who changes what: ``enter_scene`` decides and asks the layer to restart (``EchoLayerMemory.restart_scene``,
its own slot operations) and the layer's decay to begin (``OldMemoryDecay.begin``); ``CarriedFrames`` (owned
by ``EchoMemoryState``) changes only through its own methods.
"""

from __future__ import annotations

import torch

from .config import DecayTarget, EchoMemoryConfig, ModeConfig, OldMemorySource, SceneMemoryError, Transition
from .hierarchical_memory import EchoLayerMemory
from .scene_pool import LayerFrames
from .state import SceneInfo


def check_entry(scene: SceneInfo, index: int) -> None:
    """Refuse a scene after the first that has no transition, or names a recall target it cannot use."""
    mode = scene.entry
    if mode is None:
        raise SceneMemoryError(f"scene {index + 1} has no transition; choose smooth, hard cut, recall or auto")
    if scene.recall_target is not None and mode not in (Transition.RECALL, Transition.AUTO):
        raise SceneMemoryError(f"scene {index + 1} names a recall target but is entered by {mode.value}")


def enter_scene(layer: EchoLayerMemory, mode: Transition, cfg: ModeConfig,
                old_frame: tuple[torch.Tensor, torch.Tensor] | None, jump: int, scene_start: int) -> int:
    """Switch one layer to a new scene starting at absolute frame ``scene_start``; returns the old slots kept."""
    p = layer.frame_tokens
    recent = min(cfg.old_recent_frames, layer.local_end) if mode is Transition.SMOOTH else 0
    kept = layer.restart_scene(old_frame, recent, scene_start, jump)
    decay = cfg.decay
    recall_tokens = p if old_frame is not None else 0
    recent_tokens = recent * p
    if mode is Transition.SMOOTH:
        start, count = {DecayTarget.OLD_RECENT: (recall_tokens, recent_tokens),
                        DecayTarget.OLD_RECALL: (0, recall_tokens),
                        DecayTarget.OLD_MEMORY: (0, recall_tokens + recent_tokens)}[decay.target]
        layer.decay.begin(decay, start, count, evict_tokens=recall_tokens + recent_tokens)
    elif recall_tokens and decay.target is DecayTarget.OLD_MEMORY:
        layer.decay.begin(decay, 0, recall_tokens, evict_tokens=recall_tokens, first_weight=decay.first_block_weight)
    return kept


class CarriedFrames:
    """The per-layer frames a later switch may carry, as the scenes so far left them: the latest scene's
    first frame ("select") and the first select / recall frame of the current smooth chain.

    What is recorded follows from the config alone, not from the transitions a script happens to use: the
    shots of a video then leave the same memory whatever comes after them, so a later job can append shots
    (or change later ones) and reuse them.
    """

    BOUNDARY = ("scene_select", "smooth_select", "smooth_recall", "pending_smooth_select", "pending_smooth_recall")
    """What a shot boundary keeps (``boundary_fields`` / ``resume``)."""

    def __init__(self, config: EchoMemoryConfig):
        modes = list(config.modes.values())
        self.needs_recall_frames = any(m.use_old_memory and m.old_memory_source is OldMemorySource.COMPRESS
                                       for m in modes)
        """Scenes record recall frames (some transition carries one)."""
        self.keep_select = any(m.old_memory_source is OldMemorySource.SELECT or m.decay.target is
                               DecayTarget.OLD_RECENT for m in modes)
        """Scenes keep their first frame in the pool (some transition reads it)."""
        self.scene_select: LayerFrames | None = None  # first frame of the latest scene (per layer)
        self.smooth_select: LayerFrames | None = None
        self.smooth_recall: LayerFrames | None = None
        self.pending_smooth_select = True
        self.pending_smooth_recall = True

    @property
    def records_select(self) -> bool:
        """Scenes keep their first frame here (for the pool, or as the carried frame without recall frames)."""
        return self.keep_select or not self.needs_recall_frames

    def note_select(self, frames: LayerFrames) -> None:
        """The first frame of the scene that just ran its first block."""
        self.scene_select = frames
        if self.pending_smooth_select:
            self.smooth_select, self.pending_smooth_select = frames, False

    def note_recall(self, frames: LayerFrames) -> None:
        """The recall frame of the scene that just ended."""
        if self.pending_smooth_recall:
            self.smooth_recall, self.pending_smooth_recall = frames, False

    def entered(self, mode: Transition) -> None:
        """A scene was entered by ``mode``: a hard cut or a recall starts a new smooth chain."""
        if mode is not Transition.SMOOTH:
            self.smooth_select = self.smooth_recall = None
            self.pending_smooth_select = self.pending_smooth_recall = True

    def frames_for(self, mode: Transition, source: OldMemorySource, newest_recall: LayerFrames | None,
                   scene: int) -> LayerFrames | None:
        """The frame a smooth transition or a hard cut into scene ``scene`` carries (recalls and re-sinks are
        chosen elsewhere); ``newest_recall``: the pool's newest recall frame."""
        if mode is Transition.SMOOTH:
            if source is OldMemorySource.COMPRESS:
                return self.smooth_recall or newest_recall or self.smooth_select or self.scene_select
            return self.smooth_select or self.scene_select
        if source is OldMemorySource.SELECT:
            return self.scene_select
        if newest_recall is None:
            raise SceneMemoryError(f"scene {scene + 1}: no recall frame of an earlier scene to carry")
        return newest_recall

    def fields(self) -> dict:
        return {name: getattr(self, name) for name in self.BOUNDARY}

    def resume(self, fields: dict) -> None:
        self.scene_select, self.smooth_select, self.smooth_recall = (fields["scene_select"], fields["smooth_select"],
                                                                     fields["smooth_recall"])
        self.pending_smooth_select = fields["pending_smooth_select"]
        self.pending_smooth_recall = fields["pending_smooth_recall"]
