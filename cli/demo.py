"""``python -m echo_forcing demo``: an end-to-end run with a tiny built-in model and no downloads.

It builds a small random Wan2.1-shaped DiT (two heads of the real head dim 128, two layers), turns the
prompt into word-hash text embeddings (``cli.text_stand_in``: the demo has no text encoder), runs the
real block-wise rollout with the Self-Forcing cache, and writes

* ``latents.safetensors`` — the output in ComfyUI's raw VAE-space LATENT layout ``[1, 16, T, H/8, W/8]``;
* ``demo.mp4`` — a *preview* of those latents (a fixed linear map of the 16 channels to RGB, upsampled 8x,
  each latent frame after the first shown for 4 video frames, as the Wan VAE would expand them). A random
  model makes no picture; with real weights, core ComfyUI's VAEDecode turns the same latents into video;
* ``report.json`` — settings, model signature, per-block times, cache size, peak memory and file names.

Files are written to a temporary name and renamed when complete, so a crash never leaves half a file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..memory import SelfForcingCacheConfig
from ..models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from ..pipeline import BlockEvent, RolloutSettings, rollout, to_comfy_latent, video_frames
from ..pipeline.latents import VAE_STRIDE
from ..safe_files import atomic_write, output_folder, write_text
from .text_stand_in import stand_in_text_embedding

DEMO_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
"""The built-in tiny model: 2 x 128 heads (real head dim and RoPE split), 2 layers, ~2.2M parameters."""

FPS = 16


def preview_frames(raw: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[16, T, h, w]`` -> uint8 RGB video ``[4T-3, 8h, 8w, 3]`` (a preview, not a VAE decode).

    Channels are averaged in three interleaved groups (0,3,6,..), (1,4,7,..), (2,5,8,..) and stretched to
    the 1st..99th percentile of the whole clip.
    """
    frames = raw.shape[1]
    rgb = torch.stack([raw[i::3].mean(dim=0) for i in range(3)], dim=-1)  # [T, h, w, 3]
    lo, hi = torch.quantile(rgb.flatten()[:: max(1, rgb.numel() // 100_000)], torch.tensor([0.01, 0.99]))
    rgb = ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    rgb = rgb.repeat_interleave(VAE_STRIDE[1], dim=1).repeat_interleave(VAE_STRIDE[2], dim=2)
    repeats = torch.full((frames,), VAE_STRIDE[0])
    repeats[0] = 1
    rgb = rgb.repeat_interleave(repeats, dim=0)
    assert rgb.shape[0] == video_frames(frames)
    return (rgb * 255).round().to(torch.uint8)


def write_video(frames: torch.Tensor, path: Path, fps: int = FPS) -> None:
    """Write RGB uint8 frames ``[N, H, W, 3]`` as mp4 (OpenCV, mp4v), atomically."""
    import cv2

    def write(tmp: Path) -> None:
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write mp4 video to {path}")
        try:
            for frame in frames.numpy():
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()

    atomic_write(path, write, keep_suffix=True)


def write_json(data: dict, path: Path) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_latents(raw: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"samples": raw.contiguous()}, str(tmp), metadata=metadata))


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where the OS does not report it)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_demo(out: Path, prompt: str, frames: int, width: int, height: int, seed: int,
             log=print) -> dict:
    """Run the demo and return its report (also written to ``out/report.json``)."""
    settings = RolloutSettings(num_frames=frames, height=height, width=width, seed=seed)
    cache = SelfForcingCacheConfig()
    cache.check_length(settings.num_frames, settings.frames_per_block)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    dit = WanDiT.from_state_dict(random_wan_state_dict(DEMO_CONFIG, seed=0))
    model = CausalWan(dit, dtype=torch.float32, device="cpu")
    text = model.encode_text(stand_in_text_embedding([prompt], DEMO_CONFIG.text_dim))
    setup_seconds = time.perf_counter() - started

    def progress(event: BlockEvent) -> None:
        log(f"block {event.index + 1}/{event.total}: frames {event.start_frame}-{event.start_frame + 2} "
            f"in {event.seconds:.2f} s")

    result = rollout(model, text, settings, cache, on_block=progress)
    raw = to_comfy_latent(result.latents)
    generation_seconds = sum(result.block_seconds)

    write_latents(raw, out / "latents.safetensors", {"layout": "comfy LATENT [B,16,T,H/8,W/8] raw Wan2.1 VAE space",
                                                   "prompt": prompt, "seed": str(seed)})
    video = preview_frames(raw[0])
    write_video(video, out / "demo.mp4")

    report = {
        "pack": "echo-forcing", "version": __version__,
        "what": "tiny random model, Self-Forcing global cache; the video is a latent preview, not a VAE decode",
        "prompt": prompt,
        "settings": {"latent_frames": frames, "video_frames": video_frames(frames), "fps": FPS,
                     "width": width, "height": height, "seed": seed, "steps": list(settings.steps),
                     "shift": settings.shift, "frames_per_block": settings.frames_per_block},
        "model": {"signature": DEMO_CONFIG.signature, "parameters": DEMO_CONFIG.parameter_count(),
                  "dtype": "float32", "device": "cpu"},
        "cache": {"policy": "self-forcing (global)", "frames": cache.capacity, "bytes": result.cache_bytes},
        "blocks": [{"index": i, "seconds": round(s, 4)} for i, s in enumerate(result.block_seconds)],
        "setup_seconds": round(setup_seconds, 3),
        "generation_seconds": round(generation_seconds, 3),
        "video_frames_per_second": round(video_frames(frames) / generation_seconds, 2) if generation_seconds else None,
        "peak_rss_mib": round(peak_rss_mb(), 1) if peak_rss_mb() is not None else None,
        "latent_stats": {"mean": round(result.latents.mean().item(), 5), "std": round(result.latents.std().item(), 5)},
        "files": {"video": "demo.mp4", "latents": "latents.safetensors", "report": "report.json"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
    }
    write_json(report, out / "report.json")
    log(f"wrote {out / 'demo.mp4'} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}), "
        f"{out / 'latents.safetensors'} and {out / 'report.json'}")
    return report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the tiny built-in model end to end (no downloads)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=output_folder, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--prompt", default="A lighthouse on a cliff at dusk, waves below", help="scene prompt")
    p.add_argument("--frames", type=int, default=21,
                   help="latent frames, a multiple of 3 (default 21 = 81 video frames)")
    p.add_argument("--width", type=int, default=416, help="video width in pixels, multiple of 16 (default 416)")
    p.add_argument("--height", type=int, default=240, help="video height in pixels, multiple of 16 (default 240)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, 0..2^64-1 (default 0)")
    p.set_defaults(func=lambda args: run_demo(args.out, args.prompt, args.frames, args.width, args.height, args.seed))
