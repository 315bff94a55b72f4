"""ComfyUI adapters (V3 schema): the only part of the pack that imports ComfyUI.

``extension`` lists the nodes; one module per node family (``load_causal_dit``, ``scene_nodes``,
``memory_nodes``, ``sampler``); ``sockets`` names the pack's socket types and ``host`` holds the ComfyUI glue
(model folders, text encoding, progress, previews, websocket events). Nothing here is imported until
ComfyUI calls the pack's ``comfy_entrypoint()``.
"""
