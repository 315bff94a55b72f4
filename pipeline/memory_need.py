"""The memory planner: what a run needs, by part, before any tensor is made; which KV storage it runs with;
and the refusal, with the figures and the settings that would fit, of a run that cannot fit.

Device (the compute device: the GPU, or the CPU's RAM on a CPU run):

* ``weights``: the DiT's parameters as they are stored (fp8 weights count one byte each);
* ``cache``: the memory state's persistent buffers on the device (``memory.footprint``, built on the meta
  device from the shapes the memory allocates, in its KV storage);
* ``activations``: the peak working memory of one layer of one block forward (``activation_bytes``);
* ``text``: one shot's cross-attention keys and values (shots are encoded when they start);
* ``rope tables``: the per-token rotations ``models.rope`` keeps for the last position lists it was asked for.

Host (CPU RAM): the output latents (float32, kept on the CPU block by block) and the copy a run returns, the
initial noise (the official order draws the whole video's at once; per-shot noise one block), the memory's
CPU storage (anchor pools, candidate histories and the scene pool's recall frames, in the KV storage; recall
candidates only in layouts that copy them) and one shot boundary (its memory snapshot and the latents so far). Kept shot
boundaries are bounded separately by the shot cache's budget. The VAE is not included.

``plan_memory`` tries the KV storages a run allows, in order (``compute`` first: it is the reference), first
with every weight on the device, then (inside ComfyUI, whose model management loads a model partially and
streams the rest) with the weights partly offloaded, and takes the first that fits the memory the device can
give (``device_memory``: what is free plus what ComfyUI can unload) and the RAM available. Nothing fits: a
``RunTooLargeError`` that gives every option's figures and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..memory import memory_footprint
from ..memory.kv_storage import COMPUTE, KVFormat
from ..models.config import WanConfig
from ..models.rope import ROTATIONS_KEPT
from ..safe_files import available_memory
from .noise import OFFICIAL

FLOAT32 = 4


class RunTooLargeError(ValueError):
    """A run that needs more memory than the machine has; the message gives the figures."""


@dataclass(frozen=True)
class MemoryNeed:
    device: dict[str, int]
    """Bytes on the compute device, by part."""
    host: dict[str, int]
    """Bytes in CPU RAM, by part."""
    kv_storage: str = COMPUTE
    """The KV storage these figures are for."""
    weights_min: int = 0
    """The weights that must be on the device when the rest is streamed (the largest layer's)."""

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def working_bytes(self) -> int:
        """The device bytes besides the weights (what ComfyUI must leave free when it loads the model)."""
        return self.device_bytes - self.device.get("weights", 0)

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    def describe(self, parts: dict[str, int]) -> str:
        return ", ".join(f"{name} {gib(n)}" for name, n in sorted(parts.items(), key=lambda p: -p[1]) if n)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def weight_bytes(model: WanConfig, dtype: torch.dtype) -> int:
    """The DiT's parameters in ``dtype`` (from the shapes of its state dict)."""
    return sum(math.prod(shape) for shape in model.expected_shapes().values()) * dtype.itemsize


def largest_layer_bytes(model: WanConfig, weights: int) -> int:
    """One transformer block's share of ``weights`` bytes of parameters (what a streamed model holds on the
    device at a time), whatever dtype they are stored in."""
    shapes = model.expected_shapes()
    block = sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("blocks.0."))
    return weights * block // sum(math.prod(shape) for shape in shapes.values())


def activation_bytes(model: WanConfig, dtype: torch.dtype, kv: KVFormat, block_tokens: int,
                     window_tokens: int) -> int:
    """Peak working memory of one layer's forward on ``block_tokens`` query tokens over ``window_tokens`` keys.

    The larger of two phases (``models.block_forward``): self-attention (the layer's input and output, q, k,
    v and the modulated input, their float32 norm temporaries; at its peak the window's keys rotated through
    a float32 and a complex64 copy into a new compute-dtype tensor, after an fp8 window's keys and values were
    decoded to the compute dtype; the decay's weighted values come after the rotation's temporaries are
    freed) and the FFN (its two ``ffn_dim``-wide hidden tensors next to the residual stream, the attention
    outputs and the modulated input: the larger phase for a call as long as LongLive's 12-frame re-cache).
    """
    item, c = dtype.itemsize, model.dim
    lc, sc = block_tokens * c, window_tokens * c
    decoded = 2 * sc * item if kv.packed else 0
    attention = 6 * lc * item + 3 * lc * FLOAT32 + sc * (2 * FLOAT32 + item) + decoded
    ffn = 2 * block_tokens * model.ffn_dim * item + 7 * lc * item + lc * FLOAT32
    return max(attention, ffn)


def memory_need(model: WanConfig, dtype: torch.dtype, policy, grid: tuple[int, int], *, frames: int,
                frames_per_block: int, latent_size: tuple[int, int], batch: int = 1, noise: str = OFFICIAL,
                shots: int = 1, weights: int = 0, decode: int = 0) -> MemoryNeed:
    """The memory a run of ``frames`` latent frames needs with ``policy`` (see the module docstring).

    ``weights`` is the bytes of the DiT's parameters as stored on the device (0 when someone else places them).
    ``decode``: the device bytes of a streaming VAE decode in the loop (its weights, history and peak), for a
    memory that re-encodes decoded pixels.
    """
    item = dtype.itemsize
    kv = KVFormat(getattr(policy, "kv_storage", COMPUTE), dtype)
    footprint = memory_footprint(policy, model.num_layers, model.num_heads, model.head_dim, dtype, grid, shots)
    recache = getattr(getattr(policy, "config", policy), "recache_frames", 0) if shots > 1 else 0
    call_frames = max(frames_per_block, recache)  # LongLive re-encodes its latest frames in one call at a switch
    if getattr(policy, "rolling_window", False):  # Rolling Forcing: a window of blocks per call, the sink aside
        call_frames = max(call_frames, policy.attention_frames - policy.block_frames)
    block_tokens = call_frames * grid[0] * grid[1] * batch
    window = footprint.window_tokens
    device = {"cache": footprint.device_bytes,
              "activations": activation_bytes(model, dtype, kv, block_tokens, window * batch),
              "text": 2 * model.num_layers * model.text_len * model.dim * item * batch,
              "rope tables": ROTATIONS_KEPT * window * model.head_dim // 2 * 2 * FLOAT32,
              "weights": weights}
    if decode:
        device["VAE decode"] = decode
    frame = batch * model.in_dim * latent_size[0] * latent_size[1] * FLOAT32  # float32 on the CPU
    host = {"latents": 2 * frames * frame,
            "noise": (frames if noise == OFFICIAL else frames_per_block) * frame,
            "memory storage": footprint.storage_bytes,
            "shot boundary": footprint.boundary_bytes + frames * frame}
    return MemoryNeed(device, host, kv.name, largest_layer_bytes(model, weights))


def device_total(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device (None for the CPU, whose memory is the host's)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


@dataclass(frozen=True)
class MemoryPlan:
    """The setting a run goes with, and what every setting it allowed would need."""

    need: MemoryNeed
    offload_weights: bool = False
    """ComfyUI keeps part of the weights off the device and streams them (slower, same result)."""
    device_memory: int | None = None
    """The device bytes the run may use (None: a CPU run, or not known)."""
    options: dict[str, MemoryNeed] = field(default_factory=dict)
    """The need of every KV storage that was considered, by name."""

    @property
    def kv_storage(self) -> str:
        return self.need.kv_storage

    def note(self) -> str | None:
        """What the report says about the choice (None when the reference fits as it is)."""
        parts = []
        if self.kv_storage != COMPUTE:
            other = self.options.get(COMPUTE)
            why = (f": compute needs {gib(other.device_bytes)}, {gib(self.device_memory)} can be used"
                   if other is not None and self.device_memory is not None else "")
            parts.append(f"keys and values kept as {self.kv_storage}{why}")
        if self.offload_weights:
            parts.append(f"part of the weights streamed from RAM by ComfyUI ({gib(self.need.working_bytes)} of "
                         f"working memory leaves {gib((self.device_memory or 0) - self.need.working_bytes)} "
                         f"for {gib(self.need.device['weights'])} of weights)")
        return "memory: " + "; ".join(parts) if parts else None


def plan_memory(need_of: Callable[[str], MemoryNeed], kv_options: Sequence[str], device: torch.device | str, *,
                device_memory: int | None = None, host_memory: int | None = None, can_offload: bool = False,
                other_options: Sequence[str] = ()) -> MemoryPlan:
    """The first of ``kv_options`` that fits (see the module docstring), or a ``RunTooLargeError``.

    ``device_memory``/``host_memory`` override what this machine reports (the device's total, the RAM available
    now); ``can_offload`` allows weights to stay partly in RAM (ComfyUI's partial loading); ``other_options``
    are KV storages the user did not allow, named in a refusal when they would fit.
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    host_free = host_memory if host_memory is not None else available_memory()
    total = None if on_cpu else device_memory if device_memory is not None else device_total(device)
    needs = {kv: need_of(kv) for kv in (*kv_options, *[o for o in other_options if o not in kv_options])}

    def host_fits(need: MemoryNeed) -> bool:
        return host_free is None or need.host_bytes + (need.device_bytes if on_cpu else 0) <= host_free

    def device_fits(need: MemoryNeed, offload: bool) -> bool:
        if total is None:
            return True
        return (need.working_bytes + need.weights_min if offload else need.device_bytes) <= total

    for offload in (False, True) if can_offload and not on_cpu else (False,):
        for kv in kv_options:
            if device_fits(needs[kv], offload) and host_fits(needs[kv]):
                return MemoryPlan(needs[kv], offload, total, needs)  # the first pass took what fits whole
    _refuse(needs, list(kv_options), device, total, host_free, on_cpu, can_offload)
    raise AssertionError("unreachable")


def _refuse(needs: dict[str, MemoryNeed], allowed: list[str], device: torch.device, total: int | None,
            host_free: int | None, on_cpu: bool, can_offload: bool) -> None:
    """The refusal: the first allowed option's figures, then every option's total and what would fit."""
    first = needs[allowed[0]]
    host = first.host_bytes + (first.device_bytes if on_cpu else 0)
    if host_free is not None and host > host_free:
        parts = {**first.host, **({f"{k} (compute)": v for k, v in first.device.items()} if on_cpu else {})}
        raise RunTooLargeError(
            f"this run needs {gib(host)} of RAM ({first.describe(parts)}) but {gib(host_free)} is available; "
            "shorten the video, lower the width and height, or use per-shot noise")
    smallest = {kv: (n.working_bytes + n.weights_min if can_offload else n.device_bytes) for kv, n in needs.items()}
    options = "; ".join(f"kv_storage {kv}: {gib(n.device_bytes)}" + (
        f" ({gib(smallest[kv])} with weights streamed)" if can_offload else "") for kv, n in needs.items())
    fitting = [kv for kv in needs if kv not in allowed and total is not None and smallest[kv] <= total]
    advice = (f"choose kv_storage {fitting[0]} (or auto) in Echo Memory Config" if fitting else
              "lower the width and height" + ("" if len(needs) > 1 else ", use an echo-forcing preset with "
                                              "kv_storage auto") + " or use a GPU with more memory")
    raise RunTooLargeError(
        f"this run needs {gib(first.device_bytes)} on {device} ({first.describe(first.device)}) but "
        f"{gib(total or 0)} can be used there ({options}); {advice}")


def check_memory(need: MemoryNeed, device: torch.device | str, *, device_memory: int | None = None,
                 host_memory: int | None = None) -> None:
    """Refuse one fixed setting whose need exceeds the device's memory or the available RAM (the figures and
    the parts in the message)."""
    plan_memory(lambda kv: need, [need.kv_storage], device, device_memory=device_memory, host_memory=host_memory)
