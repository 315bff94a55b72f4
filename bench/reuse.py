"""Benchmark of shot reuse: the time to regenerate a six-shot video after editing its last shot, or its third,
against a full run, side by side in one process; and the bytes a shot boundary keeps.

    python bench/reuse.py                   # tiny model on the CPU, 480x832
    python bench/reuse.py --full            # full Wan2.1-1.3B shapes, random bf16 weights (needs a GPU)
    python bench/reuse.py --markdown docs/BENCHMARKS.md

Six shots of equal duration, per-shot noise, recall matching over the shots so far (the nodes' defaults).
Order: a full run that fills the shot cache; the script with the last shot's prompt changed (only shot 6 is
generated); the script with the third shot's prompt changed (shots 3-6); then the last edit again from
scratch without the cache, to check the reused video is identical. Times are the rollout's own block times
plus the cache work (boundary snapshots and restores), measured with ``time.perf_counter`` around the
whole ``generate`` call. The boundary bytes at 1.3B / 480x832 / bf16 come from ``memory.footprint`` (meta
tensors, nothing allocated) for every preset. Tests never run this.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch
from benchmark_report import commit, hardware, write_section

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import PresetChoice, memory_footprint, preset_names
from echo_forcing.memory.presets import make_policy
from echo_forcing.models import WAN21_T2V_1_3B, CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import PrefixCache, SceneList, generate, plan_run

TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
PROMPTS = ("A lighthouse keeper in a yellow raincoat climbs the spiral stairs at dusk",
           "The keeper reaches the lamp room at the top of the white lighthouse",
           "A crowded night market with red paper lanterns and steam rising from food stalls",
           "Back in the white lighthouse, the keeper in the yellow raincoat lights the great lamp",
           "The lamp sweeps across the dark sea as waves crash below",
           "A fishing boat returns to a quiet harbour at dawn")
TRANSITIONS = ("smooth", "smooth", "hard cut", "recall", "smooth", "hard cut")
SECONDS = 3.0
"""Four blocks per shot (the last takes the rest: 5)."""


def shots(prompts, text_dim: int) -> SceneList:
    out = SceneList()
    for prompt, transition in zip(prompts, TRANSITIONS, strict=True):
        out = out.then(prompt, stand_in_text_embedding([prompt], text_dim), SECONDS, transition)
    return out


def timed(plan, model, cache) -> tuple[float, object]:
    started = time.perf_counter()
    result = generate(plan, lambda: model, cache=cache, model_key="bench")
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def boundary_table() -> list[str]:
    cfg, grid = WAN21_T2V_1_3B, (30, 52)
    rows = ["| preset | memory snapshot per boundary | latents of a 60 s video | working cache on the GPU |",
            "|---|---|---|---|"]
    latents = 241 * 16 * 60 * 104 * 4
    for name in preset_names():
        f = memory_footprint(make_policy(name), cfg.num_layers, cfg.num_heads, cfg.head_dim, torch.bfloat16, grid, 6)
        rows.append(f"| {name} | {f.boundary_bytes / 2**20:,.0f} MiB | {latents / 2**20:.0f} MiB | "
                    f"{f.device_bytes / 2**20:,.0f} MiB |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full Wan2.1-1.3B shapes in bf16 (needs a GPU)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--markdown", type=Path, help="write the tables into this markdown file (section replaced)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.full else "cpu")
    cfg = WAN21_T2V_1_3B if args.full else TINY
    dtype = torch.bfloat16 if args.full else torch.float32
    dit = WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=0, dtype=dtype), dtype=dtype, device=device)
    model = CausalWan(dit, dtype=dtype, device=device)
    choice = PresetChoice(recall_matching="idf", recall_scope="shots so far")

    def plan(prompts):
        return plan_run(shots(prompts, cfg.text_dim), cfg, seed=1, width=args.width, height=args.height,
                        dtype=dtype, choice=choice)

    cache = PrefixCache(64 * 2**30)
    last = (*PROMPTS[:5], PROMPTS[5] + ", gulls circling")
    third = (*PROMPTS[:2], PROMPTS[2] + " after rain", *PROMPTS[3:5], last[5])
    full_time, _ = timed(plan(PROMPTS), model, cache)
    last_time, after_last = timed(plan(last), model, cache)
    third_time, after_third = timed(plan(third), model, cache)
    fresh_time, fresh = timed(plan(last), model, None)
    identical = torch.equal(after_last.latents, fresh.latents)
    blocks = plan(PROMPTS).blocks
    snapshot = cache.get(plan(PROMPTS).boundary_keys("bench")[4]).nbytes

    size = f"{args.width}x{args.height}"
    lines = [
        f"Measured {datetime.date.today()} on {hardware(device)}, commit {commit()}; "
        f"{'Wan2.1-1.3B shapes, random bf16 weights' if args.full else 'tiny model (2 layers), float32'}, {size}, "
        f"six shots of {SECONDS:g} s (blocks {', '.join(map(str, blocks))}), echo-forcing, per-shot noise. "
        f"Command: `python bench/reuse.py{' --full' if args.full else ''}`.",
        "",
        "| run | shots generated | time | vs the full run |",
        "|---|---|---|---|",
        f"| full run (fills the shot cache) | 6 | {full_time:.2f} s | 1.00x |",
        f"| edit the last shot of six | {after_last.shots_done - after_last.reused_shots} | {last_time:.2f} s | "
        f"{last_time / full_time:.2f}x (blocks: {blocks[5] / sum(blocks):.2f}) |",
        f"| edit shot 3 of six | {after_third.shots_done - after_third.reused_shots} | {third_time:.2f} s | "
        f"{third_time / full_time:.2f}x (blocks: {sum(blocks[2:]) / sum(blocks):.2f}) |",
        f"| the last edit from scratch (no cache) | 6 | {fresh_time:.2f} s | {fresh_time / full_time:.2f}x |",
        "",
        f"The reused run's latents equal the from-scratch run's: **{identical}**. One boundary of this run (after "
        f"shot 5) holds {snapshot / 2**20:.1f} MiB (latents of shots 1-5 plus the memory snapshot).",
        "",
        "Bytes one shot boundary keeps in CPU RAM at Wan2.1-1.3B, 480x832, bf16 (`memory.footprint`, meta "
        "tensors), plus the latents of the shots so far (float32, 0.38 MiB per latent frame):",
        "",
        *boundary_table(),
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.markdown:
        write_section(args.markdown, "Shot reuse (edit one shot of six)" + (", GPU" if args.full else ", CPU"), body)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
