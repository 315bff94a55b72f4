"""Echo Memory Config (a cache preset and its options), Scene Recall Pool (new, or a pool saved by an
earlier job) and Save Scene Pool (so a later queue run can recall this run's scenes)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..memory import PRESET_DEFAULT, PRESETS, PresetChoice, ScenePool, ScenePoolError, pool_file, pool_names
from ..memory.kv_storage import AUTO, KV_STORAGE_CHOICES
from ..memory.presets import UNIFIED_ROPE_PRESETS
from . import host
from .sockets import CATEGORY, MemoryConfig, ScenePoolType
from .validation import CombosChecked, file_name_problem

NEW_POOL = "new (empty)"


def _preset_help() -> str:
    return "\n".join(f"{p.name}: {p.title} - keeps {p.keeps}" for p in PRESETS.values())


class EchoMemoryConfigNode(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingMemoryConfig",
            display_name="Echo Memory Config",
            category=CATEGORY,
            description=(
                "Chooses what the video model remembers while it generates block by block. echo-forcing (the "
                "default) keeps anchors from the start of each shot, a compressed summary of the middle and the "
                "most recent frames, and a pool of finished scenes to recall; the other presets are the published "
                "baselines, for side-by-side comparisons. Memory stays the same size however long the video."),
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="echo-forcing",
                               tooltip="What the cache keeps:\n" + _preset_help()),
                io.Combo.Input("recall_matching", options=PresetChoice.menu("recall_matching"), default=PRESET_DEFAULT,
                               tooltip="How a recall finds the earlier scene most like the new shot. similar: by "
                                       "meaning, with the text encoder (needs a CLIP on the shots). idf: by shared "
                                       "rare words, no encoder. Echo-Forcing presets only."),
                io.Combo.Input("phase_compression", options=PresetChoice.menu("compression"), default=PRESET_DEFAULT,
                               tooltip="Keep a compressed summary of the frames that leave the recent window (on), "
                                       "or simply forget them (off). Echo-Forcing presets only."),
                io.Combo.Input("memory_decay", options=PresetChoice.menu("decay"),
                               default=PRESET_DEFAULT,
                               tooltip="After a transition, fade out the previous scene's memory faster where it "
                                       "differs more from the new shot (difference-aware), or keep it at full "
                                       "strength until it is dropped (off). Echo-Forcing presets only."),
                io.Int.Input("scene_pool_size", default=0, min=0, max=1024,
                             tooltip="Most finished scenes kept for recalls (oldest dropped). 0 = the preset's "
                                     "default (64)."),
                io.Combo.Input("rope_positions", options=PresetChoice.menu("rope"), default=PRESET_DEFAULT,
                               optional=True,
                               tooltip="Where the model places remembered frames in time. unified: the first "
                                       "frames stay at the start and the newest frame never moves past the 21 "
                                       "frames the model was trained on, however long the video (Echo-Infinity's "
                                       "recipe). For " + ", ".join(UNIFIED_ROPE_PRESETS) + " only; the other "
                                       "presets have their own rule."),
                io.Combo.Input("recall_scope", options=PresetChoice.menu("recall_scope"), default="shots so far",
                               optional=True,
                               tooltip="Which prompts a recall compares with. shots so far: the shot being "
                                       "entered and the ones before it (and the pool), so no shot depends on a "
                                       "later one: edit or add a later shot and the earlier ones are reused. "
                                       "whole video (the preset default, as the official code): every prompt of "
                                       "the video, so editing any prompt regenerates from the first recall. "
                                       "Echo-Forcing presets only."),
                io.Combo.Input("kv_storage", options=list(KV_STORAGE_CHOICES), default=AUTO, optional=True,
                               tooltip="How the memory keeps its keys and values. auto: as the model computes "
                                       "them (bf16) when that fits the GPU, else fp8, else the run is refused "
                                       "before it starts, with the figures. compute: always bf16 (exact). "
                                       "fp8_e4m3: about half the memory (the 1.3B cache at 832x480 drops from "
                                       "6.2 to 3.3 GB) for a small, measured error (docs/HARDWARE.md). fp8 is "
                                       "for the echo-forcing presets."),
                io.Float.Input("attention_bias", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="krea preset only: how much the block attends to the past context frames "
                                       "(all but the first); log(bias) is added to their attention logits. 0 = the "
                                       "preset's (1, none); Krea's ports use 0.3."),
            ],
            outputs=[MemoryConfig.Output(display_name="config",
                                         tooltip="Connect to the Autoregressive Sampler's config input.")],
        )

    @classmethod
    def execute(cls, preset: str, recall_matching: str, phase_compression: str, memory_decay: str,
                scene_pool_size: int, rope_positions: str = PRESET_DEFAULT,
                recall_scope: str = "shots so far", kv_storage: str = AUTO,
                attention_bias: float = 0.0) -> io.NodeOutput:
        return io.NodeOutput(PresetChoice(preset, recall_matching, phase_compression, memory_decay, scene_pool_size,
                                          rope_positions, recall_scope, kv_storage, attention_bias))


class SceneRecallPool(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSceneRecallPool",
            display_name="Scene Recall Pool",
            category=CATEGORY,
            description=(
                "The scenes a recall can return to. 'new' starts empty (recalls then use earlier shots of this "
                "video); or pick a pool saved by Save Scene Pool in an earlier job to bring its scenes back, by "
                "label or automatically. Pools are saved in ComfyUI's output folder under echo_forcing/scene_pools "
                "and only fit the model and resolution they were made with."),
            inputs=[
                io.Combo.Input("pool", options=[NEW_POOL, *pool_names(host.pool_folder())], default=NEW_POOL,
                               tooltip="'new (empty)', or the name of a saved pool (refresh with R after a run "
                                       "saved one)."),
            ],
            outputs=[ScenePoolType.Output(display_name="pool",
                                          tooltip="Connect to the Autoregressive Sampler's pool input.")],
        )

    @classmethod
    def validate_inputs(cls, pool: str | None = None):
        if pool == NEW_POOL:
            return True
        return file_name_problem(
            "Scene Recall Pool", "pool", pool,
            lambda name: host.name_problem(host.pool_folder(), name, "scene pool", must_exist=True),
            f"pick a saved pool or '{NEW_POOL}' (press R to refresh the list)") or True

    @classmethod
    def fingerprint_inputs(cls, pool: str):
        return pool if pool == NEW_POOL else host.file_fingerprint(host.pool_folder(), pool, "scene pool")

    @classmethod
    def execute(cls, pool: str) -> io.NodeOutput:
        if pool == NEW_POOL:
            return io.NodeOutput(ScenePool())
        return io.NodeOutput(ScenePool.load(pool_file(host.pool_folder(), pool)))


class SaveScenePool(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSaveScenePool",
            display_name="Save Scene Pool",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Saves the sampler's updated scene pool (one recall frame per finished scene) under a name, so a "
                "later job can load it with Scene Recall Pool and return to these scenes. Written to "
                "output/echo_forcing/scene_pools/<name>.safetensors; an existing pool of that name is replaced."),
            inputs=[
                ScenePoolType.Input("pool", tooltip="The sampler's pool output."),
                io.String.Input("name", default="echo_scenes",
                                tooltip="Pool name: letters, digits, spaces, '_', '-', '.' (no folders)."),
            ],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None):
        return file_name_problem("Save Scene Pool", "name", name,
                                 lambda n: host.name_problem(host.pool_folder(), n, "scene pool")) or True

    @classmethod
    def execute(cls, pool: ScenePool, name: str) -> io.NodeOutput:
        if not isinstance(pool, ScenePool):
            raise ScenePoolError(f"expected a scene pool, got {type(pool).__name__}")
        if not len(pool) or pool.signature is None:
            raise ScenePoolError("the scene pool is empty, so there is nothing to save: only the echo-forcing "
                                 "presets build scene pools (one recall frame per finished shot)")
        saved = pool.save(pool_file(host.pool_folder(), name))
        labels = ", ".join(e.label for e in pool.entries)
        replaced = " (replacing the pool of that name)" if saved.replaced else ""
        return io.NodeOutput(ui=ui.PreviewText(f"saved {len(pool)} scenes ({labels}) as scene pool "
                                               f"'{saved.path.stem}'{replaced}"))
