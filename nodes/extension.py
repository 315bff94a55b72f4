"""The pack's V3 extension: registers the model folder and the routes and hands ComfyUI the node classes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import host
from .load_causal_dit import LoadCausalDiT
from .memory_nodes import EchoMemoryConfigNode, SaveScenePool, SceneRecallPool
from .sampler import AutoregressiveSampler
from .scene_nodes import ScenePrompt, SceneScript
from .story_nodes import LoadStory, SaveStory

NODES: list[type[io.ComfyNode]] = [
    LoadCausalDiT,
    ScenePrompt,
    SceneScript,
    EchoMemoryConfigNode,
    SceneRecallPool,
    AutoregressiveSampler,
    SaveScenePool,
    SaveStory,
    LoadStory,
]
"""Every node class of the pack, in menu order."""


class EchoForcingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        host.register_folders()
        host.register_routes()  # here, not in on_load: ComfyUI v0.3.64 never calls on_load
        return list(NODES)
