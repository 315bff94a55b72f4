"""What a run needs in memory, computed from its plan before any tensor is made, and the check that refuses a
run that cannot fit (with the figure, the limit and what to change).

Device (the compute device: the GPU, or the CPU's RAM on a CPU run):

* ``cache``: the memory state's persistent buffers (``memory.footprint``, built on the meta device);
* ``activations``: one block's forward working memory, ``ACTIVATION_FACTOR`` times the block's widest
  hidden states (FFN, q/k/v, attention);
* ``text``: one shot's cross-attention keys and values (shots are encoded when they start);
* ``weights``: the DiT's parameters, when the caller holds them on the device (the command line; inside
  ComfyUI its model management places and offloads the weights itself).

Host (CPU RAM): the output latents (float32, kept on the CPU block by block) and the copy a run returns, the
initial noise (the official order draws the whole video's at once; per-shot noise one block), the memory's
CPU storage (anchor pools, recall candidates, scene-pool frames) and one shot boundary (its memory snapshot
and the latents so far). Kept shot boundaries are bounded separately by the shot cache's budget.

The limits: the device's total memory (a run that does not fit on an empty device cannot run; ComfyUI
frees or offloads other models to make room for one that does) and the RAM available when the run is
planned. On a CPU run both parts share the RAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..memory import memory_footprint
from ..models.config import WanConfig
from ..safe_files import available_memory
from .latents import LATENT_CHANNELS
from .noise import OFFICIAL

ACTIVATION_FACTOR = 12
"""Working memory of one block forward, in units of the block's hidden states (FFN, q/k/v, attention)."""


class RunTooLargeError(ValueError):
    """A run that needs more memory than the machine has; the message gives the figures."""


@dataclass(frozen=True)
class MemoryNeed:
    device: dict[str, int]
    """Bytes on the compute device, by part."""
    host: dict[str, int]
    """Bytes in CPU RAM, by part."""

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

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


def memory_need(model: WanConfig, dtype: torch.dtype, policy, grid: tuple[int, int], *, frames: int,
                frames_per_block: int, latent_size: tuple[int, int], batch: int = 1, noise: str = OFFICIAL,
                shots: int = 1, weights_on_device: bool = False) -> MemoryNeed:
    """The memory a run of ``frames`` latent frames needs (see the module docstring)."""
    item = dtype.itemsize
    tokens = frames_per_block * grid[0] * grid[1] * batch
    footprint = memory_footprint(policy, model.num_layers, model.num_heads, model.head_dim, dtype, grid, shots)
    device = {"cache": footprint.device_bytes,
              "activations": ACTIVATION_FACTOR * tokens * max(model.dim, model.ffn_dim) * item,
              "text": 2 * model.num_layers * model.text_len * model.dim * item * batch,
              "weights": weight_bytes(model, dtype) if weights_on_device else 0}
    frame = batch * LATENT_CHANNELS * latent_size[0] * latent_size[1] * 4  # float32 on the CPU
    host = {"latents": 2 * frames * frame,
            "noise": (frames if noise == OFFICIAL else frames_per_block) * frame,
            "memory storage": footprint.storage_bytes,
            "shot boundary": footprint.boundary_bytes + frames * frame}
    return MemoryNeed(device, host)


def device_total(device: torch.device | str) -> int | None:
    """Total memory of a CUDA device (None for the CPU, whose memory is the host's)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def check_memory(need: MemoryNeed, device: torch.device | str, *, device_memory: int | None = None,
                 host_memory: int | None = None) -> None:
    """Refuse a run whose need exceeds the device's memory or the available RAM (the figures and the parts
    in the message). ``device_memory``/``host_memory`` override what this machine reports."""
    device = torch.device(device)
    host_free = host_memory if host_memory is not None else available_memory()
    on_cpu = device.type == "cpu"
    if not on_cpu:
        total = device_memory if device_memory is not None else device_total(device)
        if total is not None and need.device_bytes > total:
            raise RunTooLargeError(
                f"this run needs {gib(need.device_bytes)} on {device} ({need.describe(need.device)}) but the device "
                f"has {gib(total)}; lower the width and height or choose a preset with a smaller cache")
    if host_free is not None:
        host = need.host_bytes + (need.device_bytes if on_cpu else 0)
        if host > host_free:
            parts = {**need.host, **({f"{k} (compute)": v for k, v in need.device.items()} if on_cpu else {})}
            raise RunTooLargeError(
                f"this run needs {gib(host)} of RAM ({need.describe(parts)}) but {gib(host_free)} is available; "
                "shorten the video, lower the width and height, or use per-shot noise")
