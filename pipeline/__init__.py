"""The rollout: scene scripts, scenes to blocks, the block loop, RNG, events, and the latent layouts at the
ComfyUI boundary. No ComfyUI imports."""

from .latents import from_comfy_latent, to_comfy_latent, video_frames
from .noise import NOISE_MODES, OFFICIAL, PER_SHOT
from .prefix_cache import PrefixCache, PrefixCacheError
from .rollout import (
                      BlockEvent,
                      RolloutInputError,
                      RolloutResult,
                      RolloutScene,
                      RolloutSettings,
                      rollout,
                      scenes_for_script,
)
from .run_plan import RunPlan, generate, plan_run
from .run_report import build_report, plan_entries, report_text, timeline
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
from .shot_boundary import ShotBoundary

__all__ = [
                      "NOISE_MODES",
                      "OFFICIAL",
                      "PER_SHOT",
                      "TRANSITIONS",
                      "BlockEvent",
                      "PrefixCache",
                      "PrefixCacheError",
                      "RolloutInputError",
                      "RolloutResult",
                      "RolloutScene",
                      "RolloutSettings",
                      "RunPlan",
                      "Scene",
                      "SceneList",
                      "SceneListError",
                      "ScenePlan",
                      "SceneScriptError",
                      "Shot",
                      "ShotBoundary",
                      "Transition",
                      "build_report",
                      "format_scene_script",
                      "from_comfy_latent",
                      "generate",
                      "parse_scene_script",
                      "plan_blocks",
                      "plan_entries",
                      "plan_run",
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
