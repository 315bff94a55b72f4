"""Benchmark of the block-wise rollout: per-block time and peak memory.

    python bench/rollout.py                 # tiny model on the CPU, 480x832, 42 latent frames
    python bench/rollout.py --full          # full Wan2.1-1.3B shapes, random bf16 weights (needs a GPU)
    python bench/rollout.py --markdown docs/BENCHMARKS.md   # also write the tables there

Random weights: the numbers measure the machinery (DiT forwards, cache, RoPE), not picture quality.
Text encoding and VAE decoding are not included. On the GPU memory is ``torch.cuda.max_memory_allocated``
per block; on the CPU it is the process's resident set size after each block and its peak (Linux).
Never part of the test suite; tests assert no timings.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch
from benchmark_report import commit, hardware, write_section

from echo_forcing.memory import make_policy, preset_names
from echo_forcing.models import WAN21_T2V_1_3B, CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import BlockEvent, RolloutSettings, rollout, video_frames

TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def _proc_status(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def build_model(cfg: WanConfig, device: torch.device, dtype: torch.dtype) -> tuple[CausalWan, object]:
    dit = WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=0, dtype=dtype, device=device), dtype=dtype,
                                 device=device)
    model = CausalWan(dit, dtype=dtype, device=device)
    text = model.encode_text(torch.randn(1, 512, cfg.text_dim, generator=torch.Generator().manual_seed(1)))
    return model, text


def run(model: CausalWan, text, device: torch.device, frames: int, height: int, width: int, preset: str) -> dict:
    cfg, dtype = model.config, model.dtype
    policy = make_policy(preset)
    settings = RolloutSettings(num_frames=frames, height=height, width=width, seed=0)
    rows = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    def on_block(event: BlockEvent) -> None:
        if cuda:
            memory = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        else:
            memory = _proc_status("VmRSS")
        rows.append({"block": event.index, "seconds": event.seconds, "memory_mib": memory})
        print(f"  {preset} block {event.index:2d}: {event.seconds * 1000:9.1f} ms  "
              f"{'peak GPU' if cuda else 'RSS'} {memory:9.1f} MiB", flush=True)

    started = time.perf_counter()
    result = rollout(model, text, settings, policy, on_block=on_block)
    total = time.perf_counter() - started
    last = [r["seconds"] for r in rows[-3:]]  # the 21-frame cache is full by then
    per_block = sum(last) / len(last)
    return {
        "label": preset, "model": cfg.signature, "dtype": str(dtype).replace("torch.", ""),
        "size": f"{width}x{height}", "latent_frames": frames, "rows": rows,
        "first_block_s": rows[0]["seconds"], "last_blocks_s": per_block,
        "fps": 4 * settings.frames_per_block / per_block, "total_s": total,
        "video_frames": video_frames(frames), "cache_mib": result.cache_bytes / 2**20,
        "storage_mib": result.storage_bytes / 2**20,
        "peak_mib": max(r["memory_mib"] or 0 for r in rows) if cuda else _proc_status("VmHWM"),
    }


def markdown(results: list[dict], device: torch.device, command: str) -> str:
    lines = [
        f"Measured {datetime.date.today().isoformat()} at commit `{commit()}` on {hardware(device)}, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `{command}`. Video FPS = 12 video frames per block / mean time of the last 3 blocks "
        "(cache full); text encoding and VAE decoding excluded. Memory: peak GPU allocation per block on a GPU, "
        "resident set size after each block on the CPU (peak = the process's high-water mark).", "",
        "| preset | model | dtype | size | latent frames | first block | last 3 blocks | vs self-forcing | video FPS "
        "| memory state on device | off device | peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r["last_blocks_s"] for r in results if r["label"] == "self-forcing"), None)
    for r in results:
        ratio = f"{r['last_blocks_s'] / base:.3f}x" if base else "-"
        lines.append(
            f"| {r['label']} | {r['model']} | {r['dtype']} | {r['size']} | {r['latent_frames']} | "
            f"{r['first_block_s'] * 1000:.0f} ms | {r['last_blocks_s'] * 1000:.0f} ms | {ratio} | {r['fps']:.2f} | "
            f"{r['cache_mib']:.0f} MiB | {r['storage_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB |")
    lines += ["", "Per block (ms / MiB):", ""]
    for r in results:
        cells = ", ".join(f"{row['seconds'] * 1000:.0f}/{row['memory_mib'] or 0:.0f}" for row in r["rows"])
        lines.append(f"- {r['label']}: {cells}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="full Wan2.1-1.3B shapes in bf16 (needs a GPU)")
    parser.add_argument("--frames", type=int, default=42, help="latent frames per run (default 42 = 14 blocks)")
    parser.add_argument("--presets", default="self-forcing,echo-forcing",
                        help=f"comma-separated cache presets, or 'all' ({', '.join(preset_names())})")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--markdown", type=Path, help="write the tables into this markdown file (section replaced)")
    args = parser.parse_args(argv)

    if args.full and not torch.cuda.is_available():
        print("--full needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.full else "cpu")
    cfg, dtype = (WAN21_T2V_1_3B, torch.bfloat16) if args.full else (TINY, torch.float32)
    print(f"{cfg.signature} on {hardware(device)}, {dtype}, {args.width}x{args.height}")
    presets = preset_names() if args.presets == "all" else [p.strip() for p in args.presets.split(",")]
    with torch.inference_mode():
        model, text = build_model(cfg, device, dtype)
        results = [run(model, text, device, args.frames, args.height, args.width, p) for p in presets]
    command = "python bench/rollout.py" + (" --full" if args.full else "") + (
        f" --presets {args.presets}" if args.presets != "self-forcing,echo-forcing" else "")
    text = markdown(results, device, command)
    print()
    print(text)
    if args.markdown:
        write_section(args.markdown, "GPU, full 1.3B shapes" if args.full else "CPU, tiny model", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
