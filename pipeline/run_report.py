"""The run report of a multi-shot video: per shot its blocks, transition, recalled scene and similarity,
memory decay, cache occupancy and time (what the sampler node returns as text/JSON and the timeline shows).

Built from the run plan (shots, their block counts and seeds) and what the rollout reported: the scene
switches (``RolloutResult.switches``, one per shot after the first), the memory's report and the time of
every block, and which shots were reused from a shot boundary instead of generated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .latents import video_frames
from .noise import PER_SHOT
from .rollout import RolloutResult
from .run_plan import RunPlan
from .scene_list import SceneList
from .scene_script import Transition


def mode_name(mode: str | None) -> str | None:
    """A transition a memory reported by value ("hardcut") as artists read it ("hard cut")."""
    try:
        return Transition(mode).label
    except ValueError:
        return mode


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def plan_entries(scenes: SceneList, blocks: Sequence[int]) -> list[dict]:
    """The planned timeline: per shot its label, seconds, blocks, first block and transition."""
    out, first = [], 0
    for i, (shot, n) in enumerate(zip(scenes.shots, blocks, strict=True)):
        entry = shot.scene.entry
        out.append({"index": i, "label": scenes.title(i), "seconds": shot.scene.duration, "blocks": n,
                    "first_block": first, "transition": "start" if entry is None else entry.label})
        first += n
    return out


def build_report(plan: RunPlan, result: RolloutResult) -> dict:
    """The report as plain JSON-able data (``report_text`` renders it for people)."""
    switches = {s["scene"]: s for s in result.switches if "scene" in s}
    settings, blocks = plan.settings, plan.blocks
    reports, seconds = result.block_reports, result.block_seconds
    shots = []
    for entry in plan_entries(plan.shots, blocks):
        i, first, n = entry["index"], entry["first_block"], entry["blocks"]
        done = i < result.shots_done
        switch = switches.get(i, {})
        weights = [w for r in reports[first:first + n] if r.notes.get("old_weights") for w in r.notes["old_weights"]]
        shot = plan.shots.shots[i].scene
        shots.append({
            **entry,
            "prompt": shot.prompt,
            "seed": plan.seeds[i] if settings.noise == PER_SHOT else None,
            "state": ("reused" if i < result.reused_shots else "generated") if done else "not generated",
            "mode": (mode_name(switch.get("mode")) if i else "start") if done else None,
            "recalled": switch.get("recalled"),
            "similarity": _round(switch.get("similarity")),
            "rope_jump": switch.get("jump"),
            "decay": [_round(min(weights)), _round(max(weights))] if weights else None,
            "cache_frames": reports[first + n - 1].slots if done else None,
            "seconds_taken": _round(sum(seconds[first:first + n]), 3) if done else None,
        })
    generated = seconds[result.reused_blocks:]
    taken = sum(generated)
    reused = result.reused_blocks * settings.frames_per_block
    frames = video_frames(result.latents.shape[1])
    planned = video_frames(settings.num_frames)
    report = {
        "video": {"shots": len(shots), "seconds": _round(frames / plan.fps, 3), "video_frames": frames,
                  "latent_frames": result.latents.shape[1], "blocks": settings.num_blocks, "fps": plan.fps,
                  "width": settings.width, "height": settings.height, "seed": settings.seed,
                  "noise": settings.noise, "steps": len(settings.steps), "shift": settings.shift},
        "memory": {"preset": plan.choice.preset, "options": plan.choice.options(),
                   "cache_mib": _round(result.cache_bytes / 2**20, 2),
                   "storage_mib": _round(result.storage_bytes / 2**20, 2),
                   "pool_scenes": len(result.pool) if result.pool is not None else 0},
        "shots": shots,
        "reuse": {"reused_shots": result.reused_shots, "generated_shots": result.shots_done - result.reused_shots,
                  "reused_blocks": result.reused_blocks, "generated_blocks": len(generated),
                  "seconds_saved": _round(sum(seconds[:result.reused_blocks]), 3)},
        "generation_seconds": _round(taken, 3),
        "video_fps": _round((frames - video_frames(reused)) / taken, 3) if taken else None,
        "notes": list(plan.notes),
    }
    if result.shots_done < len(shots):
        report["notes"].append(f"stopped after shot {result.shots_done} of {len(shots)} ({frames} of {planned} "
                               "video frames); queue again to go on from there")
    return report


def timeline(report: dict) -> dict:
    """What the frontend's timeline widget draws after a run."""
    keys = ("index", "label", "seconds", "blocks", "first_block", "transition", "mode", "recalled", "similarity",
            "seconds_taken", "state")
    return {"total_blocks": report["video"]["blocks"], "scenes": [{k: s[k] for k in keys} for s in report["shots"]]}


def report_text(report: dict) -> str:
    """A short human-readable report (one line per shot), followed by the JSON."""
    v, m = report["video"], report["memory"]
    lines = [f"{v['shots']} shots, {v['seconds']:g} s ({v['video_frames']} frames at {v['fps']:g} fps, "
             f"{v['width']}x{v['height']}), {v['blocks']} blocks, seed {v['seed']} ({v['noise']} noise); "
             f"memory {m['preset']}: "
             f"cache {m['cache_mib']} MiB, {m['pool_scenes']} scenes in the pool"]
    for s in report["shots"]:
        if s["state"] == "not generated":
            lines.append(f"{s['index'] + 1}. {s['label']}: {s['seconds']:g} s, {s['blocks']} blocks, not generated")
            continue
        how = s["mode"] if s["mode"] == s["transition"] or s["transition"] == "start" else \
            f"{s['transition']} -> {s['mode']}"
        if s["recalled"] is not None:
            how += f" (recalled {s['recalled']}, similarity {s['similarity']:.2f})"
        decay = f", decay {s['decay'][0]:.2f}-{s['decay'][1]:.2f}" if s["decay"] else ""
        lines.append(f"{s['index'] + 1}. {s['label']}: {s['seconds']:g} s, {s['blocks']} blocks, {how}{decay}, "
                     f"cache {s['cache_frames']} frames, {s['seconds_taken']:.2f} s"
                     + (" (reused)" if s["state"] == "reused" else ""))
    r = report["reuse"]
    if r["reused_shots"]:
        lines.append(f"reused shots 1-{r['reused_shots']} ({r['reused_blocks']} blocks, {r['seconds_saved']:.1f} s "
                     f"saved); generated {r['generated_shots']} shot(s)")
    if report["generation_seconds"]:
        lines.append(f"generated in {report['generation_seconds']:.1f} s ({report['video_fps']:.2f} video frames/s)")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n\n" + json.dumps(report, indent=1)
