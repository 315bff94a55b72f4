"""How keys and values are kept at rest: in the compute dtype, or in fp8 (e4m3) with a scale per token and head.

``compute`` keeps them as the model computed them (bf16 on a GPU): the reference, bit for bit.

``fp8_e4m3`` keeps each ``head_dim`` row of a key or value as ``head_dim`` e4m3 bytes plus its own float32
scale (the row's largest magnitude over 448, e4m3's largest finite value), packed in one uint8 tensor
``[..., heads, head_dim + 4]``: 132 bytes for a 128-wide row instead of 256 (0.52x). Because scale and data
travel together, every slot move, roll, gather, pinned copy and snapshot of the memory stays the plain tensor
operation it is in the compute dtype; only the two ends know the format: ``encode`` when the block forward's
fresh keys and values are stored, ``decode`` when a window is handed to attention (one layer's window at a
time, so the compute-dtype copy is transient) or when the memory computes with stored keys (recall frames,
decay rates, compression summaries).

The error it adds is measured against float32 and against the compute dtype's own error in
``bench/kv_storage.py`` (docs/HARDWARE.md, "Quality cost"); ``auto`` (``pipeline.memory_need``) picks it only
when the compute dtype does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPUTE = "compute"
FP8_E4M3 = "fp8_e4m3"
AUTO = "auto"
KV_STORAGES = (COMPUTE, FP8_E4M3)
"""The formats a memory can keep its keys and values in."""
KV_STORAGE_CHOICES = (AUTO, *KV_STORAGES)
"""What a user may ask for: a format, or ``auto`` (the planner picks the first format that fits)."""

FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value."""
SCALE_BYTES = 4
"""One float32 scale per packed row."""


class KVStorageError(ValueError):
    """An unknown KV storage, or fp8 where this PyTorch has no float8 type."""


def check_kv_storage(name: object, allow_auto: bool = True) -> str:
    """``name`` if it is a KV storage choice (``auto`` only with ``allow_auto``), else a clear error."""
    allowed = KV_STORAGE_CHOICES if allow_auto else KV_STORAGES
    if not isinstance(name, str) or name not in allowed:
        raise KVStorageError(f"kv_storage must be one of {', '.join(allowed)}; got {name!r}")
    if name == FP8_E4M3 and not hasattr(torch, "float8_e4m3fn"):
        raise KVStorageError(f"kv_storage {FP8_E4M3} needs PyTorch 2.1 or newer (float8 types); this is "
                             f"{torch.__version__}")
    return name


@dataclass(frozen=True)
class KVFormat:
    """One memory's storage format: ``name`` (a ``KV_STORAGES`` entry) for keys and values computed in ``dtype``."""

    name: str
    dtype: torch.dtype

    def __post_init__(self) -> None:
        check_kv_storage(self.name, allow_auto=False)

    @property
    def packed(self) -> bool:
        return self.name == FP8_E4M3

    @property
    def stored_dtype(self) -> torch.dtype:
        return torch.uint8 if self.packed else self.dtype

    def stored_dim(self, head_dim: int) -> int:
        """Elements per stored row of ``head_dim`` values."""
        return head_dim + SCALE_BYTES if self.packed else head_dim

    def row_bytes(self, head_dim: int) -> int:
        """Bytes of one stored row (one token of one head, keys or values)."""
        return self.stored_dim(head_dim) * self.stored_dtype.itemsize

    def zeros(self, shape: tuple[int, ...], device: torch.device | str, pin: bool = False) -> torch.Tensor:
        """A zero buffer for keys or values shaped ``[..., heads, head_dim]`` (a zero row decodes to zeros)."""
        *lead, head_dim = shape
        return torch.zeros((*lead, self.stored_dim(head_dim)), dtype=self.stored_dtype, device=device,
                           pin_memory=pin)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Keys or values ``[..., head_dim]`` in this format (the compute dtype: ``x`` itself, cast if needed)."""
        if not self.packed:
            return x.to(self.dtype)
        wide = x.to(torch.float32)  # x itself when it is float32: never changed in place
        scale = wide.abs().amax(dim=-1, keepdim=True).div_(FP8_MAX).clamp_min_(torch.finfo(torch.float32).tiny)
        data = torch.div(wide, scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return torch.cat((data.view(torch.uint8), scale.view(torch.uint8)), dim=-1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Stored keys or values back in the compute dtype (the compute format returns ``x`` itself, no copy)."""
        if not self.packed:
            return x
        head_dim = x.shape[-1] - SCALE_BYTES
        data = x[..., :head_dim].view(torch.float8_e4m3fn)
        scale = x[..., head_dim:].contiguous().view(torch.float32)
        return data.to(self.dtype).mul_(scale.to(self.dtype))

    def stored(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (a scene pool's frame) in this format: rows already in it pass as they are; compute-dtype rows
        are encoded; packed fp8 rows (uint8, from a run that stored fp8) are decoded for a compute format."""
        if x.dtype == torch.uint8:
            return x if self.packed else KVFormat(FP8_E4M3, self.dtype).decode(x)
        return self.encode(x)

    @staticmethod
    def unpacked(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` in ``dtype``: packed fp8 rows (uint8) decoded, anything else cast (what a pool file holds)."""
        return KVFormat(FP8_E4M3, dtype).decode(x) if x.dtype == torch.uint8 else x.to(dtype)

    def nbytes(self, tokens: int, heads: int, head_dim: int) -> int:
        """Bytes of ``tokens`` tokens of keys (or of values) of ``heads x head_dim``."""
        return tokens * heads * self.row_bytes(head_dim)
