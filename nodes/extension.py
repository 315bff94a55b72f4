"""The pack's V3 extension: registers the model folder and hands ComfyUI the node classes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import host
from .load_causal_dit import LoadCausalDiT
from .memory_nodes import EchoMemoryConfig, SaveScenePool, SceneRecallPool
from .sampler import AutoregressiveSampler
from .scene_nodes import ScenePrompt, SceneScript

NODES: list[type[io.ComfyNode]] = [
    LoadCausalDiT,
    ScenePrompt,
    SceneScript,
    EchoMemoryConfig,
    SceneRecallPool,
    AutoregressiveSampler,
    SaveScenePool,
]
"""Every node class of the pack, in menu order."""


class EchoForcingExtension(ComfyExtension):
    async def on_load(self) -> None:
        host.register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        host.register_folders()
        return list(NODES)
