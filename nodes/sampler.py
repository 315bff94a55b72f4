"""Autoregressive Sampler: generates the shots block by block with the chosen cache preset behind every layer
and returns a core LATENT (raw Wan2.1 VAE space, so core VAE Decode finishes the graph), the updated scene
pool (a new object) and a report."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..memory import PresetChoice, ScenePool
from ..models import CausalWan, model_cards
from ..models.block_forward import module_config
from ..models.checkpoints import STORED_DTYPES, CheckpointError
from ..models.config import WanConfig
from ..models.wan_vae_decoder import WanVAE, wan_vae_from_tensors
from ..pipeline import (
    RolloutInputError,
    SceneList,
    build_report,
    generate,
    plan_entries,
    plan_run,
    report_text,
    timeline,
    to_comfy_latent,
)
from ..pipeline.noise import MAX_SEED, NOISE_MODES, PER_SHOT
from ..pipeline.prefix_cache import DEFAULT_BUDGET_GB, PrefixCache, budget_bytes
from ..pipeline.rollout import MAX_SIDE, PIXELS_PER_TOKEN
from . import host
from .load_causal_dit import CARD_OPTION, MEMORY_EXPERT_OPTION
from .sockets import CATEGORY, MemoryConfig, ScenePoolType, Scenes, StoryType
from .validation import CombosChecked, pixel_problem

PIXELS_MIN, PIXELS_MAX, PIXELS_STEP = PIXELS_PER_TOKEN, MAX_SIDE, PIXELS_PER_TOKEN
"""Width and height: multiples of 16 pixels (the VAE's 8 times the DiT's 2x2 patch), at most 4096."""

SHOT_CACHE = PrefixCache(budget_bytes(DEFAULT_BUDGET_GB))
"""Shot boundaries kept between runs in this ComfyUI process (pipeline.prefix_cache)."""


def _wan_tree(model):
    """The Wan module tree inside a core MODEL, with a clear error for anything else."""
    tree = getattr(getattr(model, "model", None), "diffusion_model", None)
    if tree is None:
        raise RolloutInputError(f"the model input is not a ComfyUI diffusion model ({type(model).__name__}); "
                                "connect Load Causal DiT or core Load Diffusion Model")
    odd = sorted({str(p.dtype).replace("torch.", "") for p in tree.parameters() if p.dtype not in STORED_DTYPES})
    if odd:
        raise RolloutInputError(f"the model's weights are stored as {', '.join(odd)}, which the sampler cannot "
                                "compute with; load it with weight_dtype default or fp8 (float32, float16, "
                                "bfloat16 or fp8 weights)")
    try:
        cfg = module_config(tree)
    except (AttributeError, ValueError, IndexError, TypeError) as err:
        raise RolloutInputError(f"the model is not a Wan2.1 text-to-video DiT ({type(model.model).__name__}: {err}); "
                                "Echo-Forcing needs a causal Wan2.1-T2V student such as Self-Forcing") from None
    return tree, cfg


def model_card(model, cfg: WanConfig) -> tuple[model_cards.ModelCard | None, str]:
    """The model card the run follows and how it was found: the one Load Causal DiT put on the MODEL (LoRA nodes
    keep it), else the default of the weights' architecture (core loaders know no card)."""
    carried = getattr(model, "model_options", None)
    carried = carried.get(CARD_OPTION) if isinstance(carried, dict) else None
    if carried is None:
        return model_cards.default_card(cfg.dim, cfg.num_layers, cfg.in_dim, "the model (from a loader without "
                                                                              "model cards)")
    name, how = carried
    if name is None:
        return None, how
    card = model_cards.by_name(name)
    card.check_latents(cfg.in_dim)
    return card, how


def memory_expert(model, cfg: WanConfig):
    """SGF+'s memory expert that Load Causal DiT put on the MODEL (a core MODEL) and its Wan tree, or (None, None)."""
    options = getattr(model, "model_options", None)
    expert = options.get(MEMORY_EXPERT_OPTION) if isinstance(options, dict) else None
    if expert is None:
        return None, None
    tree, expert_cfg = _wan_tree(expert)
    if expert_cfg != cfg:
        raise RolloutInputError("the model's SGF+ memory expert has another shape than the model; reload it")
    return expert, tree


def pixel_vae(vae, dtype: torch.dtype):
    """A function that builds the pack's Wan2.1 VAE from a core VAE's weights (the run plan calls it only for the
    krea preset, which re-encodes decoded pixels), or None without a VAE."""
    if vae is None:
        return None
    stage = getattr(vae, "first_stage_model", None)
    if not callable(getattr(stage, "state_dict", None)):
        raise RolloutInputError(f"the vae input is not a ComfyUI VAE ({type(vae).__name__}); connect Load VAE with "
                                "wan_2.1_vae.safetensors")

    def build() -> WanVAE:
        try:
            return wan_vae_from_tensors(stage.state_dict(), "the vae input", "cpu", dtype)
        except CheckpointError as err:
            raise RolloutInputError(str(err)) from None
    return build


def _compute_dtype(model) -> torch.dtype:
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


class AutoregressiveSampler(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSampler",
            display_name="Autoregressive Sampler",
            category=CATEGORY,
            description=(
                "Generates a long multi-shot video block by block (3 latent frames = 12 video frames per block, or "
                "what the model card says) with a causal Wan2.1 model, switching prompts at each shot and keeping a "
                "bounded scene memory. "
                "Outputs a LATENT for core VAE Decode, the updated scene pool, a report and the story (to save and "
                "continue later). Progress and a preview are shown per block; Cancel stops before the next block. "
                "With reuse_shots, a run whose first shots are unchanged starts after them."),
            inputs=[
                io.Model.Input("model", tooltip="A causal Wan2.1-T2V model: Load Causal DiT, or core Load "
                                                "Diffusion Model with a Self-Forcing-style checkpoint."),
                Scenes.Input("scenes", tooltip="The shots: the last Scene Prompt of a chain, or a Scene Script "
                                               "(after Load Story: the story's shots and the new ones)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed. The same seed, shots and settings give the same video (the "
                                     "official code's random order)."),
                io.Int.Input("width", default=832, min=PIXELS_MIN, max=PIXELS_MAX, step=PIXELS_STEP,
                             tooltip="Video width in pixels, a multiple of 16. The models were trained at 832x480."),
                io.Int.Input("height", default=480, min=PIXELS_MIN, max=PIXELS_MAX, step=PIXELS_STEP,
                             tooltip="Video height in pixels, a multiple of 16."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frames per second used to turn shot durations into frames (Wan2.1: 16). "
                                       "Use the same value in Create Video."),
                io.Int.Input("steps", default=0, min=0, max=50,
                             tooltip="Denoising steps per block. 0: the model card's (Load Causal DiT), which "
                                     "the student was trained for: 4 (timesteps 1000, 750, 500, 250) for "
                                     "Self-Forcing and most others, 2 or 1 after a 4-step first frame for "
                                     "Causal Forcing++. Another number spaces that many steps evenly from 1000."),
                io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1,
                               tooltip="Timestep shift of the flow-matching schedule (5.0 as in training)."),
                MemoryConfig.Input("config", optional=True,
                                   tooltip="Echo Memory Config: the cache preset. Default: echo-forcing."),
                ScenePoolType.Input("pool", optional=True,
                                    tooltip="Scene Recall Pool: scenes of an earlier job that recalls may return "
                                            "to. Default: a new, empty pool."),
                io.Combo.Input("noise", options=list(NOISE_MODES), default=PER_SHOT, optional=True,
                               tooltip="per-shot: every shot draws its own noise from its seed (the Scene "
                                       "Prompt's shot_seed, else one derived from this seed and the shot's "
                                       "number), so a "
                                       "shot never changes because of a later one: edit, add or re-roll a shot and "
                                       "the shots before it are reused. official: the official code's order (one "
                                       "draw for the whole video), to reproduce its videos; then any change of "
                                       "the total length regenerates everything."),
                io.Boolean.Input("reuse_shots", default=True, optional=True,
                                 tooltip="Keep the state at every shot boundary in RAM, so the next run with the "
                                         "same first shots (same model, settings, prompts, durations, seeds) "
                                         "starts after them. The report says which shots were reused. Set the "
                                         "seed's control after generate to fixed: randomize re-rolls every shot."),
                io.Float.Input("shot_cache_gb", default=DEFAULT_BUDGET_GB, min=0.25, max=4096.0, step=0.25,
                               optional=True,
                               tooltip="RAM for kept shot boundaries, in GiB (shared by all samplers; the oldest "
                                       "leave first). About 0.6 GiB per boundary for Echo-Forcing at 1.3B / "
                                       "832x480 plus the video so far; the baselines keep their whole cache "
                                       "(3-6 GiB)."),
                io.Float.Input("shot_cache_disk_gb", default=0.0, min=0.0, max=65536.0, step=1.0, optional=True,
                               tooltip="Also write every shot boundary to ComfyUI's temp folder "
                                       "(echo_forcing/shot_cache), within this many GiB (the oldest files leave "
                                       "first), so edits stay cheap when RAM is short. ComfyUI empties its temp "
                                       "folder when it starts. 0 = RAM only."),
                io.Int.Input("stop_after_shot", default=0, min=0, max=1024, optional=True,
                             tooltip="Stop after this shot and return the shots so far (0 = all shots). Queue "
                                     "again with 0 (or a later shot) and the run goes on from there."),
                io.Vae.Input("vae", optional=True,
                             tooltip="krea preset only: the Wan2.1 VAE (Load VAE, wan_2.1_vae.safetensors). With "
                                     "it, Krea Realtime runs its release default: every block is decoded as it is "
                                     "made and the first context frame is re-encoded from those pixels. Without "
                                     "it, the video's first frame stays the first context frame. Other presets "
                                     "ignore it."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The video latents (Wan2.1 VAE space); connect to VAE Decode."),
                ScenePoolType.Output(display_name="pool",
                                     tooltip="The scene pool with this video's scenes added; connect to Save "
                                             "Scene Pool to reuse them in a later job."),
                io.String.Output(display_name="report",
                                 tooltip="Per shot: blocks, transition, recalled scene and similarity, decay, "
                                         "cache occupancy and time; then the same as JSON."),
                StoryType.Output(display_name="story",
                                 tooltip="The video with its memory state; connect to Save Story to add shots "
                                         "to it in a later job."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        # A run that a stop request ended returned fewer shots than its inputs ask for: ComfyUI must not serve
        # that result from its cache when the same graph is queued again (the shot cache makes the rerun cheap).
        return host.requested_stops()

    @classmethod
    def validate_inputs(cls, width: int | None = None, height: int | None = None):
        # ComfyUI checks every other input itself (the noise combo, the ranges of seed, fps, steps, shift, the
        # shot cache sizes and stop_after_shot), but not a widget's step, so the frame size is checked here.
        # ComfyUI repeats a returned message on each argument it passed, so it names the input that is wrong.
        problems = [pixel_problem("Autoregressive Sampler", name, value, PIXELS_MIN, PIXELS_MAX, PIXELS_STEP)
                    for name, value in (("width", width), ("height", height))]
        return "; ".join(p for p in problems if p) or True

    @classmethod
    def execute(cls, model, scenes: SceneList, seed: int, width: int, height: int, fps: float, steps: int,
                shift: float, config: PresetChoice | None = None, pool: ScenePool | None = None,
                noise: str = PER_SHOT, reuse_shots: bool = True, shot_cache_gb: float = DEFAULT_BUDGET_GB,
                shot_cache_disk_gb: float = 0.0, stop_after_shot: int = 0, vae=None) -> io.NodeOutput:
        # ---- everything is checked before the model is loaded or any block runs ----------------------------
        tree, cfg = _wan_tree(model)
        card, card_how = model_card(model, cfg)
        expert, expert_tree = memory_expert(model, cfg)
        dtype, device = _compute_dtype(model), mm.get_torch_device()
        encoder = scenes.encoder() if isinstance(scenes, SceneList) else None
        # The memory plan: on a GPU against what ComfyUI can make free there, weights included (it streams the
        # weights that do not fit); on the CPU against the RAM left (the weights are already in it).
        weights = sum(host.weights_on_device(t) for t in (tree, expert_tree) if t is not None) \
            if device.type != "cpu" else 0
        plan = plan_run(scenes, cfg, seed=seed, width=width, height=height, fps=fps, steps=steps or None, shift=shift,
                        choice=config, pool=pool, dtype=dtype, noise=noise, stop_after_shot=stop_after_shot,
                        encode_text=host.text_encoder(encoder) if encoder is not None else None, device=device,
                        device_memory=host.device_memory_available(device), weights=weights, can_offload=True,
                        card=card, card_note=card_how, vae=pixel_vae(vae, dtype))
        cache = None
        if reuse_shots:
            SHOT_CACHE.resize(budget_bytes(shot_cache_gb))
            SHOT_CACHE.use_folder(host.shot_cache_folder() if shot_cache_disk_gb else None,
                                  budget_bytes(shot_cache_disk_gb) if shot_cache_disk_gb else 0)
            cache = SHOT_CACHE

        # ---- load the model with room for the cache, then generate what is not cached ----------------------
        def load() -> CausalWan:  # ComfyUI leaves the run's working memory free and streams what does not fit
            mm.load_models_gpu([model] + ([expert] if expert is not None else []),
                               memory_required=plan.memory_need().working_bytes)
            return CausalWan(tree, dtype=dtype, device=device, memory_expert=expert_tree)

        node_id = cls.hidden.unique_id if cls.hidden else None
        progress = host.BlockProgress(node_id, list(plan.blocks), plan.settings.frames_per_block, cfg.in_dim)
        progress.event("echo_forcing.plan", {"total_blocks": plan.settings.num_blocks,
                                             "frames_per_block": plan.settings.frames_per_block,
                                             "scenes": plan_entries(plan.shots, plan.blocks)})
        stop = host.StopRequest(progress.prompt_id)
        try:
            result = generate(plan, load, cache=cache, model_key=host.model_key(model, dtype) + (
                                  "+" + host.model_key(expert, dtype) if expert is not None else "") + (
                                  "+vae:" + host.identity(vae) if plan.vae is not None else ""),
                              encoder_key=host.identity(encoder) if encoder is not None else "",
                              on_block=progress, interrupt=host.interrupt, stop_requested=stop,
                              on_reuse=progress.reused)
        finally:
            stop.close()
            mm.soft_empty_cache()
        report = build_report(plan, result)
        latent = {"samples": to_comfy_latent(result.latents).to(mm.intermediate_device())}
        out_pool = result.pool if result.pool is not None else (pool if pool is not None else ScenePool())
        text = report_text(report)
        shown = timeline(report)
        for scene in shown["scenes"]:  # the pictures the run already sent, one per shot done or reused
            if scene["index"] in progress.pictures:
                scene["thumbnail"] = progress.pictures[scene["index"]]
        return io.NodeOutput(latent, out_pool, text, plan.story_of(result),
                             ui={"echo_timeline": [shown], "text": [text.split("\n\n")[0]]})
