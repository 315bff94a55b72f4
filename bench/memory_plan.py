"""The memory planner's figures per card size, and its predictions against the peaks CPU runs reach.

    python bench/memory_plan.py                                  # print both tables
    python bench/memory_plan.py --markdown docs/HARDWARE.md      # also write them there
    python bench/memory_plan.py --skip-measure                   # the planner table only (seconds)

The planner table comes from ``pipeline.memory_need`` on meta tensors (no weights, no GPU): Wan2.1-1.3B at
480x832 and 720x1280 and Wan2.1-14B at 480x832, a 60 s six-shot video, per-shot noise, the echo-forcing
preset; for each setting the device bytes by part, then per card size what ``kv_storage auto`` runs with.
A card's usable memory is its size less ``CARD_OVERHEAD`` (ComfyUI's reserve and the CUDA context).

The measured table runs ``tests/memory_peak_worker.py`` in fresh processes (the real 1.3B width with two
layers at 240x416, a shot that rolls its cache, a cut and a recall) and gives predicted / measured peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from benchmark_report import commit, hardware, write_section

from echo_forcing.memory import make_policy
from echo_forcing.models import WAN21_T2V_1_3B, WAN21_T2V_14B
from echo_forcing.pipeline.memory_need import MemoryNeed, largest_layer_bytes, memory_need, weight_bytes

GIB = 2**30
CARDS = (8, 12, 16, 24)
CARD_OVERHEAD = 0.9 * GIB
"""ComfyUI's reserve (0.4 GiB on Linux) plus a CUDA context and a desktop (about 0.5 GiB)."""
FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16
SHAPES = (("Wan2.1-1.3B", WAN21_T2V_1_3B, 480, 832), ("Wan2.1-1.3B", WAN21_T2V_1_3B, 720, 1280),
          ("Wan2.1-14B", WAN21_T2V_14B, 480, 832))
SETTINGS = (("bf16 weights, compute KV", BF16, "compute"), ("bf16 weights, fp8 KV", BF16, "fp8_e4m3"),
            ("fp8 weights, fp8 KV", FP8, "fp8_e4m3"))
MEASURED = (("echo-forcing", "compute", "bfloat16"), ("echo-forcing", "fp8_e4m3", "bfloat16"),
            ("echo-forcing", "compute", "float32"), ("self-forcing", "compute", "bfloat16"),
            ("longlive", "compute", "bfloat16"))
MID = {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 2, "text_dim": 64, "in_dim": 16, "out_dim": 16}
SCRIPT = "A cat on a roof [6s] | A dog in a park [1.5s#] | The cat on the roof again [1.5s@]"
ROOT = Path(__file__).resolve().parent.parent


def need(model, height: int, width: int, weights_dtype: torch.dtype, kv: str, seconds: float = 60.0) -> MemoryNeed:
    frames = int(seconds * 16 / 12) * 3
    grid = (height // 16, width // 16)
    return memory_need(model, BF16, make_policy("echo-forcing", kv_storage=kv), grid, frames=frames,
                       frames_per_block=3, latent_size=(height // 8, width // 8), noise="per-shot", shots=6,
                       weights=weight_bytes(model, weights_dtype))


def gb(n: float) -> str:
    return f"{n / GIB:.2f}"


def planner_table() -> str:
    lines = ["| model, size | setting | weights | cache | activations | text + RoPE | device total | streamed "
             "weights: device | host (RAM) |", "|---|---|---|---|---|---|---|---|---|"]
    choice = ["| model, size | " + " | ".join(f"{c} GB card" for c in CARDS) + " |",
              "|---|" + "---|" * len(CARDS)]
    for name, model, h, w in SHAPES:
        needs = [(label, need(model, h, w, wd, kv)) for label, wd, kv in SETTINGS]
        for label, n in needs:
            d = n.device
            lines.append(f"| {name}, {w}x{h} | {label} | {gb(d['weights'])} | {gb(d['cache'])} | "
                         f"{gb(d['activations'])} | {gb(d['text'] + d['rope tables'])} | **{gb(n.device_bytes)}** | "
                         f"{gb(n.working_bytes + n.weights_min)} | {gb(n.host_bytes)} |")
        row = []
        for card in CARDS:
            usable = card * GIB - CARD_OVERHEAD
            fits = [label for label, n in needs if n.device_bytes <= usable]
            streamed = [label for label, n in needs if n.working_bytes + n.weights_min <= usable]
            row.append(fits[0] if fits else f"{streamed[0]}, weights streamed" if streamed else "does not fit")
        choice.append(f"| {name}, {w}x{h} | " + " | ".join(row) + " |")
    layer = largest_layer_bytes(WAN21_T2V_14B, weight_bytes(WAN21_T2V_14B, BF16))
    return "\n".join([
        f"Planner figures in GiB (`bench/memory_plan.py`, meta tensors, commit {commit()}, "
        f"{datetime.date.today().isoformat()}): a 60 s six-shot video, per-shot noise, echo-forcing, bf16 compute. "
        "\"Streamed weights\" is the least a ComfyUI run needs when its model management keeps the weights in RAM "
        f"and brings one layer at a time (the largest layer: {gb(layer)} GiB at 14B). Host is the RAM the run's "
        "memory keeps (pinned under a GPU), its latents and one shot boundary.", "", *lines, "",
        f"What `kv_storage auto` runs with, per card (usable memory: the card less {gb(CARD_OVERHEAD)} GiB for "
        "ComfyUI's reserve and the CUDA context). The fp8 weights rows need an fp8 checkpoint or Load Causal DiT's "
        "weight_dtype fp8; auto only chooses the KV storage, ComfyUI decides the streaming.", "", *choice, "",
        "None of these figures was measured on a GPU yet: no GPU was lent to the sessions that wrote them. "
        "`bench/gpu_check.py` measures them (peak by `torch.cuda.max_memory_allocated`) when one is."])


def measured_table() -> str:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(ROOT.parent), *sys.path])}
    rows = ["| preset | kv_storage | compute dtype | predicted MiB | measured MiB | predicted / measured |",
            "|---|---|---|---|---|---|"]
    ratios = []
    for preset, kv, dtype in MEASURED:
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "memory_peak_worker.py"), json.dumps(MID), preset,
                              kv, dtype, "240", "416", SCRIPT], capture_output=True, text=True, env=env, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {preset} | {kv} | {dtype} | {got['predicted'] / 2**20:.0f} | {got['measured'] / 2**20:.0f} | "
                    f"{got['predicted'] / got['measured']:.3f} |")
        print(rows[-1], flush=True)
        ratios.append(got["predicted"] / got["measured"])
    worst = max(abs(r - 1) for r in ratios)
    return "\n".join([
        f"Predicted against measured on the CPU ({hardware(torch.device('cpu'))}, torch {torch.__version__}, commit "
        f"{commit()}): the real 1.3B width (12 heads x 128, FFN 8960) with two layers at 240x416, the script "
        f"`{SCRIPT}` (the first shot rolls its cache); measured is the growth of the resident set to its "
        "high-water mark during the rollout (`tests/memory_peak_worker.py`, `MALLOC_MMAP_THRESHOLD_=65536`), "
        "predicted is the planner's device + host total for the same run.", "", *rows, "",
        f"Every run is within {100 * worst:.0f} % of its prediction (the target is 10 %). The GPU check compares the "
        "same prediction with `torch.cuda.max_memory_allocated` when a GPU is lent."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, help="write the sections into this file (docs/HARDWARE.md)")
    parser.add_argument("--skip-measure", action="store_true", help="only the planner table")
    args = parser.parse_args()
    table = planner_table()
    print(table)
    if args.markdown:
        write_section(args.markdown, "What fits: the planner per card size", table)
    if not args.skip_measure:
        measured = measured_table()
        if args.markdown:
            write_section(args.markdown, "The planner against measured peaks", measured)


if __name__ == "__main__":
    main()
