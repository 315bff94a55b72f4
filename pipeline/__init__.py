"""The rollout: scene scripts, scenes to blocks, the block loop, RNG, events, and the latent layouts at the
ComfyUI boundary. No ComfyUI imports."""

from .latents import from_comfy_latent, to_comfy_latent, video_frames
from .rollout import (
                      BlockEvent,
                      RolloutInputError,
                      RolloutResult,
                      RolloutScene,
                      RolloutSettings,
                      rollout,
                      scenes_for_script,
)
from .scene_script import (
                      Scene,
                      ScenePlan,
                      SceneScriptError,
                      Transition,
                      format_scene_script,
                      parse_scene_script,
                      plan_blocks,
                      scene_block_counts,
                      total_latent_frames,
)

__all__ = [
    "BlockEvent",
    "RolloutInputError",
    "RolloutResult",
    "RolloutScene",
    "RolloutSettings",
    "Scene",
    "ScenePlan",
    "SceneScriptError",
    "Transition",
    "format_scene_script",
    "from_comfy_latent",
    "parse_scene_script",
    "plan_blocks",
    "rollout",
    "scene_block_counts",
    "scenes_for_script",
    "to_comfy_latent",
    "total_latent_frames",
    "video_frames",
]
