"""ComfyUI adapters (V3 schema). The only part of the pack that imports ComfyUI.

This module is imported only by the pack's lazy ``comfy_entrypoint()``, i.e. inside a running ComfyUI,
so importing ``comfy_api`` at the top is fine here and nowhere else.
"""

from comfy_api.latest import ComfyExtension, io

# Every node class of the pack, in menu order.
NODES: list[type[io.ComfyNode]] = []


class EchoForcingExtension(ComfyExtension):
    """The pack's V3 extension: hands ComfyUI the list of node classes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


__all__ = ["NODES", "EchoForcingExtension"]
