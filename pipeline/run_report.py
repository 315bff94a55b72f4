"""The run report of a multi-shot video: per shot its blocks, transition, recalled scene and similarity,
memory decay, cache occupancy and time (what the sampler node returns as text/JSON and the timeline shows).

Built from the plan (shots and their block counts) and what the rollout reported: the scene switches
(``RolloutResult.switches``, one per shot after the first) and one :class:`~.rollout.BlockEvent` per block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .latents import video_frames
from .rollout import BlockEvent, RolloutResult, RolloutSettings
from .scene_list import TRANSITION_NAMES, SceneList

MODE_NAMES = {t.value: name for t, name in TRANSITION_NAMES.items()}
"""Transition modes by value ("hardcut", as memory.config.TransitionMode spells them) as artists read them."""


def mode_name(mode: str | None) -> str | None:
    return MODE_NAMES.get(mode, mode)


@dataclass
class BlockLog:
    """Collects what the report needs from the rollout's per-block events (pass ``add`` as ``on_block``)."""

    seconds: list[float] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    old_weights: list[list[float] | None] = field(default_factory=list)

    def add(self, event: BlockEvent) -> None:
        self.seconds.append(event.seconds)
        self.slots.append(event.memory.slots)
        self.old_weights.append(event.memory.notes.get("old_weights"))


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def plan_entries(scenes: SceneList, blocks: Sequence[int]) -> list[dict]:
    """The planned timeline: per shot its label, seconds, blocks, first block and transition."""
    out, first = [], 0
    for i, (shot, n) in enumerate(zip(scenes.shots, blocks, strict=True)):
        entry = shot.scene.entry
        out.append({"index": i, "label": scenes.title(i), "seconds": shot.scene.duration, "blocks": n,
                    "first_block": first, "transition": "start" if entry is None else TRANSITION_NAMES[entry]})
        first += n
    return out


def build_report(scenes: SceneList, blocks: Sequence[int], settings: RolloutSettings, fps: float,
                 preset: str, options: dict, result: RolloutResult, log: BlockLog,
                 notes: Sequence[str] = ()) -> dict:
    """The report as plain JSON-able data (``report_text`` renders it for people)."""
    switches = {s["scene"]: s for s in result.switches if "scene" in s}
    shots = []
    for entry in plan_entries(scenes, blocks):
        i, first, n = entry["index"], entry["first_block"], entry["blocks"]
        switch = switches.get(i, {})
        weights = [w for ws in log.old_weights[first:first + n] if ws for w in ws]
        shot = scenes.shots[i].scene
        shots.append({
            **entry,
            "prompt": shot.prompt,
            "mode": mode_name(switch.get("mode")) if i else "start",
            "recalled": switch.get("recalled"),
            "similarity": _round(switch.get("similarity")),
            "rope_jump": switch.get("jump"),
            "decay": [_round(min(weights)), _round(max(weights))] if weights else None,
            "cache_frames": log.slots[first + n - 1] if len(log.slots) >= first + n else None,
            "seconds_taken": _round(sum(log.seconds[first:first + n]), 3),
        })
    taken = sum(log.seconds)
    frames = video_frames(settings.num_frames)
    return {
        "video": {"shots": len(shots), "seconds": _round(frames / fps, 3), "video_frames": frames,
                  "latent_frames": settings.num_frames, "blocks": settings.num_blocks, "fps": fps,
                  "width": settings.width, "height": settings.height, "seed": settings.seed,
                  "steps": len(settings.steps), "shift": settings.shift},
        "memory": {"preset": preset, "options": dict(options), "cache_mib": _round(result.cache_bytes / 2**20, 2),
                   "storage_mib": _round(result.storage_bytes / 2**20, 2),
                   "pool_scenes": len(result.pool) if result.pool is not None else 0},
        "shots": shots,
        "generation_seconds": _round(taken, 3),
        "video_fps": _round(frames / taken, 3) if taken else None,
        "notes": list(notes),
    }


def timeline(report: dict) -> dict:
    """What the frontend's timeline widget draws after a run."""
    keys = ("index", "label", "seconds", "blocks", "first_block", "transition", "mode", "recalled", "similarity",
            "seconds_taken")
    return {"total_blocks": report["video"]["blocks"], "scenes": [{k: s[k] for k in keys} for s in report["shots"]]}


def report_text(report: dict) -> str:
    """A short human-readable report (one line per shot), followed by the JSON."""
    v, m = report["video"], report["memory"]
    lines = [f"{v['shots']} shots, {v['seconds']:g} s ({v['video_frames']} frames at {v['fps']:g} fps, "
             f"{v['width']}x{v['height']}), {v['blocks']} blocks, seed {v['seed']}; memory {m['preset']}: "
             f"cache {m['cache_mib']} MiB, {m['pool_scenes']} scenes in the pool"]
    for s in report["shots"]:
        how = s["mode"] if s["mode"] == s["transition"] or s["transition"] == "start" else \
            f"{s['transition']} -> {s['mode']}"
        if s["recalled"] is not None:
            how += f" (recalled {s['recalled']}, similarity {s['similarity']:.2f})"
        decay = f", decay {s['decay'][0]:.2f}-{s['decay'][1]:.2f}" if s["decay"] else ""
        lines.append(f"{s['index'] + 1}. {s['label']}: {s['seconds']:g} s, {s['blocks']} blocks, {how}{decay}, "
                     f"cache {s['cache_frames']} frames, {s['seconds_taken']:.2f} s")
    if report["generation_seconds"]:
        lines.append(f"generated in {report['generation_seconds']:.1f} s ({report['video_fps']:.2f} video frames/s)")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n\n" + json.dumps(report, indent=1)
