"""One prompt line rendered by the pack's own pipeline, outside ComfyUI: the work of one job of ``batch``.

A :class:`RenderRecipe` is everything but the script that decides a video (the checkpoint and its LoRA, dtype,
preset, size, frame rate, steps, model card, shift, seed, noise mode, the VAE Krea re-encodes with); its
:meth:`~RenderRecipe.digest` plays the part the workflow hash plays for ``queue``: a finished line is kept on a
rerun only while its script and the recipe are unchanged.

A :class:`Renderer` loads the model once and renders lines one after another, keeping every shot boundary in
RAM (``pipeline.prefix_cache``): a line whose first shots equal an earlier line's starts after them, with the
same bits as a fresh run (the reuse keys say what must match). Each line gives the files ``render`` writes:

* ``latents.safetensors``: the video as a core LATENT ``[1, C, T, h, w]`` (raw VAE space, ``samples``; the
  metadata entry ``echo_forcing`` holds its layout and seed as JSON);
* ``report.json`` and ``report.txt``: the run's report (shots, transitions, recalls, memory, timings).

The bytes are returned, not written: the caller (the batch driver) writes them under its output folder, so a
worker on another machine needs no shared disk.

Prompts are encoded by the command line's stand-in for umT5 (``cli.text_stand_in``), as in ``render``: the
command line has no umT5 yet. Real videos come from ComfyUI; for a prompt set on several ComfyUI servers use
``queue`` (docs/SCALING.md compares the two).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..memory import PresetChoice
from ..models import CausalWan, load_wan_experts, model_cards
from ..pipeline import (
    PER_SHOT,
    PrefixCache,
    SceneList,
    build_report,
    generate,
    parse_scene_script,
    plan_run,
    report_text,
    to_comfy_latent,
)
from ..pipeline.digests import digest
from ..pipeline.prefix_cache import budget_bytes

LATENTS_FILE, REPORT_FILE, REPORT_TEXT_FILE = "latents.safetensors", "report.json", "report.txt"
OUTPUT_FILES = (LATENTS_FILE, REPORT_FILE, REPORT_TEXT_FILE)
TINY_MODEL_KEY = "tiny-random-seed-0"
DEFAULT_SHOT_CACHE_GB = 8.0
"""RAM a worker keeps shot boundaries in (the oldest leave first)."""
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def file_identity(path: str | os.PathLike | None) -> list | None:
    """A file as the reuse keys name it: its resolved path, size and modification time (None: no file)."""
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:  # a path only the workers see (a cluster's shared disk): named by the path alone
        return [str(path)]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def load_model(checkpoint: str | os.PathLike | None, lora: str | os.PathLike | None = None,
               dtype: str = "bfloat16", device: str | torch.device = "cpu") -> tuple[CausalWan, str]:
    """The model and its reuse key: the checkpoint (and LoRA) file's identity, or the built-in tiny model's
    (float32, for checks without downloads)."""
    if checkpoint is None:
        from ..cli.demo import tiny_model

        return tiny_model(device), TINY_MODEL_KEY
    dit, expert = load_wan_experts(checkpoint, lora=lora, dtype=DTYPES[dtype], device=device)
    key = digest([file_identity(checkpoint), file_identity(lora)])
    return CausalWan(dit, dtype=DTYPES[dtype], device=device, memory_expert=expert), key


def model_card(name: str, checkpoint: str | os.PathLike | None, model: CausalWan,
               log: Callable[[str], None] = print) -> model_cards.ModelCard | None:
    """The run's model card: the one named (checked against the weights), else the checkpoint's (logged with how
    it was found); none for the tiny model."""
    cfg = model.config
    expert = model.memory_expert is not None
    if name != "auto":
        card = model_cards.by_name(name)
        card.check_latents(cfg.in_dim)
        if checkpoint is not None:
            card.check_weights(cfg.dim, cfg.num_layers, cfg.in_dim, expert)
        return card
    if checkpoint is None:
        return None
    card, how = model_cards.card_for_file(checkpoint, cfg.dim, cfg.num_layers, cfg.in_dim, expert)
    log(f"model card {card.name}: {how}" if card is not None else f"model card: {how}")
    return card


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RenderRecipe:
    """What decides a batch line's video besides its script (the ``render`` options of the same names)."""

    checkpoint: str | None = None
    lora: str | None = None
    dtype: str = "bfloat16"
    preset: str = "echo-forcing"
    width: int = 832
    height: int = 480
    fps: float = 16.0
    steps: int | None = None
    card: str = "auto"
    shift: float = 5.0
    seed: int = 0
    noise: str = PER_SHOT
    vae: str | None = None
    device: str | None = None
    """The compute device on the worker; None: a GPU where the worker has one, else the CPU."""
    threads: int | None = None
    """torch's CPU threads on the worker (None: torch's default). On the CPU the float rounding of the larger
    products depends on it, so the same bits need the same number of threads."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.card != "auto":
            model_cards.by_name(self.card)  # a clear error for an unknown card, before any worker starts
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be 1 or more, got {self.threads!r}")

    def digest(self) -> str:
        """What a finished line's record must match to be kept on a rerun (files named by their identity; the
        device and the threads are not part of it)."""
        data = asdict(self)
        data.pop("device")
        data.pop("threads")
        for name in ("checkpoint", "lora", "vae"):
            data[name] = file_identity(data[name])
        return digest(data)


@dataclass
class RenderedLine:
    """One line's result: its files (name -> bytes), the report's first line, and how much was reused."""

    files: dict[str, bytes]
    summary: str
    reused_shots: int = 0
    seconds: float = 0.0


@dataclass
class BlockDone:
    """A block of a line finished (for progress bars): ``index`` of ``total`` (0-based), in process ``pid``."""

    index: int
    total: int
    shot: int
    pid: int = field(default_factory=os.getpid)


@dataclass
class Renderer:
    """A loaded model and its shot cache; :meth:`render` renders one line (see the module docstring)."""

    recipe: RenderRecipe
    log: Callable[[str], None] = print
    cache_gb: float = DEFAULT_SHOT_CACHE_GB
    model: CausalWan = field(init=False)
    model_key: str = field(init=False)

    def __post_init__(self):
        r = self.recipe
        if r.threads is not None:
            torch.set_num_threads(r.threads)
        self.device = r.device or default_device()
        self.model, self.model_key = load_model(r.checkpoint, r.lora, r.dtype, self.device)
        self.card = model_card(r.card, r.checkpoint, self.model, self.log)
        self.cache = PrefixCache(budget_bytes(self.cache_gb))
        self._vae = None

    def pixel_vae(self):
        """The recipe's VAE, read from its file the first time a line needs it (the krea preset) and kept."""
        if self._vae is None:
            from ..models.wan_vae_decoder import load_wan_vae

            self._vae = load_wan_vae(self.recipe.vae, self.model.device, self.model.dtype)
        return self._vae

    def render(self, script: str, on_block: Callable[[BlockDone], None] | None = None) -> RenderedLine:
        """Render one scene script (the official format); ``on_block`` hears of every block generated."""
        from ..cli.demo import script_shots
        r, model = self.recipe, self.model
        started = time.perf_counter()
        scenes = parse_scene_script(script)
        shots = script_shots(SceneList(), scenes, model.config.text_dim)
        choice = PresetChoice(preset=r.preset, recall_matching="idf", recall_scope="shots so far")
        vae = None if r.vae is None else self.pixel_vae
        plan = plan_run(shots, model.config, seed=r.seed, width=r.width, height=r.height, fps=r.fps, steps=r.steps,
                        shift=r.shift, choice=choice, dtype=model.dtype, noise=r.noise, card=self.card,
                        device=model.device, vae=vae)

        def progress(event) -> None:
            if on_block is not None:
                on_block(BlockDone(event.index, event.total, event.scene))

        result = generate(plan, lambda: model, cache=self.cache, model_key=self.model_key, on_block=progress)
        report = build_report(plan, result)
        text = report_text(report).split("\n\n")[0]
        return RenderedLine(render_files(result.latents, report, text, r.seed), text.splitlines()[0],
                            result.reused_shots, time.perf_counter() - started)


def render_files(latents: torch.Tensor, report: dict, text: str, seed: int) -> dict[str, bytes]:
    """The files of one rendered video, as bytes (what ``render`` writes, byte for byte)."""
    from safetensors.torch import save

    raw = to_comfy_latent(latents)
    # one metadata entry: safetensors writes several in no fixed order, and the same video must give the same bytes
    about = json.dumps({"layout": f"comfy LATENT [B,{raw.shape[1]},T,H/s,W/s] raw VAE space", "seed": str(seed)},
                       sort_keys=True)
    return {LATENTS_FILE: save({"samples": raw.contiguous()}, metadata={"echo_forcing": about}),
            REPORT_FILE: (json.dumps(report, indent=2) + "\n").encode("utf-8"),
            REPORT_TEXT_FILE: (text + "\n").encode("utf-8")}
