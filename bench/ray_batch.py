"""Throughput of ``batch`` on a local Ray instance against the single-process ``batch``, side by side in one run.

    python bench/ray_batch.py                          # 8 tiny jobs, 2 Ray workers, 2 CPUs
    python bench/ray_batch.py --markdown docs/BENCHMARKS.md

Both runs render the same prompt file (8 six-shot lines: 4 pairs whose lines share their first shot, so the
dispatch's prefix reuse is exercised) with the built-in tiny model at the given size, each into a fresh output
folder, and time the whole command's work: the plan, the model loads, the renders and the writes (the Ray run
also starts and stops its local instance). The videos must come out byte for byte the same; the model loads are
counted from the workers' reports. Three runs: the single process with torch's threads (what a user runs), the
single process with 1 thread (what each Ray CPU worker gets, so the bits must match it), and Ray. On 2 CPUs the
ratio shows the cost of Ray's processes against one process, not a GPU cluster's scaling. Tests never run this.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from benchmark_report import commit, write_section

from echo_forcing.batch.headless import LATENTS_FILE, RenderRecipe
from echo_forcing.batch.ray_pool import RayPool
from echo_forcing.batch.render_batch import LocalPool, run_batch

SECTION = "Batch on Ray (local instance), CPU"
SHOTS = ("rain on a neon street at night", "a cafe at dawn", "a windy sea cliff", "an old bookshop",
         "a tram at sunset", "fireworks over a rooftop")


def prompt_file(path: Path, lines: int, seconds: float) -> Path:
    """``lines`` six-shot scripts; lines 2k and 2k + 1 share their first shot."""
    rows = []
    for i in range(lines):
        first = f"a traveller arrives in town number {i // 2}"
        rest = [f"{shot}, take {i}" for shot in SHOTS[1:]]
        rows.append(" | ".join(f"{s} [{seconds:g}s]" for s in [first, *rest]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def timed(prompts: Path, out: Path, recipe: RenderRecipe, pool_factory) -> tuple[float, list[str]]:
    lines: list[str] = []
    started = time.perf_counter()
    results = run_batch(prompts, out, recipe, pool_factory, log=lines.append, bars=False)
    seconds = time.perf_counter() - started
    failed = [r for r in results if r.status != "done"]
    if failed:
        raise SystemExit(f"lines failed: {failed}")
    return seconds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per shot")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    recipe = RenderRecipe(width=args.width, height=args.height, threads=1)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prompts = prompt_file(root / "bench.txt", args.jobs, args.seconds)
        runs = {}
        for tag, r in (("single process, all threads", replace(recipe, threads=threads)),
                       ("single process, 1 thread", recipe)):
            runs[tag] = timed(prompts, root / tag, r, lambda r=r: LocalPool(r, log=lambda t: None))
        torch.set_num_threads(threads)
        runs["ray"] = timed(prompts, root / "ray", recipe, lambda: RayPool(recipe, workers=args.workers,
                                                                         log=lambda t: None))
        reference = root / "single process, 1 thread"
        names = sorted(p.name for p in reference.iterdir() if p.is_dir())
        same = all((reference / n / LATENTS_FILE).read_bytes() == (root / "ray" / n / LATENTS_FILE).read_bytes()
                   for n in names)
    base = runs["single process, all threads"][0]
    blocks = args.jobs * 6 * round(args.seconds * 16 / 12)
    rows = []
    for tag, label, loads_default in (
            ("single process, all threads", f"single process, {threads} threads", "1"),
            ("single process, 1 thread", "single process, 1 thread", "1"),
            ("ray", f"Ray, local instance, {args.workers} workers x 1 thread", "?")):
        seconds, log = runs[tag]
        loads = next((line.split(":")[1].split("(")[0].strip() for line in log if line.startswith("model loads")),
                     loads_default)
        reused = sum("reused" in line for line in log)
        rows.append(f"| {label} | {seconds:.1f} s | {60 * args.jobs / seconds:.1f} | {base / seconds:.2f}x | "
                    f"{loads} | {reused} lines |")
    text = (f"Measured {datetime.date.today()} at commit `{commit()}` on {platform.machine()} "
            f"({os.cpu_count()} cores), torch {torch.__version__}, Python {platform.python_version()}. Command: "
            f"`python bench/ray_batch.py --jobs {args.jobs} --workers {args.workers} --width {args.width} "
            f"--height {args.height}`. {args.jobs} six-shot lines ({args.seconds:g} s a shot, {blocks} blocks in "
            "all, lines 2k and 2k+1 share their first shot), the built-in tiny model; each run renders into a fresh "
            "folder, the Ray run starting and stopping its local instance.\n\n"
            "| run | wall time | jobs per minute | vs single process | model loads | lines after a reused shot |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Ray's videos byte for byte those of the 1-thread single process: **{'yes' if same else 'NO'}**. "
            "On the CPU the rounding of the larger products depends on torch's thread count, so the all-threads "
            "run differs from both in the last bits.\n")
    print(text)
    if args.markdown:
        write_section(args.markdown, SECTION, text)


if __name__ == "__main__":
    main()
