"""ComfyUI glue shared by the nodes: model folders, text encoding, per-block progress, previews and the
websocket events the timeline widget listens to (web/timeline.js)."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
import weakref
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch

from ..memory.files import named_file
from ..models import model_cards
from ..pipeline import BlockEvent
from ..pipeline.run_plan import FRAMES_PER_BLOCK
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


THUMBNAIL_WIDTH = 160
"""Shot thumbnails are at most this wide (a latent2rgb picture is an eighth of the frame's width)."""


def shot_end_frames(blocks, frames_per_block: int = FRAMES_PER_BLOCK) -> list[int]:
    """The latent frame index of the last frame of every shot, from its block counts."""
    ends, frames = [], 0
    for n in blocks:
        frames += n * frames_per_block
        ends.append(frames - 1)
    return ends


class BlockProgress:
    """``on_block`` for the rollout: progress bar, a latent2rgb preview of the block's last frame, events, and a
    thumbnail of every shot as it ends (``echo_forcing.shot``) or is reused; ``pictures`` keeps them by shot
    index for the sampler's result."""

    def __init__(self, node_id: str | None, blocks: list[int], frames_per_block: int = FRAMES_PER_BLOCK,
                 channels: int = 16):
        import comfy.latent_formats
        import latent_preview

        fmt = comfy.latent_formats.Wan22() if channels == 48 else comfy.latent_formats.Wan21()
        self.node_id, self.total = node_id, sum(blocks)
        self.shot_ends = shot_end_frames(blocks, frames_per_block)
        self.last_blocks = {end // frames_per_block: shot for shot, end in enumerate(self.shot_ends)}
        self.prompt_id = prompt_id()
        self.pictures: dict[int, str] = {}
        self.bar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        self.previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)

    def event(self, name: str, data: dict) -> None:
        send(name, {"node": self.node_id, "prompt_id": self.prompt_id, **data})

    def thumbnail(self, frame: torch.Tensor) -> str:
        """A small JPEG data URL of one normalised latent frame ``[1, C, h, w]`` (latent2rgb, no VAE)."""
        picture = self.previewer.decode_latent_to_preview_image("JPEG", frame)[1]
        if picture.width > THUMBNAIL_WIDTH:
            picture = picture.resize((THUMBNAIL_WIDTH, max(1, round(picture.height * THUMBNAIL_WIDTH / picture.width))))
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def thumbnails(self, latents: torch.Tensor) -> list[str]:
        """One thumbnail per shot whose frames ``latents`` (normalised ``[B, T, C, h, w]``) hold, from its last
        frame, in shot order; each is kept in ``pictures``."""
        done = [shot for shot, end in enumerate(self.shot_ends) if end < latents.shape[1]]
        for shot in done:
            self.pictures[shot] = self.thumbnail(latents[:1, self.shot_ends[shot]])
        return [self.pictures[shot] for shot in done]

    def reused(self, boundary: ShotBoundary) -> None:
        """The run starts after ``boundary``: the bar jumps over its blocks and the timeline is told."""
        self.bar.update_absolute(boundary.block, self.total)
        self.event("echo_forcing.reused", {"shots": boundary.shot, "blocks": boundary.block,
                                           "seconds_saved": round(sum(boundary.block_seconds), 3),
                                           "thumbnails": self.thumbnails(boundary.latents)})

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
        if event.index in self.last_blocks:
            shot = self.last_blocks[event.index]
            self.pictures[shot] = self.thumbnail(frame)
            self.event("echo_forcing.shot", {"scene": shot, "state": "done", "thumbnail": self.pictures[shot]})


_stop_requests: dict[str, int | None] = {}
"""Prompt id (running or queued when asked) -> the shot number its run should stop after (None: the current
shot)."""


_requested_stops = 0
"""Runs ended early by a stop request, in this process."""


def requested_stops() -> int:
    """How many runs a stop request has ended so far: the sampler's fingerprint, so that a run the route stopped
    is not served from ComfyUI's cache when the same graph is queued again (its inputs did not change, its
    result did not cover them)."""
    return _requested_stops


class StopRequest:
    """``stop_requested`` for a run: asked with the 0-based index of each shot the run finishes, true once
    ``POST /echo_forcing/stop_after_shot`` asked this prompt to stop after that shot (or after the current one).
    ``close`` forgets the request when the run ends."""

    def __init__(self, prompt_id: str | None):
        self.prompt_id = prompt_id

    def __call__(self, shot: int) -> bool:
        global _requested_stops
        if self.prompt_id is None or self.prompt_id not in _stop_requests:
            return False
        after = _stop_requests[self.prompt_id]
        stop = after is None or shot + 1 >= after
        _requested_stops += stop
        return stop

    def close(self) -> None:
        if self.prompt_id is not None:
            _stop_requests.pop(self.prompt_id, None)


MAX_PROMPT_ID = 200
MAX_SHOT = 1 << 20
MAX_STOP_BODY = 4096
STOP_FIELDS = ("prompt_id", "shot", "client_id")


class StopRefused(ValueError):
    """A stop request that is refused, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def stop_target(body, running: list, queued: list) -> tuple[str, int | None]:
    """The prompt a stop request names and the shot to stop after (None: the current one), from the request's
    JSON ``body`` and ComfyUI's running and queued items (``(number, prompt_id, prompt, extra_data, ...)``).

    The request names its prompt (``prompt_id``, running or queued) and, when that prompt was queued by a
    client (``extra_data["client_id"]``, as the frontend and the queue client send it), that same
    ``client_id``: a request cannot stop a run somebody else queued by mistake. ``shot`` is a shot number
    from 1. Anything else raises ``StopRefused`` (400 malformed, 403 another client's run, 404 not running or
    queued)."""
    if not isinstance(body, dict):
        raise StopRefused(400, 'the body must be a JSON object: {"prompt_id": "...", "shot": 2, "client_id": "..."}')
    unknown = sorted(str(key)[:40] for key in body if key not in STOP_FIELDS)
    if unknown:
        raise StopRefused(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(STOP_FIELDS)}")
    prompt, shot, client = body.get("prompt_id"), body.get("shot"), body.get("client_id")
    if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_ID:
        raise StopRefused(400, "prompt_id must name the prompt to stop (the id /prompt answered with)")
    if shot is not None and (isinstance(shot, bool) or not isinstance(shot, int) or not 1 <= shot <= MAX_SHOT):
        raise StopRefused(400, "shot must be a shot number from 1 (stop after that shot), or left out "
                               "(stop after the current shot)")
    if client is not None and (not isinstance(client, str) or len(client) > MAX_PROMPT_ID):
        raise StopRefused(400, "client_id must be the client id string the prompt was queued with")
    item = next((item for item in (*running, *queued) if len(item) > 1 and item[1] == prompt), None)
    if item is None:
        raise StopRefused(404, "no running or queued prompt has that prompt_id")
    extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    owner = extra.get("client_id")
    if owner and client != owner:
        raise StopRefused(403, "that prompt was queued by another client; only its own client_id can stop it")
    return prompt, shot


def _queue_items(server) -> tuple[list, list]:
    """ComfyUI's running and queued items."""
    running, queued = server.prompt_queue.get_current_queue_volatile()
    return list(running), list(queued)


def register_routes() -> None:
    """``GET /echo_forcing/model_cards``: the model cards' block sizes and the files ``auto`` recognises by name
    (``models.model_cards.table``), for the timeline's plan before a run.

    ``POST /echo_forcing/stop_after_shot`` with ``{"prompt_id": ..., "shot": k, "client_id": ...}``: that run
    ends successfully after shot k (left out: after its current shot) with the shots done, and their boundary
    stays cached. What is accepted is ``stop_target``'s rule; requests for prompts that have ended are
    dropped, so no request waits around to stop a later run."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, "_echo_forcing_routes", False):
        return
    server._echo_forcing_routes = True

    @server.routes.get("/echo_forcing/model_cards")
    async def cards(request):  # the timeline plans blocks of the model card's size before a run
        return web.json_response(model_cards.table())

    @server.routes.post("/echo_forcing/stop_after_shot")
    async def stop_after_shot(request):
        raw = await request.content.read(MAX_STOP_BODY + 1)
        if len(raw) > MAX_STOP_BODY:
            return web.json_response({"error": f"the body is over {MAX_STOP_BODY} bytes"}, status=413)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        running, queued = _queue_items(server)
        try:
            prompt, shot = stop_target(body, running, queued)
        except StopRefused as refused:
            return web.json_response({"error": str(refused)}, status=refused.status)
        alive = {item[1] for item in (*running, *queued)}
        for ended in [key for key in _stop_requests if key not in alive]:  # forget prompts that have ended
            del _stop_requests[ended]
        _stop_requests[prompt] = shot
        return web.json_response({"prompt_id": prompt, "stop_after_shot": shot})


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


def device_memory_available(device: torch.device) -> int | None:
    """The device bytes a run may plan with: free now, plus what ComfyUI's model management can unload (every
    model it holds on that device, this run's own included, whose weights the plan counts itself), less the
    memory ComfyUI keeps in reserve. None for the CPU (the plan then checks the RAM)."""
    if device.type == "cpu":
        return None
    loaded = sum(m.model_loaded_memory() for m in getattr(mm, "current_loaded_models", [])
                 if getattr(m, "device", None) == device)
    reserved = mm.extra_reserved_memory() if hasattr(mm, "extra_reserved_memory") else 0
    return max(0, int(mm.get_free_memory(device)) + int(loaded) - int(reserved))


def weights_on_device(tree: torch.nn.Module) -> int:
    """The bytes of a DiT's parameters as they are stored (fp8 weights stay one byte each on the device:
    ComfyUI casts them layer by layer as they run)."""
    return sum(p.numel() * p.element_size() for p in tree.parameters())
