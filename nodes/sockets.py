"""The pack's socket types and node category (V3 ``io.Custom`` types)."""

from comfy_api.latest import io

CATEGORY = "video/echo_forcing"

Scenes = io.Custom("ECHO_SCENES")
"""A ``pipeline.SceneList``: the shots of a video, chained by Scene Prompt nodes or made by Scene Script."""

MemoryConfig = io.Custom("ECHO_MEMORY_CONFIG")
"""A ``memory.PresetChoice``: a cache preset and the options that were changed."""

ScenePoolType = io.Custom("ECHO_SCENE_POOL")
"""A ``memory.ScenePool``: scenes (recall frames) that later shots or later jobs can recall."""

StoryType = io.Custom("ECHO_STORY")
"""A ``pipeline.story.Story``: a video with its memory state, to save and continue in a later job."""
