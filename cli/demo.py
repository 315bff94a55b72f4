"""``python -m echo_forcing demo``: Echo-Forcing end to end on a multi-shot script, with a tiny built-in model
and no downloads.

It builds a small random Wan2.1-shaped DiT (two heads of the real head dim 128, two layers), turns every shot's
prompt into word-hash text embeddings (``cli.text_stand_in``: the demo has no text encoder; recalls match
prompts by IDF), and runs the pack's own pipeline on a four-shot scene script in the official tag format: the
same ``plan_run`` / ``generate`` / ``build_report`` path as the sampler node and the ``render`` command, with
the ``echo-forcing`` memory. The script (:data:`DEFAULT_SCRIPT`) shows each transition once::

    lighthouse [6s] | beam [4s#] | storm [1.5s@] | lighthouse again [4s]

The marker of a shot is the transition OUT of it: smooth into "beam", hard cut into "storm", recall into
"lighthouse again". So the memory fills its anchors and compressed history in the first shot, carries the last
frames across the smooth switch and lets them fade until they are deleted, keeps one old frame for one block at
the hard cut, and at the recall brings back the frame of the shot whose words match best (the first). It
takes seconds on two CPU cores (most of it start-up) and writes to ``--out``

* ``demo.mp4`` — an H.264 MP4 (yuv420p, browsers play it) *previewing* the latents: a fixed linear map of
  the 16 channels to RGB, upsampled 8x, each latent frame after the first shown for 4 video frames, as the Wan
  VAE would expand them. A random model makes no picture; with real weights, core ComfyUI's VAEDecode turns
  the same latents into video;
* ``timeline.svg`` — the picture of the run: the shots and their transitions, and block by block what the
  cache holds (anchors, compressed history, recent and current block, the old memory with its decay weights
  until it is deleted) and the recalls (``cli.timeline_picture``);
* ``report.json`` — the run report the sampler node gives (shots, transitions, recalled shot, similarity,
  decay, cache, times), plus a ``demo`` section: the script, the model, the per-block rows the picture is
  drawn from, peak memory and file names;
* ``latents.safetensors`` — the output in ComfyUI's raw VAE-space LATENT layout ``[1, 16, T, H/8, W/8]``.

``--script`` runs another script (the text or a .txt file), ``--prompt`` a single shot, ``--preset`` another
memory (the baselines draw their cache as one bar: they report no regions). Every file is written to a
temporary name and renamed when complete, with the user's umask, so a crash never leaves half a file. The
video needs PyAV (``pip install av``).
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
from ..memory import PresetChoice
from ..memory.presets import preset_names
from ..models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from ..pipeline import SceneList, build_report, generate, parse_scene_script, plan_run, video_frames
from ..pipeline.latents import VAE_STRIDE, to_comfy_latent
from ..pipeline.noise import MAX_SEED
from ..pipeline.run_report import report_text
from ..pipeline.scene_script import Transition
from ..safe_files import atomic_write, output_folder, shown, write_text
from .text_stand_in import stand_in_text_embedding
from .timeline_picture import block_rows, timeline_svg
from .video_file import VideoUnavailable, check_h264, write_h264

DEMO_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
"""The built-in tiny model: 2 x 128 heads (real head dim and RoPE split), 2 layers, ~2.2M parameters."""

FPS = 16
DEFAULT_SCRIPT = ("A lighthouse on a cliff at dusk, waves below [6s] | "
                  "the lighthouse beam sweeps across the dark sea [4s#] | "
                  "a fishing boat in a storm far out at sea [1.5s@] | "
                  "the lighthouse on the cliff at dusk again, calm waves below [4s]; "
                  "lighthouse | beam | storm | lighthouse again")
"""Four shots, one of each transition: smooth (no marker), hard cut (#) and recall (@) out of shots 1-3; the
recall finds the first shot by its words. 8 + 5 + 2 + 6 blocks, 249 video frames."""
DEFAULT_WIDTH, DEFAULT_HEIGHT = 128, 96
MAX_SIDE = 1024
"""The largest demo width or height (the tiny model runs on the CPU; ``render`` takes real sizes)."""
MAX_SECONDS = 120.0
"""The longest demo video in seconds."""
MAX_STEPS = 10
FILES = {"video": "demo.mp4", "timeline": "timeline.svg", "report": "report.json", "latents": "latents.safetensors"}


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


# ------------------------------------------------------------------------------------------------- arguments


def _bounded(kind, low, high, what: str, multiple: int = 1):
    """An argparse type: a ``kind`` number in ``low..high`` (a multiple of ``multiple``), else a usage error that
    says what is allowed and, for sizes, the nearest valid value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {what}") from None
        if not low <= value <= high or (multiple > 1 and value % multiple):
            nearest = min(max(low, round(value / multiple) * multiple), high) if multiple > 1 else None
            hint = f" (nearest: {nearest})" if nearest is not None else ""
            raise argparse.ArgumentTypeError(f"{shown(text)} is out of range: give {what} from {low:g} to "
                                             f"{high:g}{hint}")
        return value
    return parse


# ------------------------------------------------------------------------------------------------------- run


def demo_shots(script: str, text_dim: int, prompt: str | None = None, seconds: float = 5.0,
               log=print) -> SceneList:
    """The shots of a scene script (or the single shot ``prompt`` of ``seconds``), each with its stand-in text
    embedding; at most :data:`MAX_SECONDS` in all."""
    if prompt is not None:
        shots = SceneList().then(prompt, stand_in_text_embedding([prompt], text_dim), seconds, "smooth")
        scenes = ()
    else:
        warnings = []
        scenes = parse_scene_script(script, warnings)
        for warning in warnings:
            log(f"warning: {warning}")
        shots = SceneList(notes=tuple(str(w) for w in warnings))
    shots = script_shots(shots, scenes, text_dim)
    total = sum(s.scene.duration for s in shots.shots)
    if total > MAX_SECONDS:
        raise ValueError(f"the script is {total:g} s long; the demo makes at most {MAX_SECONDS:g} s (the "
                         "render command takes longer scripts)")
    return shots


def script_shots(shots: SceneList, scenes, text_dim: int, enter: str | Transition = Transition.SMOOTH,
                 start: torch.Tensor | None = None) -> SceneList:
    """``shots`` followed by parsed scene-script ``scenes``, each with its stand-in text embedding. The first
    scene is entered by ``enter`` (it matters after a story's shots) and starts from ``start`` (normalised
    latents, or None); a scene's recall target by index counts from the first of ``scenes``."""
    offset = len(shots)
    for i, scene in enumerate(scenes):
        target = scene.recall_target
        shots = shots.then(scene.prompt, stand_in_text_embedding([scene.prompt], text_dim), scene.duration,
                           enter if scene.entry is None else scene.entry,
                           str(offset + target + 1) if isinstance(target, int) else target, scene.label,
                           start=start if i == 0 else None)
    return shots


def tiny_model(device: str | torch.device = "cpu") -> CausalWan:
    """The built-in tiny random model (:data:`DEMO_CONFIG`, seed 0), float32."""
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(DEMO_CONFIG, seed=0)), dtype=torch.float32,
                     device=device)


def block_progress(log=print):
    """A ``generate`` callback that logs each block."""
    def progress(event) -> None:
        log(f"block {event.index + 1}/{event.total} (shot {event.scene + 1}) in {event.seconds:.2f} s")
    return progress


def run_demo(out: Path, script: str = DEFAULT_SCRIPT, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
             seed: int = 0, preset: str = "echo-forcing", steps: int = 4, prompt: str | None = None,
             seconds: float = 5.0, log=print) -> dict:
    """Run the demo and return its report (also written to ``out/report.json``); see the module docstring.
    With ``prompt``, the video is that one shot of ``seconds`` instead of the script."""
    check_h264()  # before any work: the video is one of the demo's results
    started = time.perf_counter()
    shots = demo_shots(script, DEMO_CONFIG.text_dim, prompt, seconds, log)
    script = script if prompt is None else None
    extra = {"recall_matching": "idf", "recall_scope": "shots so far"} if preset.startswith("echo-forcing") else {}
    plan = plan_run(shots, DEMO_CONFIG, seed=seed, width=width, height=height, fps=FPS, steps=steps,
                    choice=PresetChoice(preset=preset, **extra), dtype=torch.float32, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    setup_seconds = time.perf_counter() - started
    result = generate(plan, lambda: model, on_block=block_progress(log))
    report = build_report(plan, result)
    rows = block_rows(report, result.block_reports, result.switches)
    raw = to_comfy_latent(result.latents)
    write_latents(raw, out / FILES["latents"], {"layout": "comfy LATENT [B,16,T,H/8,W/8] raw Wan2.1 VAE space",
                                                 "script": script or prompt, "seed": str(seed)})
    video = preview_frames(raw[0])
    write_h264(video, out / FILES["video"], FPS)
    write_text(out / FILES["timeline"], timeline_svg(report, rows))
    peak = peak_rss_mb()
    report["demo"] = {
        "what": f"tiny random model, {preset} memory; the video is a latent preview, not a VAE decode",
        "script": script,
        "prompt": prompt,
        "model": {"signature": DEMO_CONFIG.signature, "parameters": DEMO_CONFIG.parameter_count(),
                  "dtype": "float32", "device": "cpu"},
        "blocks": rows,
        "setup_seconds": round(setup_seconds, 3),
        "peak_rss_mib": round(peak, 1) if peak is not None else None,
        "files": dict(FILES),
        "environment": {"pack": __version__, "python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
    }
    write_json(report, out / FILES["report"])
    log(report_text(report).split("\n\n")[0])
    log(f"wrote {out / FILES['video']} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}), "
        f"{out / FILES['timeline']}, {out / FILES['report']} and {out / FILES['latents']}")
    return report


def _script_of(args: argparse.Namespace) -> str:
    if args.script is None:
        return DEFAULT_SCRIPT
    from .render import read_script  # imported here: render imports this module

    return read_script(args.script)


def main(args: argparse.Namespace) -> int:
    """The ``demo`` command: 0 when done; 1, with the reason, when the video cannot be written here."""
    try:
        run_demo(args.out, _script_of(args), args.width, args.height, args.seed, args.preset, args.steps,
                 args.prompt, 5.0 if args.seconds is None else args.seconds)
    except VideoUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Echo-Forcing on a 4-shot script with a tiny built-in model (no downloads)",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog="Writes demo.mp4, timeline.svg, report.json and latents.safetensors to --out.")
    p.add_argument("--out", type=output_folder, default=Path("demo_out"), metavar="DIR",
                   help="output folder (default: demo_out)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--script", default=None, metavar="SCRIPT",
                        help="a scene script in the official format (prompt [5s] | prompt [5s#] | ... ; title | "
                             "...), or a .txt file holding one (default: the built-in 4-shot script)")
    source.add_argument("--prompt", default=None, help="a single shot of this prompt instead of a script")
    p.add_argument("--seconds", type=_bounded(float, 0.75, 60, "seconds"), default=None,
                   help="with --prompt: the shot's length in seconds, 0.75 to 60 (default 5)")
    p.add_argument("--preset", choices=preset_names(), default="echo-forcing", help="cache preset (default "
                   "echo-forcing)")
    p.add_argument("--width", type=_bounded(int, 16, MAX_SIDE, "a width in pixels, a multiple of 16,", 16),
                   default=DEFAULT_WIDTH, help=f"video width in pixels, a multiple of 16 up to {MAX_SIDE} "
                   f"(default {DEFAULT_WIDTH})")
    p.add_argument("--height", type=_bounded(int, 16, MAX_SIDE, "a height in pixels, a multiple of 16,", 16),
                   default=DEFAULT_HEIGHT, help=f"video height in pixels, a multiple of 16 up to {MAX_SIDE} "
                   f"(default {DEFAULT_HEIGHT})")
    p.add_argument("--steps", type=_bounded(int, 1, MAX_STEPS, "a number of steps"), default=4,
                   help=f"denoising steps per block, 1 to {MAX_STEPS} (default 4)")
    p.add_argument("--seed", type=_bounded(int, 0, MAX_SEED, "a seed"), default=0, help="noise seed, 0..2^64-1 "
                   "(default 0)")

    def run(args: argparse.Namespace) -> int:
        if args.seconds is not None and args.prompt is None:
            p.error("--seconds goes with --prompt (a script gives every shot its own length)")
        return main(args)

    p.set_defaults(func=run)
