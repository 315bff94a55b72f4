"""Benchmark of the block-wise rollout: per-block time, time to the first block and peak memory, per preset.

    python bench/rollout.py                 # tiny model on the CPU, 480x832, a six-shot script
    python bench/rollout.py --full          # full Wan2.1-1.3B shapes, random bf16 weights (needs a GPU)
    python bench/rollout.py --markdown docs/BENCHMARKS.md   # also write the tables there

Every run is a fresh process (so the peak memory of one run is not another's), on the same random weights
and the same six-shot script (smooth, hard cut, recall, smooth, hard cut; a last shot long enough to fill
the 21-frame cache). Runs: each preset on the script; echo-forcing on the script with every shot twice as
long (memory must not grow with length); with ``--full`` also a 60 s six-shot video (the peak-memory
target); with ``--compile`` echo-forcing with ``torch.compile`` of the layer functions.

Random weights: the numbers measure the machinery (DiT forwards, cache, RoPE, memory), not picture quality.
Text encoding and VAE decoding are not part of the rollout and are not included (the pack uses ComfyUI's
text encoder and VAE). On the GPU memory is ``torch.cuda.max_memory_allocated``; on the CPU it is the
resident set size after each block and the process's high-water mark (Linux). Tests never run this.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchmark_report import commit, hardware, write_section

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import make_policy, preset_names
from echo_forcing.models import WAN21_T2V_1_3B, CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import BlockEvent, RolloutSettings, parse_scene_script, rollout, scenes_for_script

TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
PARITY = WanConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=1, text_dim=64, in_dim=4, out_dim=4)
"""One layer of the real 12 x 128 heads (the parity fixtures' model): the CPU side-by-side with the official code."""
MODELS = {"tiny": TINY, "parity": PARITY, "full": WAN21_T2V_1_3B}
FPS = 16
SHOTS = (
    ("A lighthouse keeper in a yellow raincoat climbs the spiral stairs at dusk", ""),
    ("The keeper reaches the lamp room at the top of the white lighthouse", "#"),  # hard cut to the market
    ("A crowded night market with red paper lanterns and steam rising from food stalls", "@"),  # recall next
    ("Back in the white lighthouse, the keeper in the yellow raincoat lights the great lamp", ""),
    ("The lamp sweeps across the dark sea as waves crash below", "#"),
    ("A fishing boat returns to a quiet harbour at dawn", ""),
)
"""Six shots: 2 smooth, 3 hard cut, 4 recall (of shot 1/2), 5 smooth, 6 hard cut."""
SCRIPT_SECONDS = (1.5, 1.5, 1.5, 1.5, 1.5, 6.0)
"""2, 2, 2, 2, 2 and 8 blocks (54 latent frames, 13 s): the last shot fills the 21-frame cache."""
MINUTE_SECONDS = (10.0,) * 6
"""The 60 s six-shot video of the peak-memory target."""
GB = 1e9
MMAP_THRESHOLD = 1 << 20
"""CPU runs: glibc serves allocations of 1 MiB and more with mmap and returns them on free. By default its
threshold grows up to 32 MiB as tensors are freed, large tensors then come from the heap, and the peak RSS
depends on fragmentation (+-5 % between runs of the same video); a fixed threshold makes RSS follow the memory
the run actually holds."""
CACHE_FRAMES = 21
"""The working cache of both default presets; a block that ends with this many frames attended a full cache."""


def six_shot_script(seconds: tuple[float, ...]) -> str:
    """The benchmark's scene script (official format) with these shot durations."""
    return " | ".join(f"{prompt} [{s:g}s{marker}]" for (prompt, marker), s in zip(SHOTS, seconds, strict=True))


def _proc_status(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _stand_in(cfg: WanConfig):
    return lambda prompts: stand_in_text_embedding(list(prompts), cfg.text_dim)


# ---- one run, in its own process -------------------------------------------------------------------------------

def run_once(job: dict) -> dict:
    """Build the model, run one preset on one script and measure it (called in a fresh process)."""
    full = job["full"]
    device = torch.device("cuda" if full else "cpu")
    cfg, dtype = MODELS[job["model"]], torch.bfloat16 if full else torch.float32
    dit = WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=0, dtype=dtype, device=device), dtype=dtype,
                                 device=device)
    model = CausalWan(dit, dtype=dtype, device=device, compile=job["compile"])
    scenes = parse_scene_script(six_shot_script(tuple(job["seconds"])))
    encode = _stand_in(cfg)
    embeddings = encode([s.prompt for s in scenes])
    texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts, fps=FPS)
    options = {"encode_text": encode} if job["preset"].startswith("echo") else {}
    policy = make_policy(job["preset"], **options)
    settings = RolloutSettings(num_frames=frames, height=job["height"], width=job["width"], seed=0)
    cuda = device.type == "cuda"
    rows = []
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    def on_block(event: BlockEvent) -> None:
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _proc_status("VmRSS")
        rows.append({"block": event.index, "seconds": event.seconds, "memory_mib": memory, "scene": event.scene,
                     "cache_frames": event.memory.slots})
        print(f"  {job['label']} block {event.index:2d}/{event.total} (shot {event.scene + 1}): "
              f"{event.seconds * 1000:9.1f} ms  {'peak GPU' if cuda else 'RSS'} {memory:9.1f} MiB", flush=True)

    started = time.perf_counter()
    with torch.inference_mode():
        result = rollout(model, plan, settings, policy, on_block=on_block)
    total = time.perf_counter() - started
    full_rows = [r for r in rows if r["cache_frames"] >= CACHE_FRAMES] or rows[-1:]
    last = [r["seconds"] for r in full_rows[-3:]]  # up to the last 3 blocks that attended a full cache
    per_block = sum(last) / len(last)
    video = 4 * frames - 3
    return {
        **job, "model": cfg.signature, "dtype": str(dtype).replace("torch.", ""), "latent_frames": frames,
        "blocks": [s.num_blocks for s in plan], "rows": rows, "first_block_s": rows[0]["seconds"],
        "full_cache_blocks": [r["block"] for r in full_rows[-3:]],
        "full_cache_block_s": per_block, "fps": 4 * settings.frames_per_block / per_block,
        "overall_fps": video / total, "total_s": total, "video_frames": video,
        "cache_mib": result.cache_bytes / 2**20, "storage_mib": result.storage_bytes / 2**20,
        "output_mib": result.latents.numel() * result.latents.element_size() / 2**20,
        "peak_mib": max(r["memory_mib"] or 0 for r in rows) if cuda else _proc_status("VmHWM"),
        "switches": [s.get("mode", "new prompt") for s in result.switches],
    }


def spawn(job: dict) -> dict:
    """Run ``job`` in a fresh Python process and return its measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        if not job["full"]:  # measure what the run holds, not what glibc's heap keeps after frees (see below)
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
        subprocess.run([sys.executable, __file__, "--worker", json.dumps(job), "--worker-out", str(out)],
                       check=True, env=env)
        return json.loads(out.read_text())


# ---- report ---------------------------------------------------------------------------------------------------

def _mib(value: float) -> str:
    return f"{value:,.0f} MiB"


def markdown(results: list[dict], device: torch.device, command: str) -> str:
    full = device.type == "cuda"
    base = next((r["full_cache_block_s"] for r in results if r["label"] == "self-forcing"), None)
    lines = [
        f"Measured {datetime.date.today().isoformat()} at commit `{commit()}` on {hardware(device)}, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `{command}`. Model: {results[0]['model']}, {results[0]['dtype']}, random weights, "
        f"{results[0]['width']}x{results[0]['height']}, 4 steps. Script: six shots (smooth, hard cut, recall, "
        "smooth, hard cut), each run in a fresh process. *Full-cache block* = mean of the last 3 blocks (at most) "
        "that attended a full 21-frame cache (blocks listed in brackets); *video FPS* = 12 video frames / that "
        "time; *overall FPS* = "
        "all video frames / the whole rollout (switches, warm-up and the first, cheaper blocks included). Text "
        "encoding and VAE decoding are not included. "
        + ("Peak memory: `torch.cuda.max_memory_allocated` over the run (weights included)." if full else
           "Peak memory: the process's peak resident set size (weights, Python and torch included; glibc's "
           f"`MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}`, so freed tensors leave the RSS). It includes the output "
           "latents (in brackets), a float32 buffer whose pages are touched as each block is written: the RSS "
           "rises by one block of latents per block (1.14 MiB at 480x832) for as long as the video runs."), "",
        "| run | latent frames (blocks per shot) | first block | full-cache block | vs self-forcing | video FPS "
        "| overall FPS | memory state on device | off device | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r['full_cache_block_s'] / base:.3f}x" if base else "-"
        blocks = "+".join(str(b) for b in r["blocks"])
        peak = f"{r['peak_mib'] * 2**20 / GB:.2f} GB" if full else f"{_mib(r['peak_mib'])} ({_mib(r['output_mib'])})"
        which = ", ".join(map(str, r["full_cache_blocks"]))
        lines.append(
            f"| {r['label']} | {r['latent_frames']} ({blocks}) | {r['first_block_s'] * 1000:,.0f} ms | "
            f"{r['full_cache_block_s'] * 1000:,.0f} ms ({which}) | {ratio} | {r['fps']:.2f} | {r['overall_fps']:.2f} | "
            f"{_mib(r['cache_mib'])} | {_mib(r['storage_mib'])} | {peak} |")
    lines += ["", *targets(results, full), "", "Per block (ms / MiB / cache frames after the block):", ""]
    for r in results:
        cells = ", ".join(f"{row['seconds'] * 1000:.0f}/{row['memory_mib'] or 0:.0f}/{row['cache_frames']}"
                          for row in r["rows"])
        lines.append(f"- {r['label']}: {cells}")
    return "\n".join(lines) + "\n"


def targets(results: list[dict], full: bool) -> list[str]:
    """The issue's targets against these runs (met / missed), as markdown bullet lines."""
    by = {r["label"]: r for r in results}
    echo, base = by.get("echo-forcing"), by.get("self-forcing")
    longer = by.get("echo-forcing, shots 2x as long")
    out = ["Targets:", ""]

    def line(text: str, ok: bool) -> None:
        out.append(f"- {text}: **{'met' if ok else 'missed'}**")

    if echo and base:
        ratio = echo["full_cache_block_s"] / base["full_cache_block_s"]
        bound = 1.05 if full else 1.10
        line(f"echo-forcing full-cache block time {ratio:.3f}x self-forcing's (target <= {bound:.2f}x)",
             ratio <= bound)
    if echo and longer:
        growth = longer["peak_mib"] / echo["peak_mib"] - 1
        line(f"peak memory of a video twice as long ({longer['latent_frames']} vs {echo['latent_frames']} latent "
             f"frames): {growth * 100:+.1f} % (target within 5 %)", abs(growth) <= 0.05)
        if not full:  # the output latents are in host memory: they grow with the video by nature
            extra = longer["output_mib"] - echo["output_mib"]
            working = (longer["peak_mib"] - longer["output_mib"]) / (echo["peak_mib"] - echo["output_mib"]) - 1
            out.append(f"  - of which the output latents themselves (float32, filled block by block): "
                       f"+{extra:,.1f} MiB; peak less the output latents: {working * 100:+.1f} %")
    if full and echo:
        line(f"echo-forcing video FPS {echo['fps']:.2f} (target >= 17 on an H100)", echo["fps"] >= 17)
    minute = by.get("echo-forcing, 60 s")
    if minute:
        peak = minute["peak_mib"] * 2**20 / GB
        line(f"peak GPU memory of the 60 s six-shot video {peak:.2f} GB (target <= 12 GB)", peak <= 12)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        args.worker_out.write_text(json.dumps(run_once(json.loads(args.worker))))
        return 0
    if args.full and not torch.cuda.is_available():
        print("--full needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.full else "cpu")
    jobs = _jobs(args)
    print(f"{len(jobs)} runs on {hardware(device)}")
    results = []
    for job in jobs:
        print(f"{job['label']}: {six_shot_script(job['seconds'])[:80]}...", flush=True)
        results.append(spawn(job))
    text = markdown(results, device, _command(args))
    print()
    print(text)
    if args.markdown:
        title = "GPU, full 1.3B shapes" if args.full else f"CPU, {args.model} model"
        write_section(args.markdown, title, text)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full Wan2.1-1.3B shapes in bf16 (needs a GPU)")
    parser.add_argument("--model", choices=("tiny", "parity"), default="tiny",
                        help="CPU model: tiny (2 layers of 2 heads) or parity (1 layer of the real 12 heads, the "
                             "shape of the side-by-side with the official code)")
    parser.add_argument("--presets", default="self-forcing,echo-forcing",
                        help=f"comma-separated cache presets, or 'all' ({', '.join(preset_names())})")
    parser.add_argument("--compile", action="store_true", help="also run echo-forcing with torch.compile")
    parser.add_argument("--no-long", action="store_true", help="skip the twice-as-long and 60 s runs")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--markdown", type=Path, help="write the tables into this markdown file (section replaced)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser


def _jobs(args: argparse.Namespace) -> list[dict]:
    """The runs the options ask for: every preset on the script, then the compiled and the longer runs."""
    presets = preset_names() if args.presets == "all" else [p.strip() for p in args.presets.split(",")]
    common = {"full": args.full, "model": "full" if args.full else args.model, "height": args.height,
              "width": args.width, "compile": False}
    jobs = [{**common, "label": p, "preset": p, "seconds": SCRIPT_SECONDS} for p in presets]
    if args.compile:
        jobs.append({**common, "label": "echo-forcing, torch.compile", "preset": "echo-forcing",
                     "seconds": SCRIPT_SECONDS, "compile": True})
    if not args.no_long:
        jobs.append({**common, "label": "echo-forcing, shots 2x as long", "preset": "echo-forcing",
                     "seconds": tuple(2 * s for s in SCRIPT_SECONDS)})
        if args.full:
            jobs.append({**common, "label": "echo-forcing, 60 s", "preset": "echo-forcing",
                         "seconds": MINUTE_SECONDS})
    return jobs


def _command(args: argparse.Namespace) -> str:
    """The command line that repeats this benchmark (its options that differ from the defaults)."""
    command = "python bench/rollout.py"
    if args.full:
        command += " --full"
    if args.compile:
        command += " --compile"
    if args.presets != "self-forcing,echo-forcing":
        command += f" --presets {args.presets}"
    if args.model != "tiny" and not args.full:
        command += f" --model {args.model}"
    if args.no_long:
        command += " --no-long"
    return command


if __name__ == "__main__":
    sys.exit(main())
