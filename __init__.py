"""Echo-Forcing for ComfyUI: long multi-shot video with a causal Wan2.1 student and scene memory.

ComfyUI imports this folder under its absolute path, so everything inside the pack uses relative
imports, and nothing from ComfyUI is imported at module import: the nodes are loaded lazily by
`comfy_entrypoint()`. Outside ComfyUI the same folder is the Python package `echo_forcing`.
"""

__version__ = "0.1.0"

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: build the extension (imports ComfyUI only now)."""
    from .nodes.extension import EchoForcingExtension

    return EchoForcingExtension()


__all__ = ["WEB_DIRECTORY", "__version__", "comfy_entrypoint"]
