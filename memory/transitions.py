"""Transitions: what one layer's cache keeps when a new scene starts (SPEC §3.8, §4.5; official ``KV_scene_control``).

At the first block of a new scene every layer:
1. writes the carried old frame (the Scene Recall Frame of the scene chosen by the mode; see
   ``memory.echo_memory``) into slot 0 and, for a smooth transition, the previous scene's last
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
"""

from __future__ import annotations

import torch

from .config import DecayTarget, ModeConfig, Transition
from .decay import start_decay
from .devices import to_device
from .hierarchical_memory import EchoLayerMemory
from .phase_compression import PhaseCalibration


def enter_scene(layer: EchoLayerMemory, mode: Transition, cfg: ModeConfig,
                old_frame: tuple[torch.Tensor, torch.Tensor] | None, jump: int, scene_start: int) -> int:
    """Switch one layer to a new scene starting at absolute frame ``scene_start``; returns the old slots kept."""
    p = layer.frame_tokens
    previous_end = layer.local_end
    write = 0
    recall_tokens = 0
    if old_frame is not None:
        k, v = old_frame
        layer.k[0, :p] = to_device(k, layer.device, layer.dtype)
        layer.v[0, :p] = to_device(v, layer.device, layer.dtype)
        write, recall_tokens = 1, p
    recent = min(cfg.old_recent_frames, previous_end) if mode is Transition.SMOOTH else 0
    if recent:
        src = slice((previous_end - recent) * p, previous_end * p)
        layer.k[:, write * p:(write + recent) * p] = layer.k[:, src].clone()
        layer.v[:, write * p:(write + recent) * p] = layer.v[:, src].clone()
        write += recent

    layer.local_end = write
    layer.history.clear()
    layer.calibration = PhaseCalibration(layer.heads, layer.head_dim, layer.device)
    layer.pool.clear()
    layer.pool.write(0, layer.k[:, :write * p], layer.v[:, :write * p])
    layer.scene_start, layer.timing_offset, layer.jump = scene_start, write, jump
    layer.weights.fill_(1.0)
    layer.decay_mask.zero_()
    layer.decay_rates.fill_(1.0)
    layer.decay_active, layer.decay_start, layer.decay_count = False, 0, 0
    layer.evict_steps = layer.evict_start = layer.evict_count = 0
    layer.weights_trivial = True

    decay = cfg.decay
    recent_tokens = recent * p
    if mode is Transition.SMOOTH:
        start, count = {DecayTarget.OLD_RECENT: (recall_tokens, recent_tokens),
                        DecayTarget.OLD_RECALL: (0, recall_tokens),
                        DecayTarget.OLD_MEMORY: (0, recall_tokens + recent_tokens)}[decay.target]
        start_decay(layer, decay, start, count, evict_tokens=recall_tokens + recent_tokens)
    elif recall_tokens and decay.target is DecayTarget.OLD_MEMORY:
        start_decay(layer, decay, 0, recall_tokens, evict_tokens=recall_tokens,
                    first_weight=decay.first_block_weight)
    layer.clear_scene_collection()
    return write
