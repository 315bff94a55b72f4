"""Autoregressive Sampler: generates the shots block by block with the chosen cache preset behind every layer
and returns a core LATENT (raw Wan2.1 VAE space, so core VAE Decode finishes the graph), the updated scene
pool (a new object) and a report."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..memory import PoolSignature, PresetChoice, ScenePool, memory_footprint
from ..models import CausalWan, evenly_spaced_steps
from ..models.block_forward import module_config
from ..pipeline import (
    BlockLog,
    RolloutInputError,
    RolloutSettings,
    SceneList,
    build_report,
    plan_entries,
    report_text,
    rollout,
    scene_block_counts,
    timeline,
    to_comfy_latent,
)
from ..pipeline.rollout import MAX_SEED, token_grid
from . import host
from .sockets import CATEGORY, MemoryConfig, ScenePoolType, Scenes

FRAMES_PER_BLOCK = 3
ACTIVATION_FACTOR = 12
"""Working memory of one block forward, in units of the block's hidden states (FFN, q/k/v, attention)."""


def _wan_tree(model):
    """The Wan module tree inside a core MODEL, with a clear error for anything else."""
    tree = getattr(getattr(model, "model", None), "diffusion_model", None)
    if tree is None:
        raise RolloutInputError(f"the model input is not a ComfyUI diffusion model ({type(model).__name__}); "
                                "connect Load Causal DiT or core Load Diffusion Model")
    try:
        cfg = module_config(tree)
    except (AttributeError, ValueError, IndexError, TypeError) as err:
        raise RolloutInputError(f"the model is not a Wan2.1 text-to-video DiT ({type(model.model).__name__}: {err}); "
                                "Echo-Forcing needs a causal Wan2.1-T2V student such as Self-Forcing") from None
    if cfg.in_dim != cfg.out_dim:
        raise RolloutInputError(f"the model reads {cfg.in_dim} latent channels (an image-to-video or control "
                                "model); Echo-Forcing needs a Wan2.1 text-to-video model")
    return tree, cfg


def _compute_dtype(model) -> torch.dtype:
    base = model.model
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


class AutoregressiveSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSampler",
            display_name="Autoregressive Sampler",
            category=CATEGORY,
            description=(
                "Generates a long multi-shot video block by block (3 latent frames = 12 video frames per block) "
                "with a causal Wan2.1 model, switching prompts at each shot and keeping a bounded scene memory. "
                "Outputs a LATENT for core VAE Decode, the updated scene pool and a report. Progress and a preview "
                "are shown per block; Cancel stops before the next block."),
            inputs=[
                io.Model.Input("model", tooltip="A causal Wan2.1-T2V model: Load Causal DiT, or core Load "
                                                "Diffusion Model with a Self-Forcing-style checkpoint."),
                Scenes.Input("scenes", tooltip="The shots: the last Scene Prompt of a chain, or a Scene Script."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed. The same seed, shots and settings give the same video (the "
                                     "official code's random order)."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Video width in pixels, a multiple of 16. The models were trained at 832x480."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Video height in pixels, a multiple of 16."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frames per second used to turn shot durations into frames (Wan2.1: 16). "
                                       "Use the same value in Create Video."),
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Denoising steps per block. The few-step students are trained for 4 "
                                     "(timesteps 1000, 750, 500, 250)."),
                io.Float.Input("shift", default=5.0, min=0.1, max=20.0, step=0.1,
                               tooltip="Timestep shift of the flow-matching schedule (5.0 as in training)."),
                MemoryConfig.Input("config", optional=True,
                                   tooltip="Echo Memory Config: the cache preset. Default: echo-forcing."),
                ScenePoolType.Input("pool", optional=True,
                                    tooltip="Scene Recall Pool: scenes of an earlier job that recalls may return "
                                            "to. Default: a new, empty pool."),
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
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, scenes: SceneList, seed: int, width: int, height: int, fps: float, steps: int,
                shift: float, config: PresetChoice | None = None, pool: ScenePool | None = None) -> io.NodeOutput:
        # ---- everything is checked before the model is loaded or any block runs ----------------------------
        if not isinstance(scenes, SceneList) or not len(scenes):
            raise RolloutInputError("no shots: connect a Scene Prompt or Scene Script to 'scenes'")
        choice = config if config is not None else PresetChoice()
        tree, cfg = _wan_tree(model)
        pool_labels = [e.label for e in pool.entries] if pool is not None and choice.is_echo else []
        blocks = scene_block_counts(scenes.scenes, fps=fps, frames_per_block=FRAMES_PER_BLOCK, pool_labels=pool_labels)
        settings = RolloutSettings(num_frames=sum(blocks) * FRAMES_PER_BLOCK, height=height, width=width, seed=seed,
                                   steps=evenly_spaced_steps(steps), shift=shift,
                                   frames_per_block=FRAMES_PER_BLOCK)
        width_of_text = scenes.shots[0].text.shape[-1]
        if width_of_text != cfg.text_dim:
            raise RolloutInputError(f"the shots' text encoding is {width_of_text} wide but the model takes "
                                    f"{cfg.text_dim}; use the text encoder the model was trained with (umT5-XXL)")
        notes = [f"option(s) {', '.join(choice.ignored)} do not apply to the {choice.preset} preset; ignored"
                 ] if choice.ignored else []
        dtype, device = _compute_dtype(model), mm.get_torch_device()
        grid = token_grid(cfg.patch_size, settings)
        if pool is not None and choice.is_echo and pool.signature is not None:  # early; the memory checks it too
            pool.signature.require(PoolSignature.of(cfg.num_layers, cfg.num_heads, cfg.head_dim, dtype, grid),
                                   "the scene pool")
        if pool is not None and not choice.is_echo and len(pool):
            notes.append(f"the scene pool is used by Echo-Forcing presets only; ignored by {choice.preset}")
        encoder = scenes.encoder()
        policy = choice.build(encode_text=host.text_encoder(encoder) if encoder is not None else None,
                              pool=pool if choice.is_echo else None)
        policy.check_length(settings.num_frames, settings.frames_per_block)
        text_len = cfg.text_len
        if any(s.text.shape[1] > text_len for s in scenes.shots):
            notes.append(f"prompts longer than {text_len} tokens were cut to {text_len} (as Wan2.1 does)")

        # ---- load the model with room for the cache, then generate -----------------------------------------
        footprint = memory_footprint(policy, cfg.num_layers, cfg.num_heads, cfg.head_dim, dtype, grid, len(scenes))
        block_bytes = FRAMES_PER_BLOCK * grid[0] * grid[1] * max(cfg.dim, cfg.ffn_dim) * dtype.itemsize
        mm.load_models_gpu([model], memory_required=footprint.device_bytes + ACTIVATION_FACTOR * block_bytes)
        causal = CausalWan(tree, dtype=dtype, device=device)
        texts = [causal.encode_text(s.text[:, :text_len]) for s in scenes.shots]
        rollout_scenes = scenes.rollout_scenes(texts, blocks)
        log = BlockLog()
        progress = host.BlockProgress(cls.hidden.unique_id if cls.hidden else None, settings.num_blocks, log)
        progress.event("echo_forcing.plan", {"total_blocks": settings.num_blocks,
                                             "scenes": plan_entries(scenes, blocks)})
        try:
            result = rollout(causal, rollout_scenes, settings, policy, on_block=progress, interrupt=host.interrupt)
        finally:
            del texts, rollout_scenes
            mm.soft_empty_cache()
        report = build_report(scenes, blocks, settings, fps, choice.preset, choice.options(), result, log, notes)
        latent = {"samples": to_comfy_latent(result.latents).to(mm.intermediate_device())}
        out_pool = result.pool if result.pool is not None else (pool if pool is not None else ScenePool())
        text = report_text(report)
        return io.NodeOutput(latent, out_pool, text,
                             ui={"echo_timeline": [timeline(report)], "text": [text.split("\n\n")[0]]})
