"""The block-wise autoregressive rollout of a causal Wan2.1 student.

For every block of 3 latent frames: start from its slice of the initial noise, run the 4 denoising calls
(t = 1000, 937.5, 833.33, 625 at shift 5) with the flow -> x0 conversion and fresh re-noising between them,
keep the last x0 as the block's output, then run one clean context pass at t = 0 on that output, which
writes the finished block into every layer's memory. 5 DiT forwards per block.

RNG order (so that a seed reproduces the official code): one CPU generator seeded with ``seed`` draws the
whole initial noise ``[B, T, 16, h, w]`` first, then one ``[B*3, 16, h, w]`` draw per non-final denoising
step per block, in order. Noise is drawn in float32 on the CPU and moved to the compute device, so a seed
gives the same video on any device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..memory.devices import synchronize
from ..memory.policy import CachePolicy
from ..memory.scene_pool import ScenePool
from ..memory.state import BlockReport, MemoryState, SceneInfo
from ..models.block_forward import CausalWan, TextContext
from ..models.flow_unipc import solve_block, unipc_timesteps
from ..models.schedule import DEFAULT_SHIFT, DEFAULT_STEPS, FlowMatchSchedule
from ..models.seam import BlockCall
from ..models.wan_vae_decoder import WanVAE
from .latents import LATENT_CHANNELS, LATENT_FORMATS, VAE_STRIDE, latent_format, video_frames
from .memory_need import check_memory, memory_need
from .noise import MAX_SEED, NOISE_MODES, OFFICIAL, PER_SHOT, BlockNoise, shot_seeds
from .pixel_reencoding import PixelReencoding
from .scene_script import Scene, Transition, scene_block_counts, validate_scenes
from .shot_boundary import ShotBoundary

SELF_FORCING_SOLVER, UNIPC_SOLVER = "self-forcing", "unipc"
SOLVERS = (SELF_FORCING_SOLVER, UNIPC_SOLVER)
PIXELS_PER_TOKEN = 16
"""VAE stride 8 times the DiT's 2x2 patch: width and height must be multiples of this."""
MAX_SIDE = 4096
"""The largest width or height (pixels). The students were trained at 832x480; 4096 is already 40x the tokens."""


def _nearest_multiple(value: int, step: int) -> int:
    return max(step, round(value / step) * step)


class RolloutInputError(ValueError):
    """A rollout request that cannot run; raised before any heavy work."""


class PendingText:
    """A prompt encoded only when its shot starts, so a long video holds one shot's text keys and values
    (94 MB per shot at 1.3B in bf16), not every shot's."""

    def __init__(self, encode: Callable[[], TextContext], batch: int = 1):
        self.encode, self.batch = encode, batch

    def __repr__(self) -> str:
        return "PendingText()"


def _batch_of(text: TextContext | PendingText) -> int:
    return text.batch if isinstance(text, PendingText) else text.k[0].shape[0]


@dataclass(frozen=True, repr=False)
class RolloutScene:
    """One shot of the video: its encoded prompt (or one encoded when the shot starts), its length in blocks
    and how it is entered."""

    text: TextContext | PendingText
    num_blocks: int
    prompt: str = ""
    entry: Transition | None = None
    """How the shot is entered (None for the first scene)."""
    recall_target: int | str | None = None
    label: str | None = None
    seed: int | None = None
    """The shot's own seed for per-shot noise (None: derived from the video's seed and the shot's index)."""
    start: torch.Tensor | None = None
    """Latent frames the shot starts from (an encoded image, or the last frames of a clip): normalised
    ``[1 or B, n, C, h, w]``, ``n`` at most the shot's frames. They are the shot's first ``n`` frames, in the
    output and in the memory as clean context (``_BlockLoop._denoise``)."""

    def __repr__(self) -> str:
        entry = self.entry and self.entry.label
        start = f", start {self.start.shape[1]} frames" if self.start is not None else ""
        return f"RolloutScene({self.label or self.prompt[:24]!r}, {self.num_blocks} blocks, entry={entry}{start})"

    def info(self) -> SceneInfo:
        return SceneInfo(self.prompt, self.num_blocks, self.entry, self.recall_target, self.label)


@dataclass(frozen=True)
class RolloutSettings:
    """What to generate. Sizes are in pixels and latent frames; everything is validated on creation."""

    num_frames: int
    """Latent frames to generate (a multiple of ``frames_per_block``); T latents decode to 4T - 3 video frames."""
    height: int = 480
    width: int = 832
    seed: int = 0
    steps: tuple[int, ...] = DEFAULT_STEPS
    first_block_steps: tuple[int, ...] | None = None
    """The steps of the first block the video denoises, when they differ (Causal Forcing++: 4 there, 1 or 2 after,
    as its students were trained); None: ``steps`` for every block."""
    warp: bool = True
    shift: float = DEFAULT_SHIFT
    frames_per_block: int = 3
    batch_size: int = 1
    noise: str = OFFICIAL
    """"official" (one draw of the whole initial noise) or "per-shot" (pipeline/noise.py)."""
    vae_stride: int = VAE_STRIDE[1]
    """Pixels per latent row and column: 8 for the Wan2.1 VAE (16 channels), 16 for the Wan2.2 VAE (48)."""
    solver: str = SELF_FORCING_SOLVER
    """How a block is denoised: "self-forcing" (x0, then fresh noise to the next step) or "unipc" (LongLive 2.0's
    deterministic flow UniPC, ``models.flow_unipc``; ``steps`` are then its integer timesteps)."""

    def __post_init__(self):
        for name in ("num_frames", "height", "width", "seed", "frames_per_block", "batch_size", "vae_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RolloutInputError(f"{name} must be an integer, got {value!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise RolloutInputError(f"seed must lie in 0..2^64-1 (0..{MAX_SEED}), got {self.seed}")
        if self.vae_stride not in (8, 16):
            raise RolloutInputError(f"vae_stride must be 8 (Wan2.1 VAE) or 16 (Wan2.2 VAE), got {self.vae_stride}")
        step = self.pixels_per_token
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < step or value % step:
                raise RolloutInputError(
                    f"{name} must be a positive multiple of {step} pixels (VAE stride {self.vae_stride} x patch 2), "
                    f"got {value}; nearest valid: {min(MAX_SIDE, _nearest_multiple(value, step))}")
            if value > MAX_SIDE:
                raise RolloutInputError(f"{name} is {value} pixels, over the limit of {MAX_SIDE}; the models were "
                                        "trained at 832x480")
        if self.frames_per_block < 1:
            raise RolloutInputError(f"frames_per_block must be at least 1, got {self.frames_per_block}")
        if self.num_frames < 1:
            raise RolloutInputError(f"num_frames must be at least one block ({self.frames_per_block} latent frames), "
                                    f"got {self.num_frames}")
        if self.num_frames % self.frames_per_block:
            up = -(-self.num_frames // self.frames_per_block) * self.frames_per_block
            raise RolloutInputError(f"num_frames ({self.num_frames}) must be a multiple of the block size "
                                    f"{self.frames_per_block}; use {up}")
        if self.batch_size < 1:
            raise RolloutInputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.noise not in NOISE_MODES:
            raise RolloutInputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.solver not in SOLVERS:
            raise RolloutInputError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.solver == UNIPC_SOLVER:
            want = unipc_timesteps(len(self.steps), self.shift) if self.steps else ()
            if tuple(self.steps) != want or self.first_block_steps is not None:
                raise RolloutInputError(f"the UniPC solver's {len(self.steps)} steps at shift {self.shift:g} are the "
                                        f"timesteps {list(want)}, got {list(self.steps)}; one step list for every "
                                        "block")
        try:
            FlowMatchSchedule(self.shift).denoising_timesteps(self.steps, self.warp)
            if self.first_block_steps is not None:
                FlowMatchSchedule(self.shift).denoising_timesteps(self.first_block_steps, self.warp)
        except ValueError as err:
            raise RolloutInputError(str(err)) from None

    @property
    def num_blocks(self) -> int:
        return self.num_frames // self.frames_per_block

    @property
    def pixels_per_token(self) -> int:
        """The VAE stride times the DiT's 2x2 patch: width and height are multiples of it (16, or 32 for Wan2.2)."""
        return self.vae_stride * 2

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // self.vae_stride, self.width // self.vae_stride

    def noise_shape(self, channels: int = LATENT_CHANNELS) -> tuple[int, ...]:
        """``[B, T, C, h, w]`` of the initial noise (C = the model's latent channels, 16 for Wan2.1)."""
        return (self.batch_size, self.num_frames, channels, *self.latent_size)


def scenes_for_script(scenes: Sequence[Scene], texts: Sequence[TextContext], fps: float = 16,
                      frames_per_block: int = 3) -> tuple[list[RolloutScene], int]:
    """Rollout scenes for parsed scene-script scenes and their encoded prompts, and the video's latent frames.

    Block counts follow the official duration rules (``pipeline.scene_script.scene_block_counts``).
    """
    if len(texts) != len(scenes):
        raise RolloutInputError(f"{len(scenes)} scenes but {len(texts)} encoded prompts")
    validate_scenes(scenes)
    blocks = scene_block_counts(scenes, fps=fps, frames_per_block=frames_per_block)
    out = [RolloutScene(text, n, s.prompt, s.entry, s.recall_target, s.label)
           for s, text, n in zip(scenes, texts, blocks, strict=True)]
    return out, sum(blocks) * frames_per_block


@dataclass(frozen=True)
class BlockEvent:
    """Reported after every finished block (progress, previews)."""

    index: int
    total: int
    start_frame: int
    scene: int
    latents: torch.Tensor
    """The block's clean output, normalised ``[B, F, C, h, w]`` float32 on the CPU."""
    seconds: float
    memory: BlockReport
    switch: dict | None = None
    """The scene switch report (mode, recalled scene, similarity, ...) on a scene's first block, else None."""


@dataclass
class RolloutResult:
    latents: torch.Tensor
    """Normalised output latents ``[B, T, C, h, w]`` float32 on the CPU (C = 16 for Wan2.1); after a stop, the
    shots done."""
    block_seconds: list[float] = field(default_factory=list)
    """Seconds per block (a reused block keeps the time it took when it was generated)."""
    block_reports: list[BlockReport] = field(default_factory=list)
    """What the memory reported after every block (reused blocks included)."""
    reused_blocks: int = 0
    reused_shots: int = 0
    """Blocks and shots taken from the resume point instead of generated."""
    shots_done: int = 0
    """Shots in ``latents`` (fewer than planned after a stop)."""
    end: ShotBoundary | None = None
    """The boundary after the last shot done (when boundaries were taken or ``keep_end`` was asked)."""
    cache_bytes: int = 0
    """Persistent memory-state bytes on the compute device at the end."""
    storage_bytes: int = 0
    """Persistent memory-state bytes kept off the compute device (CPU) at the end."""
    switches: list[dict] = field(default_factory=list)
    """One report per scene switch (mode, recalled scene, similarity, RoPE jump, old slots)."""
    pool: ScenePool | None = None
    """The scene pool after the video (a new object; the input pool is not changed)."""


def finished_result(boundary: ShotBoundary, settings: RolloutSettings) -> RolloutResult:
    """The result of a run whose every shot comes from ``boundary`` (nothing left to generate)."""
    if boundary.frames > settings.num_frames:
        raise RolloutInputError(f"the resume point holds {boundary.frames} latent frames, more than this video's "
                                f"{settings.num_frames}")
    return RolloutResult(latents=boundary.latents.clone(), block_seconds=list(boundary.block_seconds),
                         block_reports=list(boundary.block_reports), switches=[dict(s) for s in boundary.switches],
                         pool=boundary.pool, reused_blocks=boundary.block, reused_shots=boundary.shot,
                         shots_done=boundary.shot, end=boundary)


def check_start_latent(start: object, shot: int, frames: int, batch: int, channels: int,
                       latent_size: tuple[int, int], vae_stride: int = VAE_STRIDE[1]) -> None:
    """Refuse a start latent that cannot open shot ``shot`` (1-based) of ``frames`` latent frames: it must be
    normalised latents ``[1 or batch, n, channels, h, w]`` at this size, ``1 <= n <= frames``, finite."""
    where = f"shot {shot}'s start latent"
    h, w = latent_size
    if not isinstance(start, torch.Tensor) or start.dim() != 5 or not start.is_floating_point():
        got = list(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise RolloutInputError(f"{where} must be video latents [batch, frames, {channels}, {h}, {w}], got {got}")
    b, n, c, lh, lw = start.shape
    if c != channels:
        raise RolloutInputError(f"{where} has {c} channels but the model reads {channels}: encode the image or "
                                f"clip with the model's VAE (the {_vae_name(channels)} VAE)")
    if (lh, lw) != (h, w):
        px = vae_stride
        raise RolloutInputError(f"{where} is {lw * px}x{lh * px} pixels ({lh}x{lw} latents) but the video is "
                                f"{w * px}x{h * px} ({h}x{w}); resize the image or clip to the video's size before "
                                "encoding it")
    if b not in (1, batch):
        raise RolloutInputError(f"{where} holds {b} videos; give one (or one per video of the batch of {batch})")
    if not 1 <= n <= frames:
        raise RolloutInputError(f"{where} has {n} latent frames but the shot has {frames} ({frames // 3} blocks); "
                                f"use at most {frames} frames (the last {video_frames(frames)} video frames) or "
                                "make the shot longer")
    if not bool(torch.isfinite(start).all()):
        raise RolloutInputError(f"{where} holds NaN or infinite values")


def _vae_name(channels: int) -> str:
    return latent_format(channels).name if channels in LATENT_FORMATS else f"{channels}-channel"


def token_grid(patch_size: tuple[int, int, int], settings: RolloutSettings) -> tuple[int, int]:
    """Tokens per latent frame ``(h, w)`` for a model's ``(t, h, w)`` patch (30x52 at 480x832)."""
    _, ph, pw = patch_size
    h, w = settings.latent_size
    if h % ph or w % pw:
        raise RolloutInputError(f"latent size {h}x{w} is not divisible by the model's patch {ph}x{pw}")
    return h // ph, w // pw


def _scenes(text: TextContext | Sequence[RolloutScene], settings: RolloutSettings) -> list[RolloutScene]:
    scenes = [RolloutScene(text, settings.num_blocks)] if isinstance(text, TextContext) else list(text)
    if not scenes:
        raise RolloutInputError("no scene to generate")
    blocks = [s.num_blocks for s in scenes]
    if any(b < 1 for b in blocks):
        bad = next(i for i, b in enumerate(blocks) if b < 1)
        raise RolloutInputError(f"scene {bad + 1} has {blocks[bad]} blocks; every scene needs at least one")
    if sum(blocks) != settings.num_blocks:
        raise RolloutInputError(f"the scenes have {sum(blocks)} blocks in all but the settings ask for "
                                f"{settings.num_blocks} ({settings.num_frames} latent frames)")
    for i, scene in enumerate(scenes):
        if _batch_of(scene.text) != settings.batch_size:
            where = f"scene {i + 1}: " if len(scenes) > 1 else ""
            raise RolloutInputError(f"{where}text context has batch {_batch_of(scene.text)}, "
                                    f"settings ask for {settings.batch_size}")
    return scenes


def _check_starts(scenes: list[RolloutScene], settings: RolloutSettings, channels: int) -> None:
    for i, scene in enumerate(scenes):
        if scene.start is not None:
            check_start_latent(scene.start, i + 1, scene.num_blocks * settings.frames_per_block,
                               settings.batch_size, channels, settings.latent_size, settings.vae_stride)


def _check_resume(boundary: ShotBoundary, scenes: list[RolloutScene], settings: RolloutSettings,
                  shape: tuple[int, ...]) -> None:
    """Refuse a boundary this plan cannot continue from (before any model call)."""
    if boundary.shot > len(scenes):
        raise RolloutInputError(f"the resume point comes after shot {boundary.shot} but this video has only "
                                f"{len(scenes)} shots; add shots after it or start from the beginning")
    blocks = sum(s.num_blocks for s in scenes[:boundary.shot])
    if boundary.block != blocks:
        raise RolloutInputError(f"the resume point ends at block {boundary.block} but shots 1..{boundary.shot} of "
                                f"this video have {blocks} blocks; keep their durations or start from the beginning")
    want = (shape[0], boundary.block * settings.frames_per_block, *shape[2:])
    if tuple(boundary.latents.shape) != want:
        raise RolloutInputError(f"the resume point holds latents {list(boundary.latents.shape)} but this video "
                                f"needs {list(want)} (another size or model?)")
    if (boundary.noise_state is None) != (settings.noise == PER_SHOT):
        made = PER_SHOT if boundary.noise_state is None else OFFICIAL
        raise RolloutInputError(f"the resume point was made with {made!r} noise but this run uses "
                                f"{settings.noise!r}; use the same noise mode")
    if settings.noise == OFFICIAL and boundary.planned_frames != settings.num_frames:
        raise RolloutInputError(
            f"with the official noise order every block's noise depends on the video's length: the resume point "
            f"comes from a {boundary.planned_frames}-frame video, this one has {settings.num_frames}; "
            f"use per-shot noise to change lengths or add shots")


def _given_frames(scenes: list[RolloutScene], frames_per_block: int) -> list[bool]:
    """Per latent frame of the video: whether a start latent gives it."""
    given = []
    for scene in scenes:
        frames = scene.num_blocks * frames_per_block
        n = 0 if scene.start is None else min(scene.start.shape[1], frames)
        given += [True] * n + [False] * (frames - n)
    return given


def _undrawn_frames(given: list[bool], frames_per_block: int) -> list[bool]:
    """Per latent frame: whether it draws no initial noise with the official order, i.e. lies in a block given
    whole (a context pass only, as the official ``initial_latent`` runs). A frame held inside a denoised block
    draws its noise like the others and ignores it, as LongLive 2.0's image-to-video does with its image frame."""
    f = frames_per_block
    return [all(given[i - i % f:i - i % f + f]) for i in range(len(given))]


def _first_denoised_block(given: list[bool], frames_per_block: int) -> int:
    """Index of the first block of the video not wholly given by a start latent (``given``: per frame): the block
    ``first_block_steps`` applies to, the same in a run from scratch and in one resumed at a shot boundary."""
    blocks = len(given) // frames_per_block
    return next((b for b in range(blocks) if not all(given[b * frames_per_block:(b + 1) * frames_per_block])),
                blocks)


class NonFiniteError(RolloutInputError):
    """A block produced NaN or infinite latents (damaged weights or LoRA, an overflowing dtype)."""


def rollout(model: CausalWan, text: TextContext | Sequence[RolloutScene], settings: RolloutSettings,
            cache: CachePolicy, on_block: Callable[[BlockEvent], None] | None = None,
            interrupt: Callable[[], None] | None = None, *, resume_from: ShotBoundary | None = None,
            on_boundary: Callable[[ShotBoundary], None] | None = None,
            stop_after: Callable[[int], bool] | None = None, keep_end: bool = False,
            vae: WanVAE | None = None) -> RolloutResult:
    """Generate ``settings.num_frames`` latent frames with ``cache`` behind every layer.

    ``text`` is one prompt's context, or the scenes of a multi-shot video (their blocks must add up to the
    settings). ``interrupt`` is called before every block and may raise to cancel; ``on_block`` receives
    each finished block. Everything is validated before the first forward.

    Shot boundaries: ``resume_from`` continues from a :class:`ShotBoundary` of an earlier run of the same
    first shots (its latents, switches and block reports become this result's); ``on_boundary`` receives a
    boundary before every shot after the first and after the last one; ``stop_after(shot)`` is asked after
    every shot but the last (0-based) and ends the run there when it says so (the result then holds the
    shots done). ``keep_end``: the boundary after the last shot done is kept in ``result.end`` even without
    ``on_boundary`` (to save the video as a story).

    ``vae``: the Wan2.1 VAE, for a cache that re-encodes decoded pixels (``needs_pixels``: Krea Realtime's
    release default); every block is then decoded as it is made (``pipeline.pixel_reencoding``). Other caches
    ignore it.
    """
    scenes = _scenes(text, settings)
    _check_starts(scenes, settings, model.config.in_dim)
    vae = _check_vae(vae, cache, model)
    grid = _check_request(model, settings, cache, scenes, vae)
    shape = settings.noise_shape(model.config.in_dim)
    if resume_from is not None:
        _check_resume(resume_from, scenes, settings, shape)
    loop = _BlockLoop
    if getattr(cache, "rolling_window", False):  # Rolling Forcing: joint windows of blocks (pipeline/rolling_windows)
        from .rolling_windows import RollingWindowLoop, check_rolling_request

        check_rolling_request(scenes, settings.noise, settings.first_block_steps, resume_from is not None)
        cache.check_window(len(settings.steps))
        loop = RollingWindowLoop
    state = cache.create(model.config.num_layers, [s.info() for s in scenes])
    hooks = _Hooks(on_block, interrupt, on_boundary, stop_after, keep_end)
    run = loop(model, settings, scenes, state, grid, shape, hooks)
    if vae is not None:
        run.pixels = PixelReencoding(vae.to(model.device),
                                     keep=getattr(cache, "context_frames", 1) + settings.frames_per_block)
    if resume_from is not None:
        run.resume(resume_from)
    run.generate()
    return run.finish()


def _check_vae(vae: WanVAE | None, cache: CachePolicy, model: CausalWan) -> WanVAE | None:
    """The VAE the run decodes with: None unless ``cache`` re-encodes pixels, which then needs a Wan2.1 VAE."""
    if not getattr(cache, "needs_pixels", False):
        return None
    if vae is None:
        raise RolloutInputError("this cache re-encodes its first context frame from decoded pixels (Krea Realtime's "
                                "release default, keep_first_frame off): give the Wan2.1 VAE, or keep the first "
                                "frame (keep_first_frame on)")
    return check_vae(vae, model.config.in_dim)


def check_vae(vae: object, channels: int) -> WanVAE:
    """``vae`` itself when it is the pack's Wan VAE of ``channels`` latent channels; :class:`RolloutInputError`
    otherwise."""
    if not isinstance(vae, WanVAE):
        raise RolloutInputError(f"vae must be a models.wan_vae_decoder.WanVAE, got {type(vae).__name__}")
    if vae.decoder.z_dim != channels:
        raise RolloutInputError(f"the VAE makes {vae.decoder.z_dim}-channel latents but the model reads {channels}")
    return vae


def _check_request(model: CausalWan, settings: RolloutSettings, cache: CachePolicy,
                   scenes: list[RolloutScene], vae: WanVAE | None = None) -> tuple[int, int]:
    """Refuse a model, cache or size that cannot run (before any model call); the token grid per frame."""
    if model.config.in_dim != model.config.out_dim:
        raise RolloutInputError(f"the model maps {model.config.in_dim} -> {model.config.out_dim} latent channels; "
                                "a causal student predicts the same channels it reads")
    grid = token_grid(model.config.patch_size, settings)
    cache.check_length(settings.num_frames, settings.frames_per_block)
    check_memory(memory_need(model.config, model.dtype, cache, grid, frames=settings.num_frames,
                             frames_per_block=settings.frames_per_block, latent_size=settings.latent_size,
                             batch=settings.batch_size, noise=settings.noise, shots=len(scenes),
                             decode=0 if vae is None else vae.decode_bytes(settings.latent_size,
                                                                           settings.batch_size)), model.device)
    return grid


@dataclass(frozen=True)
class _Hooks:
    """The caller's callbacks of one :func:`rollout` (see its docstring)."""

    on_block: Callable[[BlockEvent], None] | None
    interrupt: Callable[[], None] | None
    on_boundary: Callable[[ShotBoundary], None] | None
    stop_after: Callable[[int], bool] | None
    keep_end: bool


class _BlockLoop:
    """One validated rollout: the shots, then their blocks, each denoised and written into the memory.

    ``index`` is the next block to generate; ``output`` holds every block done so far.
    """

    def __init__(self, model: CausalWan, settings: RolloutSettings, scenes: list[RolloutScene], state: MemoryState,
                 grid: tuple[int, int], shape: tuple[int, ...], hooks: _Hooks):
        self.model, self.settings, self.scenes, self.state, self.grid, self.hooks = (
            model, settings, scenes, state, grid, hooks)
        self.schedule = FlowMatchSchedule(settings.shift)
        self.timesteps = self.schedule.denoising_timesteps(settings.steps, settings.warp)
        first = settings.first_block_steps
        self.first_timesteps = self.timesteps if first is None else self.schedule.denoising_timesteps(first,
                                                                                                       settings.warp)
        self.b, self.f = settings.batch_size, settings.frames_per_block
        given = _given_frames(scenes, self.f)
        self.first_denoised = _first_denoised_block(given, self.f)
        self.noise = BlockNoise(settings.noise, settings.seed, shape,
                                shot_seeds(settings.seed, [s.seed for s in scenes]), _undrawn_frames(given, self.f))
        self.output = torch.empty(shape, dtype=torch.float32)
        self.result = RolloutResult(latents=self.output)
        self.memories = state.layers
        self.pixels: PixelReencoding | None = None  # set by rollout for a cache that re-encodes decoded pixels
        self.first_shot, self.index = 0, 0
        self.stopped = False

    def resume(self, boundary: ShotBoundary) -> None:
        """Start after ``boundary``'s shots: its memory, noise state, latents and reports become this run's."""
        result, f = self.result, self.f
        self.state.resume(boundary.memory, self.model.device)
        self.noise.resume(boundary.noise_state)
        self.first_shot, self.index = boundary.shot, boundary.block
        self.output[:, :self.index * f] = boundary.latents
        if self.pixels is not None:  # the decoder's history is a function of the latents so far
            self.pixels.replay(self.output[:, :self.index * f])
        result.switches = [dict(s) for s in boundary.switches]
        result.block_reports = list(boundary.block_reports)
        result.block_seconds = list(boundary.block_seconds)
        result.reused_blocks, result.reused_shots = self.index, self.first_shot

    def boundary(self, shot: int) -> ShotBoundary:
        """The shot boundary before ``shot`` (everything done so far), handed to ``on_boundary`` if given."""
        model, result, f = self.model, self.result, self.f
        synchronize(model.device)  # asynchronous copies into pinned memory are complete before they are copied
        made = ShotBoundary(shot, self.index, self.output[:, :self.index * f].clone(),
                            self.state.snapshot(device=model.device), self.noise.state(),
                            tuple(dict(s) for s in result.switches), tuple(result.block_reports),
                            tuple(result.block_seconds), self.state.result_pool(), self.settings.num_frames)
        if self.hooks.on_boundary is not None:
            self.hooks.on_boundary(made)
        return made

    def generate(self) -> None:
        """Generate the shots from ``first_shot`` on, unless ``stop_after`` ends the run after one."""
        result, scenes = self.result, self.scenes
        result.shots_done = self.first_shot
        for scene_index in range(self.first_shot, len(scenes)):
            scene = scenes[scene_index]
            text = None  # the previous shot's text keys and values are freed before this shot's are made
            text = scene.text.encode() if isinstance(scene.text, PendingText) else scene.text
            if scene_index > 0:
                if scene_index > self.first_shot and self._stops_before(scene_index):
                    break
                self._switch_scene(scene_index, text)
            switch = result.switches[-1] if scene_index > 0 else None
            for block_in_scene in range(scene.num_blocks):
                if self.hooks.interrupt is not None:
                    self.hooks.interrupt()
                self._block(scene, scene_index, block_in_scene, text, switch)
            result.shots_done = scene_index + 1

    def _stops_before(self, scene_index: int) -> bool:
        """Ask ``stop_after`` about the shot before ``scene_index``; take the boundary there when one is wanted."""
        hooks = self.hooks
        self.stopped = hooks.stop_after is not None and hooks.stop_after(scene_index - 1)
        if hooks.on_boundary is not None or (self.stopped and hooks.keep_end):
            self.result.end = self.boundary(scene_index)
        return self.stopped

    def _switch_scene(self, scene_index: int, text: TextContext) -> None:
        """Tell the memory a new shot starts; re-encode the latest clean frames with its prompt if it asks."""
        model, start = self.model, self.index * self.f
        self.result.switches.append(self.state.start_scene(scene_index, start))
        recache = min(self.state.recache_frames(scene_index), start)
        if recache:  # LongLive: re-encode the latest clean frames with the new prompt, in one call
            first = start - recache
            clean = self.output[:, first:start].to(device=model.device, dtype=model.dtype)
            model(clean, torch.zeros((self.b, recache), dtype=torch.float32), text, self.memories,
                  BlockCall(first, recache, 0.0, True, self.grid))

    def _block(self, scene: RolloutScene, scene_index: int, block_in_scene: int, text: TextContext,
               switch: dict | None) -> None:
        """Generate block ``index``: denoise it, check it, write it into the memory and report it."""
        model, state, result, b, f = self.model, self.state, self.result, self.b, self.f
        started = time.perf_counter()
        start = self.index * f
        state.begin_block(block_in_scene == 0)
        context = state.context_frames(start)
        if context:  # Krea: the memory re-encodes its context (clean frames of the video so far) in one call
            n = len(context)
            clean = self.output[:, context]
            source = None if self.pixels is None else state.reencoded_context(start, f)
            if source is not None:  # its first frame re-encoded from the decoded pixels
                clean = torch.cat((self.pixels.encode(source), clean[:, 1:]), dim=1)
            model(clean.to(device=model.device, dtype=model.dtype),
                  torch.zeros((b, n), dtype=torch.float32), text, self.memories,
                  BlockCall(start - n, n, 0.0, True, self.grid))
        x0 = self._denoise(start, scene_index, block_in_scene, text, self._start_frames(scene, block_in_scene))
        self.output[:, start:start + f] = x0.float().cpu()
        if self.pixels is not None:
            self.pixels.add(self.output[:, start:start + f])
        self._check_finite(start, scene_index)
        state.before_context_pass()
        if state.context_pass_per_block:
            model(x0, torch.zeros((b, f), dtype=torch.float32), text, self.memories,
                  BlockCall(start, f, 0.0, True, self.grid))
        report = state.end_block(scene_index, block_in_scene == 0, block_in_scene == scene.num_blocks - 1)
        seconds = time.perf_counter() - started
        result.block_seconds.append(seconds)
        result.block_reports.append(report)
        if self.hooks.on_block is not None:
            self.hooks.on_block(BlockEvent(self.index, self.settings.num_blocks, start, scene_index,
                                           self.output[:, start:start + f], seconds, report,
                                           switch if block_in_scene == 0 else None))
        self.index += 1

    def _start_frames(self, scene: RolloutScene, block_in_scene: int) -> torch.Tensor | None:
        """The frames of the shot's start latent that fall in its block ``block_in_scene`` ``[B, k, C, h, w]``
        on the compute device (k <= F), or None."""
        if scene.start is None:
            return None
        first = block_in_scene * self.f
        frames = scene.start[:, first:first + self.f]
        if frames.shape[1] == 0:
            return None
        return frames.expand(self.b, *frames.shape[1:]).to(device=self.model.device, dtype=self.model.dtype)

    def _denoise(self, start: int, scene_index: int, block_in_scene: int, text: TextContext,
                 fixed: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising calls of the block at frame ``start``, re-noised between them; the last x0.

        ``fixed``: the block's first ``k`` frames are given (a start latent). A block given whole is not
        denoised: it enters the memory through the clean context pass alone, as the official ``initial_latent``
        path and ComfyUI's autoregressive image-to-video do. A block given in part is denoised with its given
        frames held clean at timestep 0 in every call (as LongLive's image-to-video holds its image frame), so
        blocks stay aligned. With the official order, frames of a block given whole draw no noise (the generated
        frames take the stream in order, as the official ``initial_latent`` runs do), while frames held inside a
        denoised block draw theirs and ignore it, as LongLive 2.0's image-to-video does (``_undrawn_frames``)."""
        model, schedule, noise, b, f = self.model, self.schedule, self.noise, self.b, self.f
        timesteps = self.first_timesteps if self.index == self.first_denoised else self.timesteps
        k = 0 if fixed is None else fixed.shape[1]
        if k == f:
            return fixed.clone()
        x = noise.initial(start, f, scene_index, block_in_scene).to(device=model.device, dtype=model.dtype)
        if k:
            x[:, :k] = fixed
        if self.settings.solver == UNIPC_SOLVER:
            return self._solve_unipc(x, start, text, fixed)
        for i, t in enumerate(timesteps):
            t_block = torch.full((b, f), float(t), dtype=torch.float32)
            t_block[:, :k] = 0.0
            flow = model(x, t_block, text, self.memories, BlockCall(start, f, float(t), False, self.grid))
            x0 = schedule.x0_from_flow(flow, x, t_block)
            if k:
                x0[:, :k] = fixed
            if i + 1 < len(timesteps):
                eps = noise.step(f).to(device=model.device, dtype=model.dtype)
                x = schedule.add_noise(x0, eps, timesteps[i + 1])
                if k:
                    x[:, :k] = fixed
        return x0

    def _solve_unipc(self, x: torch.Tensor, start: int, text: TextContext, fixed: torch.Tensor | None) -> torch.Tensor:
        """LongLive 2.0's block: the flow UniPC steps (no noise drawn), given frames held clean at timestep 0."""
        model, b, f = self.model, self.b, self.f
        k = 0 if fixed is None else fixed.shape[1]

        def flow(x_t: torch.Tensor, t: float) -> torch.Tensor:
            t_block = torch.full((b, f), t, dtype=torch.float32)
            t_block[:, :k] = 0.0
            return model(x_t, t_block, text, self.memories, BlockCall(start, f, t, False, self.grid))

        def hold(y: torch.Tensor) -> torch.Tensor:
            return torch.cat((fixed, y[:, k:]), dim=1)

        return solve_block(x, len(self.settings.steps), self.settings.shift, flow, hold if k else None)

    def _check_finite(self, start: int, scene_index: int) -> None:
        """:class:`NonFiniteError` when the block just written at frame ``start`` holds NaN or infinite values."""
        if not bool(torch.isfinite(self.output[:, start:start + self.f]).all()):
            raise NonFiniteError(
                f"block {self.index + 1} of {self.settings.num_blocks} (shot {scene_index + 1}) produced NaN or "
                "infinite values, so the video would be noise; nothing was returned. Check the model file and any "
                "LoRA (a damaged or badly merged file), or use bfloat16/float32 weights instead of float16")

    def finish(self) -> RolloutResult:
        """The result: the final boundary when wanted, the latents done, the memory's sizes and scene pool."""
        result, state, hooks = self.result, self.state, self.hooks
        synchronize(self.model.device)  # asynchronous copies into pinned memory (scene pool frames) are complete
        end_wanted = hooks.on_boundary is not None or hooks.keep_end
        if not self.stopped and result.shots_done > self.first_shot and end_wanted:
            result.end = self.boundary(len(self.scenes))
        if self.index < self.settings.num_blocks:  # stopped after a shot: the result holds the shots done
            result.latents = self.output[:, :self.index * self.f].clone()
        result.cache_bytes = state.device_bytes
        result.storage_bytes = state.storage_bytes
        result.pool = state.result_pool()
        return result
