"""Copies between the compute device and the storage device (page-locked CPU memory under a GPU).

Under a GPU the anchor pool, the candidate history and the scene pool's frames live
in page-locked ("pinned") CPU memory, and every copy between them and the GPU is asynchronous on the current
CUDA stream, so it is ordered with the kernels around it and never stalls the CPU. A gather from pinned
memory goes through a pinned staging tensor (an index on a pinned tensor returns pageable memory, which
would make the upload synchronous). On the CPU all of this is a plain copy.

Host memory filled by an asynchronous device -> host copy must not be read by the CPU before the stream is
synchronised: the rollout synchronises after every block (it reads the block's latents) and at its end.
"""

from __future__ import annotations

import torch


def to_storage(x: torch.Tensor, storage: torch.device) -> torch.Tensor:
    """A copy of ``x`` on ``storage`` (pinned and asynchronous from a GPU to the CPU)."""
    if x.device.type == "cuda" and storage.type == "cpu":
        out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        return out.copy_(x, non_blocking=True)
    return x.to(storage, copy=True)


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` on ``device`` (asynchronous from pinned CPU memory; a pageable tensor is staged through pinned)."""
    if x.device.type == "cpu" and device.type == "cuda" and not x.is_pinned():
        x = torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x)
    return x.to(device=device, dtype=dtype or x.dtype, non_blocking=True)


def gather_to_device(source: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``source.index_select(0, index)`` on ``device`` (through a pinned staging tensor under a GPU)."""
    index = index.to(source.device)
    if source.device.type == "cpu" and device.type == "cuda":
        staged = torch.empty((index.numel(), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        torch.index_select(source, 0, index, out=staged)
        return staged.to(device, non_blocking=True)
    return source.index_select(0, index).to(device)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (asynchronous copies into pinned memory included); no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
