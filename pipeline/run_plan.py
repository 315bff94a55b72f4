"""The run plan: every check and decision between the shots an artist chained and the first block, in one
place that the sampler node, the command line and the tests all call (no ComfyUI imports).

``plan_run`` takes the shots (a ``SceneList``), the model's shape (a ``WanConfig``) and the run's options,
and either refuses them with a message that says what to change, before any model is loaded, or returns a
:class:`RunPlan`: the validated rollout settings, the blocks of every shot, the cache policy, notes for the
report, and the reuse keys of its shot boundaries (``pipeline.prefix_cache``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from ..memory import PoolSignature, PresetChoice, ScenePool, memory_footprint
from ..memory.config import MatchMethod, MatchScope
from ..memory.kv_storage import AUTO, COMPUTE, KV_STORAGES
from ..memory.state import SceneInfo
from ..models.block_forward import CausalWan
from ..models.config import WanConfig
from ..models.flow_unipc import unipc_timesteps
from ..models.model_cards import ModelCard
from ..models.schedule import evenly_spaced_steps, steps_down_to_zero
from ..models.wan_vae_decoder import WanVAE
from .digests import digest, tensor_digest
from .latents import LATENT_FORMATS, latent_format
from .memory_need import MemoryNeed, MemoryPlan, memory_need, plan_memory
from .noise import OFFICIAL, PER_SHOT, shot_seeds
from .prefix_cache import PrefixCache
from .rollout import (
    SELF_FORCING_SOLVER,
    UNIPC_SOLVER,
    BlockEvent,
    PendingText,
    RolloutInputError,
    RolloutResult,
    RolloutScene,
    RolloutSettings,
    check_start_latent,
    check_vae,
    finished_result,
    rollout,
    token_grid,
)
from .scene_list import SceneList
from .scene_script import Transition, scene_block_counts, validate_scenes
from .shot_boundary import ShotBoundary
from .story import Story, StoryError, story_header

FRAMES_PER_BLOCK = 3
MAX_FPS = 120.0
ROUTING_ENTRIES = (Transition.RECALL, Transition.AUTO)
KEY_VERSION = 1
"""Bumped whenever what a shot boundary holds or how it is computed changes (old cache entries never match)."""


@dataclass(frozen=True, repr=False)
class RunPlan:
    shots: SceneList
    blocks: tuple[int, ...]
    """Blocks of every shot (the official duration rule: the last shot takes the rest)."""
    settings: RolloutSettings
    fps: float
    choice: PresetChoice
    policy: object
    """The cache policy (``memory``), built with the text encoder and the scene pool."""
    model: WanConfig
    dtype: torch.dtype
    grid: tuple[int, int]
    pool: ScenePool | None
    """The scene pool the memory starts from (None for a new one or a preset without scene memory)."""
    seeds: tuple[int, ...]
    """Every shot's seed (per-shot noise; with the official order the video's seed draws everything)."""
    stop_after_shot: int = 0
    """Stop after this shot (1-based) and return the shots so far; 0 runs every shot."""
    notes: tuple[str, ...] = ()
    text_len: int = 512
    routes: bool = field(default=False)
    """Some shot is entered by a recall or 'auto' (the memory then matches prompts)."""
    story: Story | None = None
    """The story the shots continue (its boundary is where the run starts)."""
    memory: MemoryPlan | None = None
    """The memory plan: the KV storage chosen, whether weights are streamed, every option's need."""
    vae: WanVAE | None = field(default=None, repr=False, compare=False)
    """The VAE the run decodes with, for a memory that re-encodes decoded pixels (None otherwise)."""

    def __repr__(self) -> str:
        return (f"RunPlan({len(self.shots)} shots, {self.settings.num_blocks} blocks, {self.choice.preset}, "
                f"{self.settings.noise} noise)")

    @property
    def num_shots(self) -> int:
        return len(self.shots)

    def rollout_scenes(self, texts: Sequence) -> list[RolloutScene]:
        """The rollout's scenes for the shots' encoded texts (``CausalWan.encode_text`` of ``text_inputs``)."""
        scenes = self.shots.rollout_scenes(texts, self.blocks)
        return [replace(s, seed=seed) for s, seed in zip(scenes, self.seeds, strict=True)]

    def text_inputs(self) -> list[torch.Tensor]:
        """Every shot's prompt embeddings ``[1, L, D]``, cut to the model's text length."""
        return [s.text[:, :self.text_len] for s in self.shots.shots]

    def footprint(self):
        """The cache's persistent bytes (``memory.footprint``) for this model, dtype and size."""
        return memory_footprint(self.policy, self.model.num_layers, self.model.num_heads, self.model.head_dim,
                                self.dtype, self.grid, len(self.shots))

    def memory_need(self) -> MemoryNeed:
        """What the run needs on the device and in RAM, by part, with the KV storage it runs with
        (``pipeline.memory_need``)."""
        if self.memory is not None:
            return self.memory.need
        s = self.settings
        return memory_need(self.model, self.dtype, self.policy, self.grid, frames=s.num_frames,
                           frames_per_block=s.frames_per_block, latent_size=s.latent_size, batch=s.batch_size,
                           noise=s.noise, shots=len(self.shots))

    def story_of(self, result: RolloutResult) -> Story | None:
        """The video a run made, as a story to save or continue (None when no end state was kept)."""
        end = result.end
        if end is None:
            return None
        shots = SceneList(tuple(replace(s, seed=seed) for s, seed in zip(self.shots.shots[:end.shot], self.seeds,
                                                                           strict=False)))
        header = story_header(self.model, self.dtype, self.grid, self.settings, self.fps, self.choice.preset,
                              self.policy)
        start = self.story.start_pool if self.story is not None else self.pool
        return Story(shots, self.blocks[:end.shot], end, header, start)

    def stop_after(self, shot: int) -> bool:
        """``rollout(stop_after=...)``: stop after 0-based ``shot`` when the plan says so."""
        return 0 < self.stop_after_shot == shot + 1

    # ---- reuse keys --------------------------------------------------------------------------------------------

    def boundary_keys(self, model_key: str, encoder_key: str = "") -> list[str]:
        """The key of every shot boundary, before shot 2 .. after the last shot (``keys[k - 1]`` for the
        boundary after k shots): a hash of everything that decides shots 1..k.

        ``model_key`` names the weights (LoRAs and strengths included) and ``encoder_key`` the text encoder
        used for 'Similar' recall matching. Global parts: model, dtype, preset and every memory option,
        size, steps, shift, noise mode, the starting scene pool; with the official noise order also the seed
        and the video's total length (every block's noise depends on them). Per shot: its conditioning,
        prompt, blocks, transition, recall target, label, seed and start latent. With whole-video recall matching, a
        boundary after a recall or 'auto' shot also depends on every prompt of the video (the matching
        statistics are computed over all of them).
        """
        s = self.settings
        pool = "" if self.pool is None else pool_digest(self.pool)
        base = {"version": KEY_VERSION, "model": model_key, "dtype": str(self.dtype), "preset": self.choice.preset,
                "policy": repr(getattr(self.policy, "config", self.policy)), "size": [s.width, s.height],
                "kv_storage": getattr(self.policy, "kv_storage", COMPUTE),
                "steps": list(s.steps), "shift": s.shift, "warp": s.warp, "block": s.frames_per_block,
                "solver": s.solver,
                "first_steps": None if s.first_block_steps is None else list(s.first_block_steps),
                "batch": s.batch_size, "noise": s.noise, "pool": pool, "text_len": self.text_len}
        if s.noise == OFFICIAL:
            base.update(seed=s.seed, frames=s.num_frames)
        if self.routes and self._matching() is MatchMethod.SIMILAR:
            base["encoder"] = encoder_key
        parts = []
        for shot, text, n, seed in zip(self.shots.shots, self.text_inputs(), self.blocks, self.seeds, strict=True):
            scene = shot.scene
            parts.append({"text": tensor_digest(text), "prompt": scene.prompt, "blocks": n,
                          "entry": None if scene.entry is None else scene.entry.value,
                          "target": scene.recall_target, "label": scene.label,
                          "seed": seed if s.noise == PER_SHOT else None,
                          "start": None if shot.start is None else tensor_digest(shot.start)})
        every_prompt = [shot.scene.prompt for shot in self.shots.shots]
        keys, routed = [], False
        for k in range(1, len(parts) + 1):
            routed = routed or (k > 1 and self.shots.shots[k - 1].scene.entry in ROUTING_ENTRIES)
            scope = routed and self._scope() is MatchScope.VIDEO
            keys.append(digest({"base": base, "shots": parts[:k], "prompts": every_prompt if scope else None}))
        return keys

    def _matching(self) -> MatchMethod | None:
        config = getattr(self.policy, "config", None)
        return getattr(config, "match_method", None)

    def _scope(self) -> MatchScope | None:
        config = getattr(self.policy, "config", None)
        return getattr(config, "match_scope", None)


def pool_digest(pool: ScenePool) -> str:
    """A digest of a scene pool's content (labels, prompts, signature, every frame)."""
    entries = []
    for e in pool.entries:
        frames = {name: [tensor_digest(torch.stack([k for k, _ in f])) + tensor_digest(torch.stack([v for _, v in f]))]
                  if f is not None else None for name, f in (("recall", e.recall), ("select", e.select))}
        entries.append({"label": e.label, "prompt": e.prompt, "scene": e.scene, "source": e.source, **frames})
    sig = None if pool.signature is None else pool.signature.describe()
    return digest({"entries": entries, "max": pool.max_size, "signature": sig})


def plan_run(shots: SceneList, model: WanConfig, *, seed: int = 0, width: int = 832, height: int = 480,
             fps: float = 16.0, steps: int | None = None, shift: float = 5.0, choice: PresetChoice | None = None,
             pool: ScenePool | None = None, dtype: torch.dtype = torch.bfloat16, noise: str = PER_SHOT,
             encode_text=None, stop_after_shot: int = 0, device: torch.device | str = "cpu",
             device_memory: int | None = None, host_memory: int | None = None, weights: int = 0,
             can_offload: bool = False, card: ModelCard | None = None, card_note: str = "",
             vae: WanVAE | Callable[[], WanVAE] | None = None) -> RunPlan:
    """Check a run and decide everything before any model is loaded (see the module docstring).

    ``model`` is the DiT's shape, ``dtype`` the compute dtype (it decides the cache's and the pool's dtype),
    ``encode_text`` the text encoder for 'Similar' recall matching (a ``memory.routing.TextEncoder``).
    The memory plan (``pipeline.memory_need.plan_memory``) picks the KV storage (the choice's, or with ``auto``
    the first that fits) against ``device_memory`` (default: the device's total) and ``host_memory`` (default:
    the RAM available now), or refuses the run with the figures. ``weights`` is the bytes of the DiT's
    parameters on the device, as stored (fp8 weights one byte each); ``can_offload`` says the host
    (ComfyUI) can stream the weights that do not fit.

    ``card`` (``models.model_cards``) is how the student was trained: its frames per block and its steps (of every
    block and of the first one) are the run's; ``steps`` given overrides the card's number of steps (evenly
    spaced, as the official lists). Without a card: Self-Forcing's 3-frame blocks and ``steps`` (default 4).
    ``card_note`` (how the card was found) goes into the report's notes.

    ``vae``: the Wan2.1 VAE, or a function that builds it (called only when the preset uses it). The krea preset
    then runs the release's default, its first context frame re-encoded from the decoded pixels
    (``memory.krea_realtime``); without it, the video's first frame is kept. Other presets ignore it (noted).
    """
    _check_request(shots, model, fps, stop_after_shot)
    choice = choice if choice is not None else PresetChoice()
    block = card.frames_per_block if card is not None else FRAMES_PER_BLOCK
    if card is not None:
        card.check_latents(model.in_dim)
        if choice.is_echo and block != FRAMES_PER_BLOCK:
            raise RolloutInputError(f"{card.title} makes {block}-frame blocks, but Echo-Forcing's memory works on "
                                    f"{FRAMES_PER_BLOCK}-frame blocks; use one of its presets: "
                                    f"{', '.join(card.presets)}")
    solver = card.solver if card is not None else SELF_FORCING_SOLVER
    if solver == UNIPC_SOLVER:  # the solver's own timesteps for the number of steps (the card's, or asked)
        step_list = unipc_timesteps(steps if steps is not None else len(card.steps), shift)
    elif steps is not None and card is not None and card.steps[-1] == 0:  # Krea: a list ending with a call at 0
        step_list = steps_down_to_zero(steps)
    else:
        step_list = evenly_spaced_steps(steps) if steps is not None else card.steps if card is not None else \
            evenly_spaced_steps(4)
    story = shots.story
    if story is not None:
        pool = _continued_pool(story, pool, stop_after_shot)
    pool_labels = [e.label for e in pool.entries] if pool is not None and choice.is_echo else []
    blocks = _blocks(shots, story, fps, pool_labels, block)
    settings = RolloutSettings(num_frames=sum(blocks) * block, height=height, width=width, seed=seed,
                               steps=step_list, first_block_steps=card.first_block_steps if card else None,
                               shift=shift, frames_per_block=block, noise=noise, solver=solver,
                               vae_stride=latent_format(model.in_dim).spatial_stride)
    _check_text_width(shots, model)
    for i, (shot, n) in enumerate(zip(shots.shots, blocks, strict=True)):
        if shot.start is not None:
            check_start_latent(shot.start, i + 1, n * block, settings.batch_size, model.in_dim,
                               settings.latent_size, settings.vae_stride)
    notes = [f"scene script: {note}" for note in shots.notes]
    if card is not None and choice.preset not in card.presets:
        notes.append(f"{card.title} was made for the preset(s) {', '.join(card.presets)}; {choice.preset} runs it "
                     "with another memory than it was trained with")
    if card_note:
        notes.append(f"model card {card.name}: {card_note}" if card is not None else f"model card: {card_note}")
    if choice.ignored:
        notes.append(f"option(s) {', '.join(choice.ignored)} do not apply to the {choice.preset} preset; ignored")
    grid = token_grid(model.patch_size, settings)
    _check_pool(pool, choice, model, dtype, grid, notes)
    start_pool = pool if choice.is_echo else None
    policy = _checked_policy(choice, encode_text, start_pool, settings, shots, blocks)
    policy, vae = _pixel_reencoding(policy, vae, choice.preset, model, notes)
    if getattr(policy, "rolling_window", False):
        settings = _rolling_window_settings(policy, settings, shots, stop_after_shot, notes)
    if any(s.text.shape[1] > model.text_len for s in shots.shots):
        notes.append(f"prompts longer than {model.text_len} tokens were cut to {model.text_len} (as Wan2.1 does)")
    seeds = shot_seeds(seed, [s.seed for s in shots.shots])
    routes = choice.is_echo and any(s.scene.entry in ROUTING_ENTRIES for s in shots.shots[1:])
    allowed = choice.kv_options()
    if story is not None:
        if choice.kv_storage == AUTO:  # a story goes on in the format its memory is kept in
            allowed = (story.header.get("kv_storage", COMPUTE),) if choice.is_echo else allowed
        story.check(story_header(model, dtype, grid, settings, fps, choice.preset, _with_kv(policy, allowed[0])))
        if len(shots) > len(story.shots):
            story.check_extension()

    decode = 0 if vae is None else vae.decode_bytes(settings.latent_size, settings.batch_size)

    def need_of(kv: str) -> MemoryNeed:
        return memory_need(model, dtype, _with_kv(policy, kv), grid, frames=settings.num_frames,
                           frames_per_block=settings.frames_per_block, latent_size=settings.latent_size,
                           batch=settings.batch_size, noise=settings.noise, shots=len(shots), weights=weights,
                           decode=decode)

    others = [kv for kv in KV_STORAGES if kv not in allowed] if choice.is_echo else []
    memory = plan_memory(need_of, allowed, device, device_memory=device_memory, host_memory=host_memory,
                         can_offload=can_offload, other_options=others)
    policy = _with_kv(policy, memory.kv_storage)
    if memory.note():
        notes.append(memory.note())
    return RunPlan(shots, tuple(blocks), settings, fps, choice, policy, model, dtype, grid, start_pool, tuple(seeds),
                   stop_after_shot, tuple(notes), model.text_len, routes, story, memory, vae)


def _pixel_reencoding(policy, vae: WanVAE | Callable[[], WanVAE] | None, preset: str, model: WanConfig,
                      notes: list[str]) -> tuple[object, WanVAE | None]:
    """The policy and the VAE of the run: Krea Realtime re-encodes its first context frame from decoded pixels
    when it has the VAE (the release's default) and keeps the video's first frame otherwise; the others take none."""
    if not hasattr(policy, "keep_first_frame"):
        if vae is not None:
            notes.append(f"the VAE input is used by the krea preset only; {preset} ignores it")
        return policy, None
    if vae is None:  # (a policy without keep_first_frame and without a VAE is refused by the rollout)
        notes.append("krea: the video's first frame stays the first context frame (keep_first_frame); give the "
                     "sampler the Wan2.1 VAE for the release's default, which re-encodes it from the decoded pixels")
        return policy, None
    vae = check_vae(vae() if callable(vae) and not isinstance(vae, WanVAE) else vae, model.in_dim)
    notes.append("krea: the first context frame is re-encoded from the decoded pixels through the VAE (the "
                 "release's default); every block is decoded as it is made")
    return replace(policy, keep_first_frame=False), vae


def _rolling_window_settings(policy, settings: RolloutSettings, shots: SceneList, stop_after_shot: int,
                             notes: list[str]) -> RolloutSettings:
    """A joint-window rollout (Rolling Forcing) denoises blocks of several shots in one call: it takes the official
    noise order (noted when per-shot was asked), and refuses a stop after a shot, a story to continue, start
    latents and a separate first-block step list, before the model loads."""
    what = f"Rolling Forcing denoises {len(settings.steps)} blocks in one call, across shot boundaries"
    if stop_after_shot:
        raise RolloutInputError(f"{what}, so it cannot stop after a shot; set stop_after_shot to 0")
    if shots.story is not None:
        raise RolloutInputError(f"{what}; a story cannot be continued with it (its last blocks were finished by "
                                "windows that no longer exist); use another preset")
    if any(s.start is not None for s in shots.shots):
        raise RolloutInputError(f"{what}; it cannot start a shot from given frames: remove the start latents")
    if settings.first_block_steps is not None:
        raise RolloutInputError(f"{what}, every block with the same steps; the model card's first-block steps do "
                                "not apply")
    policy.check_window(len(settings.steps))
    if settings.noise == PER_SHOT:
        notes.append(f"noise: official order ({what}, so a shot's noise cannot be kept apart from the next's)")
        settings = replace(settings, noise=OFFICIAL)
    return settings


def _with_kv(policy, kv_storage: str):
    """``policy`` keeping its keys and values as ``kv_storage`` (a policy without the option keeps its own)."""
    if getattr(policy, "kv_storage", kv_storage) == kv_storage:
        return policy
    return replace(policy, kv_storage=kv_storage)


def _check_request(shots: SceneList, model: WanConfig, fps: float, stop_after_shot: int) -> None:
    """Refuse a bad fps, no shots, a model that is not text-to-video, or a shot to stop after that does not exist."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise RolloutInputError(f"fps must be a number in (0, {MAX_FPS}], got {fps!r}")
    if not isinstance(shots, SceneList) or not len(shots):
        raise RolloutInputError("no shots: connect a Scene Prompt or Scene Script to 'scenes'")
    if model.in_dim != model.out_dim:
        raise RolloutInputError(f"the model reads {model.in_dim} latent channels (an image-to-video or control "
                                "model); Echo-Forcing needs a Wan2.1 text-to-video model")
    if model.in_dim not in LATENT_FORMATS:
        raise RolloutInputError(f"the model makes {model.in_dim}-channel latents, neither the Wan2.1 VAE's (16) nor "
                                "the Wan2.2 VAE's (48)")
    if isinstance(stop_after_shot, bool) or not isinstance(stop_after_shot, int) or stop_after_shot < 0:
        raise RolloutInputError(f"stop_after_shot must be 0 (every shot) or a shot number, got {stop_after_shot!r}")
    if stop_after_shot > len(shots):
        raise RolloutInputError(f"stop_after_shot is {stop_after_shot} but there are only {len(shots)} shots; "
                                "use 0 to run every shot")


def _continued_pool(story: Story, pool: ScenePool | None, stop_after_shot: int) -> ScenePool | None:
    """The pool a continued story starts from (:func:`_story_pool`); a stop inside the story is refused."""
    pool = _story_pool(story, pool)
    if 0 < stop_after_shot < len(story.shots):
        raise RolloutInputError(f"stop_after_shot is {stop_after_shot} but the story already holds "
                                f"{len(story.shots)} shots; use 0 or a later shot")
    return pool


def _check_text_width(shots: SceneList, model: WanConfig) -> None:
    """Refuse text encodings whose width is not the model's (another text encoder)."""
    width_of_text = shots.shots[0].text.shape[-1]
    if width_of_text != model.text_dim:
        raise RolloutInputError(f"the shots' text encoding is {width_of_text} wide but the model takes "
                                f"{model.text_dim}; use the text encoder the model was trained with (umT5-XXL)")


def _check_pool(pool: ScenePool | None, choice: PresetChoice, model: WanConfig, dtype: torch.dtype,
                grid: tuple[int, int], notes: list[str]) -> None:
    """Refuse a scene pool made for another model shape or dtype (Echo-Forcing presets); note an ignored one."""
    if pool is not None and choice.is_echo and pool.signature is not None:  # early; the memory checks it too
        pool.signature.require(PoolSignature.of(model.num_layers, model.num_heads, model.head_dim, dtype, grid),
                               "the scene pool")
    if pool is not None and not choice.is_echo and len(pool):
        notes.append(f"the scene pool is used by Echo-Forcing presets only; ignored by {choice.preset}")


def _checked_policy(choice: PresetChoice, encode_text, start_pool: ScenePool | None, settings: RolloutSettings,
                    shots: SceneList, blocks: Sequence[int]):
    """The preset's cache policy, after it checked the video's length and (a scene memory) the shots' transitions
    and recall targets."""
    policy = choice.build(encode_text=encode_text, pool=start_pool)
    policy.check_length(settings.num_frames, settings.frames_per_block)
    check_scenes = getattr(policy, "check_scenes", None)
    if check_scenes is not None:  # transitions and recall targets (the scene memory's own checks)
        check_scenes([SceneInfo(s.scene.prompt, n, None if s.scene.entry is None else s.scene.entry.value,
                                s.scene.recall_target, shots.title(i))
                      for i, (s, n) in enumerate(zip(shots.shots, blocks, strict=True))])
    return policy


def _story_pool(story: Story, pool: ScenePool | None) -> ScenePool | None:
    """The pool a continued story starts from: its own (a different pool connected as well is refused)."""
    if pool is not None and len(pool) and (story.start_pool is None or pool_digest(pool) != pool_digest(
            story.start_pool)):
        raise StoryError("the story brings the scene pool it started from; disconnect the sampler's 'pool' input "
                         "(or connect the same pool) to continue it")
    return story.start_pool


def _blocks(shots: SceneList, story: Story | None, fps: float, pool_labels: Sequence[str],
            block: int = FRAMES_PER_BLOCK) -> list[int]:
    """Blocks per shot: the official rule (the last shot takes the rest); after a story, its shots keep their
    blocks and the new shots are counted as a video of their own."""
    if story is None:
        return scene_block_counts(shots.scenes, fps=fps, frames_per_block=block, pool_labels=pool_labels)
    done = len(story.shots)
    if shots.shots[:done] != story.shots.shots:
        raise StoryError("the shots do not start with the story's shots; chain new Scene Prompts after Load Story")
    validate_scenes(shots.scenes, pool_labels)
    new = shots.scenes[done:]
    if not new:
        return list(story.blocks)
    alone = [replace(new[0], entry=None, recall_target=None), *(replace(s, recall_target=None) for s in new[1:])]
    return [*story.blocks, *scene_block_counts(alone, fps=fps, frames_per_block=block)]


def generate(plan: RunPlan, load: Callable[[], CausalWan], *, cache: PrefixCache | None = None,
             model_key: str = "", encoder_key: str = "", resume_from: ShotBoundary | None = None,
             on_block: Callable[[BlockEvent], None] | None = None, interrupt: Callable[[], None] | None = None,
             stop_requested: Callable[[int], bool] | None = None,
             on_boundary: Callable[[ShotBoundary], None] | None = None,
             on_reuse: Callable[[ShotBoundary], None] | None = None) -> RolloutResult:
    """Run a plan, reusing what can be reused.

    Starts from ``resume_from`` (default: the end of the story the plan continues) or from the longest prefix
    ``cache`` holds for this plan, whichever is later, and stores every boundary it passes in ``cache``.
    ``load()`` gives the model and is only called when something is left to generate (a run whose every shot
    is cached loads nothing). The run stops after ``plan.stop_after_shot``, or after a shot once
    ``stop_requested(shot)`` (the 0-based index of the shot just finished) says so. ``on_reuse`` hears of the
    boundary the run starts from, before anything is generated.
    """
    keys = plan.boundary_keys(model_key, encoder_key) if cache is not None else []
    target = plan.stop_after_shot or plan.num_shots
    start = resume_from if resume_from is not None else plan.story.boundary if plan.story is not None else None
    if cache is not None:
        cached = cache.longest(keys[:target])
        if cached is not None and (start is None or cached.shot > start.shot):
            start = cached
    if start is not None and on_reuse is not None:
        on_reuse(start)
    if start is not None and start.shot == target:
        return finished_result(start, plan.settings)

    def passed(boundary: ShotBoundary) -> None:
        if cache is not None:
            cache.put(keys[boundary.shot - 1], boundary)
        if on_boundary is not None:
            on_boundary(boundary)

    def stop_after(shot: int) -> bool:
        return plan.stop_after(shot) or (stop_requested is not None and stop_requested(shot))

    model = load()
    texts = [PendingText(lambda t=t: model.encode_text(t)) for t in plan.text_inputs()]
    return rollout(model, plan.rollout_scenes(texts), plan.settings, plan.policy, on_block=on_block,
                   interrupt=interrupt, resume_from=start, stop_after=stop_after, keep_end=True,
                   on_boundary=passed if cache is not None or on_boundary is not None else None, vae=plan.vae)
