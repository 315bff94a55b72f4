"""Content digests: what names a run's inputs in reuse keys, and the checksums of the pack's state files."""

from __future__ import annotations

import hashlib
import json

import torch


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (any dtype, any device)."""
    data = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{data.dtype}:{list(data.shape)}:".encode())
    if data.numel():
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(data) -> str:
    """SHA-256 of JSON-able data (keys sorted)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_checksum(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The checksum a state file carries: its header and every tensor."""
    return digest({"metadata": metadata, "tensors": {name: tensor_digest(t) for name, t in sorted(tensors.items())}})
