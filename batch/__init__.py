"""The batch queue: one ComfyUI job per line of an official-format prompt file (``python -m echo_forcing queue``).

``jobs`` holds the pure logic (prompt lines, filling the API workflow, the resume manifest, ComfyUI's error
texts, the exit codes and default limits); ``outfiles`` every rule for the files the command writes or removes
(names, confinement to the output folder, temporary files); ``client`` talks to ComfyUI servers over HTTP and
the websocket (aiohttp, imported on first use). No ComfyUI and no torch imports: this is a client of ComfyUI's
API, and scaling out means more ComfyUI servers.
"""

from .jobs import (
    MANIFEST_NAME,
    SCENE_SCRIPT_CLASS,
    BatchInterrupted,
    BatchUsageError,
    LineResult,
    Manifest,
    PromptLine,
    Workflow,
    fill_workflow,
    load_workflow,
    read_prompt_file,
)

_CLIENT_NAMES = ("JobFailed", "ServerLost", "run_queue", "run_queue_sync")


def __getattr__(name: str):
    if name in _CLIENT_NAMES:  # keeps aiohttp out of `import echo_forcing.batch` until the client is used
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_NAME",
    "SCENE_SCRIPT_CLASS",
    "BatchInterrupted",
    "BatchUsageError",
    "JobFailed",
    "LineResult",
    "Manifest",
    "PromptLine",
    "ServerLost",
    "Workflow",
    "fill_workflow",
    "load_workflow",
    "read_prompt_file",
    "run_queue",
    "run_queue_sync",
]
