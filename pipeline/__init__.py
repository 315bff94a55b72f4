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
from .run_report import BlockLog, build_report, plan_entries, report_text, timeline
from .scene_list import TRANSITIONS, SceneList, SceneListError, Shot, transition_from_name
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
                      "TRANSITIONS",
                      "BlockEvent",
                      "BlockLog",
                      "RolloutInputError",
                      "RolloutResult",
                      "RolloutScene",
                      "RolloutSettings",
                      "Scene",
                      "SceneList",
                      "SceneListError",
                      "ScenePlan",
                      "SceneScriptError",
                      "Shot",
                      "Transition",
                      "build_report",
                      "format_scene_script",
                      "from_comfy_latent",
                      "parse_scene_script",
                      "plan_blocks",
                      "plan_entries",
                      "report_text",
                      "rollout",
                      "scene_block_counts",
                      "scenes_for_script",
                      "timeline",
                      "to_comfy_latent",
                      "total_latent_frames",
                      "transition_from_name",
                      "video_frames",
]
