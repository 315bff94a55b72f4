"""The rollout: scene scripts, scenes to blocks, the block loop, RNG, events, and the latent layouts at the
ComfyUI boundary. No ComfyUI imports.

The names below are loaded on first use (PEP 562), so importing one torch-free module of this package (the
scene-script parser, which the batch client uses) does not import torch. ``from .pipeline import X`` works for
every name in ``__all__`` as before.
"""

from __future__ import annotations

from ..lazy_package import install

# name -> the module of this package that defines it
_EXPORTS = {
    **dict.fromkeys(("from_comfy_latent", "to_comfy_latent", "video_frames"), "latents"),
    **dict.fromkeys(("NOISE_MODES", "OFFICIAL", "PER_SHOT"), "noise"),
    **dict.fromkeys(("PrefixCache", "PrefixCacheError"), "prefix_cache"),
    **dict.fromkeys(("BlockEvent", "RolloutInputError", "RolloutResult", "RolloutScene", "RolloutSettings", "rollout",
                     "scenes_for_script"), "rollout"),
    **dict.fromkeys(("RunPlan", "generate", "plan_run"), "run_plan"),
    **dict.fromkeys(("build_report", "plan_entries", "report_text", "timeline"), "run_report"),
    **dict.fromkeys(("SceneList", "SceneListError", "Shot", "transition_from_name"), "scene_list"),
    **dict.fromkeys(("Scene", "ScenePlan", "SceneScriptError", "Transition", "format_scene_script",
                     "parse_scene_script", "plan_blocks", "scene_block_counts", "total_latent_frames"),
                    "scene_script"),
    "ShotBoundary": "shot_boundary",
}


install(__name__, _EXPORTS)

__all__ = [
    "NOISE_MODES", "OFFICIAL", "PER_SHOT", "BlockEvent", "PrefixCache", "PrefixCacheError",
    "RolloutInputError", "RolloutResult", "RolloutScene", "RolloutSettings", "RunPlan", "Scene", "SceneList",
    "SceneListError", "ScenePlan", "SceneScriptError", "Shot", "ShotBoundary", "Transition", "build_report",
    "format_scene_script", "from_comfy_latent", "generate", "parse_scene_script", "plan_blocks", "plan_entries",
    "plan_run", "report_text", "rollout", "scene_block_counts", "scenes_for_script", "timeline", "to_comfy_latent",
    "total_latent_frames", "transition_from_name", "video_frames",
]
