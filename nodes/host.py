"""ComfyUI glue shared by the nodes: model folders, text encoding, per-block progress, previews and the
websocket events the timeline widget listens to (web/timeline.js)."""

from __future__ import annotations

import os
import uuid
import weakref
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from ..memory.files import named_file
from ..pipeline import BlockEvent
from ..pipeline.run_report import mode_name
from ..pipeline.shot_boundary import ShotBoundary

CAUSAL_DIT_FOLDER = "causal_dit"
"""Extra model folder for causal students (``models/causal_dit``); ``diffusion_models`` works too."""
POOL_SUBFOLDER = ("echo_forcing", "scene_pools")
"""Saved scene pools live in ``<ComfyUI output>/echo_forcing/scene_pools``."""
STORY_SUBFOLDER = ("echo_forcing", "stories")
"""Saved stories live in ``<ComfyUI output>/echo_forcing/stories``."""
NO_LORA = "none"


def register_folders() -> None:
    """Register ``models/causal_dit`` (keeping paths an extra_model_paths.yaml already added)."""
    folder_paths.add_model_folder_path(CAUSAL_DIT_FOLDER, os.path.join(folder_paths.models_dir, CAUSAL_DIT_FOLDER))
    paths, _ = folder_paths.folder_names_and_paths[CAUSAL_DIT_FOLDER]
    folder_paths.folder_names_and_paths[CAUSAL_DIT_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def dit_files() -> list[str]:
    """Checkpoint names in ``causal_dit`` and ``diffusion_models`` (a name in both is listed once)."""
    names = set(folder_paths.get_filename_list(CAUSAL_DIT_FOLDER)) | set(
        folder_paths.get_filename_list("diffusion_models"))
    return sorted(names, key=str.lower)


def dit_path(name: str) -> str:
    """The file of a checkpoint name from :func:`dit_files` (``causal_dit`` first)."""
    for folder in (CAUSAL_DIT_FOLDER, "diffusion_models"):
        path = folder_paths.get_full_path(folder, name)
        if path:
            return path
    raise FileNotFoundError(f"model file {name!r} was not found in models/{CAUSAL_DIT_FOLDER} or "
                            "models/diffusion_models; put the causal Wan2.1 checkpoint there and refresh (R)")


def lora_files() -> list[str]:
    return [NO_LORA, *folder_paths.get_filename_list("loras")]


def lora_path(name: str) -> str | None:
    if not name or name == NO_LORA:
        return None
    path = folder_paths.get_full_path("loras", name)
    if not path:
        raise FileNotFoundError(f"LoRA file {name!r} was not found in models/loras")
    return path


def pool_folder() -> Path:
    return Path(folder_paths.get_output_directory(), *POOL_SUBFOLDER)


def story_folder() -> Path:
    return Path(folder_paths.get_output_directory(), *STORY_SUBFOLDER)


def name_problem(folder: Path, name: str, what: str, must_exist: bool = False) -> str | None:
    """What is wrong with the file name ``name`` of a ``what`` in ``folder`` (``memory.files``), or None:
    a name that could leave the folder, or (``must_exist``) a file that is not there. For ``validate_inputs``,
    so a bad name is an HTTP 400 at submit time."""
    try:
        path = named_file(folder, name, what)
    except ValueError as err:
        return str(err)
    if must_exist and not path.is_file():
        return f"{what} {name!r} was not found in {Path(*folder.parts[-3:]).as_posix()}"
    return None


def file_fingerprint(folder: Path, name: str, what: str) -> str:
    """``fingerprint_inputs`` for a node reading a named file: changes when the file does."""
    path = named_file(folder, name, what)
    return f"{name}:{path.stat().st_mtime_ns}" if path.is_file() else name


def shot_cache_folder() -> Path:
    """Where shot boundaries spill to disk: ``<ComfyUI temp>/echo_forcing/shot_cache``."""
    return Path(folder_paths.get_temp_directory(), "echo_forcing", "shot_cache")


def encode_prompt(clip, text: str) -> torch.Tensor:
    """``[1, L, D]`` prompt embeddings from a core CLIP (as CLIPTextEncode makes them), on the CPU."""
    if clip is None:
        raise ValueError("no text encoder: connect a CLIP (CLIPLoader, type 'wan' with umT5-XXL)")
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return conditioning[0][0].to("cpu")


def text_encoder(clip):
    """A ``memory.routing.TextEncoder`` over a core CLIP: prompts -> zero-padded ``[N, L, D]``."""
    def encode(prompts: list[str]) -> torch.Tensor:
        rows = [encode_prompt(clip, p)[0].float() for p in prompts]
        out = torch.zeros(len(rows), max(r.shape[0] for r in rows), rows[0].shape[-1])
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
        return out
    return encode


def send(event: str, data: dict) -> None:
    """Send a websocket event to the client that queued the running prompt (no-op outside a server)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None:
        server.send_sync(event, data, server.client_id)


def prompt_id() -> str | None:
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return context.prompt_id if context is not None else None


class BlockProgress:
    """``on_block`` for the rollout: progress bar, a latent2rgb preview of the block's last frame, events."""

    def __init__(self, node_id: str | None, total: int):
        import latent_preview
        from comfy.latent_formats import Wan21

        fmt = Wan21()
        self.node_id, self.total = node_id, total
        self.prompt_id = prompt_id()
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)

    def event(self, name: str, data: dict) -> None:
        send(name, {"node": self.node_id, "prompt_id": self.prompt_id, **data})

    def reused(self, boundary: ShotBoundary) -> None:
        """The run starts after ``boundary``: the bar jumps over its blocks and the timeline is told."""
        self.bar.update_absolute(boundary.block, self.total)
        self.event("echo_forcing.reused", {"shots": boundary.shot, "blocks": boundary.block,
                                           "seconds_saved": round(sum(boundary.block_seconds), 3)})

    def __call__(self, event: BlockEvent) -> None:
        if event.switch:
            s = event.switch
            self.event("echo_forcing.switch", {
                "scene": event.scene, "mode": mode_name(s.get("mode")),
                "recalled": s.get("recalled"), "similarity": s.get("similarity")})
        frame = event.latents[:1, -1]  # [1, C, h, w], normalised (the space KSampler previews)
        preview = self.previewer.decode_latent_to_preview_image("JPEG", frame)
        self.bar.update_absolute(event.index + 1, self.total, preview)
        self.event("echo_forcing.block", {"block": event.index, "total": event.total, "scene": event.scene,
                                          "seconds": round(event.seconds, 3)})


_stop_requests: set[str] = set()
"""Prompt ids (running or queued when asked) whose run should stop after the current shot."""


class StopRequest:
    """``stop_requested`` for a run: true once ``POST /echo_forcing/stop_after_shot`` asked this prompt to stop
    after the current shot. ``close`` forgets the request when the run ends."""

    def __init__(self, prompt_id: str | None):
        self.prompt_id = prompt_id

    def __call__(self) -> bool:
        return self.prompt_id is not None and self.prompt_id in _stop_requests

    def close(self) -> None:
        if self.prompt_id is not None:
            _stop_requests.discard(self.prompt_id)


def _queue_ids(server) -> tuple[list[str], list[str]]:
    """The ids of the running and the queued prompts (a queue item is ``(number, prompt_id, ...)``)."""
    running, queued = server.prompt_queue.get_current_queue_volatile()
    return [item[1] for item in running], [item[1] for item in queued]


MAX_PROMPT_ID = 200


def register_routes() -> None:
    """``POST /echo_forcing/stop_after_shot`` with ``{"prompt_id": ...}`` (a running or queued prompt; ``{}``:
    the running one): that run ends successfully after its current shot with the shots done, and their
    boundary stays cached. An id that is neither running nor queued is refused (404), ``{}`` with nothing
    running too (409), so no request can stop a later run; requests for prompts that have ended are dropped."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_echo_forcing_routes", False):
        return
    server._echo_forcing_routes = True

    @server.routes.post("/echo_forcing/stop_after_shot")
    async def stop_after_shot(request):
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object, e.g. {\"prompt_id\": \"...\"} "
                                               "or {} for the running prompt"}, status=400)
        prompt = body.get("prompt_id")
        if prompt is not None and (not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_ID):
            return web.json_response({"error": "prompt_id must be a prompt id string"}, status=400)
        running, queued = _queue_ids(server)
        if prompt is None:
            if not running:
                return web.json_response({"error": "no prompt is running; give the prompt_id of a queued one"},
                                         status=409)
            targets = running
        elif prompt in running or prompt in queued:
            targets = [prompt]
        else:
            return web.json_response({"error": "no running or queued prompt has that prompt_id"}, status=404)
        _stop_requests.intersection_update(running + queued)  # forget requests for prompts that have ended
        _stop_requests.update(targets)
        return web.json_response({"stop_after_shot": targets})


_identities: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def identity(obj) -> str:
    """A token naming ``obj`` for as long as it lives (a model or text encoder loaded once keeps its token;
    a reload is another object and gets another)."""
    try:
        token = _identities.get(obj)
        if token is None:
            token = _identities[obj] = uuid.uuid4().hex
        return token
    except TypeError:
        return f"object {id(obj)}"


def model_key(model, dtype: torch.dtype) -> str:
    """What names a core MODEL's weights for shot reuse: the loaded model object, its patches (LoRAs and
    their strengths change ``patches_uuid``) and the compute dtype."""
    return f"{identity(model.model)}:{getattr(model, 'patches_uuid', '')}:{dtype}"


def interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (checked before every block)."""
    mm.throw_exception_if_processing_interrupted()
