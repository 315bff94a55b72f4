"""``python -m echo_forcing render``: generate a scene script outside ComfyUI, and generate it again after an
edit reusing every shot before the edit, or continue a saved story.

The script is the official one-line format (``shot [10s] | shot [10s#] | shot [10s@]; title | title``), given
on the command line or as a file. The model is a causal Wan2.1 checkpoint (``--checkpoint``, with an optional
``--lora``) or, without one, the demo's tiny random model. The command line has no umT5 text encoder: prompts
become word-hash stand-in embeddings (``cli.text_stand_in``) and recalls match prompts by IDF; real videos
come from ComfyUI, where Scene Prompt encodes with the real encoder. What it is for: checking scripts, timing
a model, and the same reuse the sampler node does.

Reuse: ``--cache DIR`` keeps every shot boundary in DIR (within ``--cache-gb``), so running the command again
with an edited script generates only the shots from the first changed one; ``--save-story FILE`` saves the
video with its state and ``--story FILE`` continues such a story with the script's shots (which are then the
NEW shots). Writes ``latents.safetensors`` (ComfyUI's LATENT layout), ``report.json`` and ``report.txt`` to
``--out``, each atomically.

Start from frames (the script's first shot opens with them, kept as they are): ``--start FILE`` takes latent
frames from a render's ``latents.safetensors`` or a core SaveLatent ``.latent`` file (``--start-frames N``: only
its last N, e.g. 3 to continue a clip from its last block); ``--image FILE`` encodes a picture and ``--clip FILE``
the end of a video (its last 1 + 4N frames, N = ``--start-frames`` or 3, keeping the last N latent frames, which
carry the clip's motion) with the Wan2.1 VAE given by ``--vae`` (``wan_2.1_vae.safetensors``), both resized to
the video's size with a centre crop as ComfyUI's Wan image-to-video nodes do. With ``--preset krea``, ``--vae`` also
decodes every block as it is made, so Krea Realtime re-encodes its first context frame from the pixels (its release
default; without ``--vae`` the video's first frame is kept).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..batch.headless import load_model, model_card, render_files
from ..memory import PresetChoice
from ..memory.presets import PRESETS
from ..models import model_cards
from ..models.wan_vae import encode_pixels, load_wan_vae_encoder, pixels_from_image, read_image
from ..models.wan_vae_decoder import load_wan_vae
from ..pipeline import (
    NOISE_MODES,
    PER_SHOT,
    PrefixCache,
    SceneList,
    build_report,
    from_comfy_latent,
    generate,
    parse_scene_script,
    plan_run,
    report_text,
)
from ..pipeline.latents import read_latent_file
from ..pipeline.prefix_cache import DEFAULT_BUDGET_GB, budget_bytes
from ..pipeline.scene_script import MAX_SCRIPT_CHARS, SceneScriptError, Transition
from ..pipeline.story import Story
from ..safe_files import atomic_write, output_folder
from .demo import block_progress, script_shots
from .video_file import read_last_frames


def read_script(text: str) -> str:
    """The script itself, or the contents of the file it names (its non-comment lines joined)."""
    path = Path(text)
    if len(text) < 4096 and path.suffix in (".txt", ".prompt") and path.is_file():
        if path.stat().st_size > 4 * MAX_SCRIPT_CHARS:
            raise SceneScriptError(f"{path.name} is {path.stat().st_size} bytes; a scene script has at most "
                                   f"{MAX_SCRIPT_CHARS} characters")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return " ".join(line for line in lines if line and not line.startswith("#"))
    return text


CLIP_LATENT_FRAMES = 3
"""Latent frames ``--clip`` keeps by default: one block."""


def start_latents(args: argparse.Namespace) -> torch.Tensor | None:
    """The normalised start latents ``[1, n, 16, h, w]`` of ``--start``, ``--image`` or ``--clip`` (None without
    one); everything is checked and encoded before the DiT is loaded."""
    frames = args.start_frames
    if frames < 0:
        raise ValueError(f"--start-frames must be 0 (all) or a number of latent frames, got {frames}")
    if args.start is not None:
        raw = read_latent_file(args.start)
        if raw.shape[0] != 1:
            raise ValueError(f"{args.start.name} holds {raw.shape[0]} videos; --start takes one")
        if frames > raw.shape[2]:
            raise ValueError(f"--start-frames is {frames} but {args.start.name} holds {raw.shape[2]} latent frames")
        return from_comfy_latent(raw[:, :, raw.shape[2] - frames:] if frames else raw)
    source = args.image if args.image is not None else args.clip
    if source is None:
        return None
    if args.vae is None:
        raise ValueError(f"--{'image' if args.image is not None else 'clip'} needs the Wan2.1 VAE to encode it: "
                         "give --vae wan_2.1_vae.safetensors (python -m echo_forcing models download wan21-vae)")
    if args.image is not None:
        if frames > 1:
            raise ValueError(f"--start-frames is {frames} but a picture is 1 latent frame")
        pixels = pixels_from_image(read_image(args.image), args.width, args.height)
        keep = 1
    else:
        keep = frames or CLIP_LATENT_FRAMES
        video = read_last_frames(args.clip, 1 + 4 * keep)
        if video.shape[0] < 1 + 4 * keep:
            raise ValueError(f"{args.clip.name} has {video.shape[0]} frames; {keep} latent frames in context need "
                             f"{1 + 4 * keep}: use a longer clip or a smaller --start-frames")
        pixels = pixels_from_image(video, args.width, args.height)
    cuda = str(args.device).startswith("cuda")
    encoder = load_wan_vae_encoder(args.vae, args.device, torch.bfloat16 if cuda else torch.float32)
    raw = encode_pixels(encoder, pixels).cpu()
    return from_comfy_latent(raw[:, :, raw.shape[2] - keep:])


def run(args: argparse.Namespace, log=print) -> dict:
    warnings = []
    scenes = parse_scene_script(read_script(args.script), warnings)
    for warning in warnings:
        log(f"warning: {warning}")
    start = start_latents(args)
    model, model_key = load_model(args.checkpoint, args.lora, args.dtype, args.device)
    card = model_card(args.card, args.checkpoint, model, log)
    notes = tuple(str(w) for w in warnings)
    shots = SceneList(notes=notes)
    if args.story is not None:
        story = Story.load(args.story)
        shots = SceneList(story.shots.shots, story, notes)
    # recall targets by index count from the story's end
    shots = script_shots(shots, scenes, model.config.text_dim, args.enter, start)
    choice = PresetChoice(preset=args.preset, recall_matching="idf", recall_scope="shots so far")
    vae = None if args.vae is None else (lambda: load_wan_vae(args.vae, model.device, model.dtype))
    plan = plan_run(shots, model.config, seed=args.seed, width=args.width, height=args.height, fps=args.fps,
                    steps=args.steps, shift=args.shift, choice=choice, dtype=model.dtype, noise=args.noise, card=card,
                    stop_after_shot=args.stop_after_shot, device=model.device, vae=vae)
    cache = None
    if args.cache is not None:
        cache = PrefixCache(budget_bytes(min(args.cache_gb, DEFAULT_BUDGET_GB)), args.cache,
                            budget_bytes(args.cache_gb))

    def reused(boundary) -> None:
        log(f"reusing shots 1-{boundary.shot} ({boundary.block} blocks) from "
            f"{'the story' if plan.story is not None and boundary is plan.story.boundary else 'the cache'}")

    result = generate(plan, lambda: model, cache=cache, model_key=model_key, on_block=block_progress(log),
                      on_reuse=reused)
    report = build_report(plan, result)
    args.out.mkdir(parents=True, exist_ok=True)
    text = report_text(report).split("\n\n")[0]
    for name, data in render_files(result.latents, report, text, args.seed).items():
        atomic_write(args.out / name, lambda tmp, data=data: tmp.write_bytes(data))
    if args.save_story is not None:
        story = plan.story_of(result)
        story.save(args.save_story)
        log(f"saved the story ({len(story.shots)} shots) to {args.save_story}")
    log(text)
    return report


def add_recipe_arguments(p: argparse.ArgumentParser, device_default: str | None = "auto") -> None:
    """The options that decide a video besides its script (``render`` and ``batch`` share them)."""
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="causal Wan2.1 checkpoint (.pt or .safetensors); default: the tiny random demo model")
    p.add_argument("--lora", type=Path, default=None, help="LongLive-style LoRA merged into the checkpoint")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="compute dtype with --checkpoint (default bfloat16)")
    if device_default == "auto":
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="compute device")
    else:
        p.add_argument("--device", default=None, help="compute device (default: each worker's GPU, else its CPU)")
    p.add_argument("--preset", choices=list(PRESETS), default="echo-forcing", help="cache preset")
    p.add_argument("--width", type=int, default=832, help="width in pixels, a multiple of 16 (default 832)")
    p.add_argument("--height", type=int, default=480, help="height in pixels, a multiple of 16 (default 480)")
    p.add_argument("--fps", type=float, default=16.0, help="frames per second for the durations (default 16)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps per block (default: the model card's, 4 without one)")
    p.add_argument("--card", choices=["auto", *model_cards.names()], default="auto",
                   help="the model card (how the student was trained: frames per block, steps); auto: recognised "
                        "from the checkpoint, none for the tiny model")
    p.add_argument("--shift", type=float, default=5.0, help="timestep shift (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed, 0..2^64-1 (default 0)")
    p.add_argument("--noise", choices=NOISE_MODES, default=PER_SHOT,
                   help="per-shot (default; shots reusable) or official (the official code's order)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="generate a scene script; again after an edit, only from the edited shot",
                       description=__doc__.split("\n\n")[0].replace("``", ""),
                       epilog=__doc__.split("\n\n", 1)[1].replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="a scene script in the official format, or a .txt file holding one")
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR", help="output folder")
    add_recipe_arguments(p)
    p.add_argument("--stop-after-shot", type=int, default=0, help="stop after this shot (default 0: all)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="keep every shot boundary in DIR, so a later run of an edited script reuses the shots "
                        "before the edit")
    p.add_argument("--cache-gb", type=float, default=20.0, help="disk budget of --cache in GiB (default 20)")
    p.add_argument("--story", type=Path, default=None, metavar="FILE",
                   help="continue this story (Save Story / --save-story): the script holds the NEW shots")
    p.add_argument("--save-story", type=Path, default=None, metavar="FILE",
                   help="save the video with its state as a story, to continue later")
    p.add_argument("--enter", choices=Transition.labels(), default=Transition.SMOOTH.label,
                   help="with --story: how the script's first shot is entered (default smooth)")
    opening = p.add_mutually_exclusive_group()
    opening.add_argument("--start", type=Path, default=None, metavar="FILE",
                         help="open the script's first shot with these latent frames (a render's latents.safetensors "
                              "or a SaveLatent .latent file)")
    opening.add_argument("--image", type=Path, default=None, metavar="FILE",
                         help="open the script's first shot with this picture (PNG, JPEG, ...), encoded with --vae")
    opening.add_argument("--clip", type=Path, default=None, metavar="FILE",
                         help="continue this video: its end, encoded with --vae, opens the script's first shot")
    p.add_argument("--start-frames", type=int, default=0, metavar="N",
                   help="with --start: only its last N latent frames (default 0: all); with --clip: how many latent "
                        f"frames of its end (default {CLIP_LATENT_FRAMES})")
    p.add_argument("--vae", type=Path, default=None, metavar="FILE",
                   help="the Wan2.1 VAE (wan_2.1_vae.safetensors) that encodes --image or --clip; with --preset "
                        "krea it also decodes every block so the first context frame is re-encoded from the pixels "
                        "(Krea Realtime's release default; without --vae the video's first frame is kept)")
    p.set_defaults(func=run)

