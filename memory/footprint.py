"""How much memory a cache policy keeps for a given model shape and resolution, without allocating it.

``memory_footprint`` builds one video's memory state on PyTorch's meta device and adds up the persistent
buffers by where they live: on the compute device (the GPU) or off it (pinned CPU memory). The reference
is the 21-frame working cache (K and V of every layer), 6.04 GB for Wan2.1-1.3B at 480x832 in bf16; the
official Echo-Forcing code holds about 25 GB (4.2x) on the GPU for the same cache (docs/MEMORY.md, "What is
kept, and where").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hierarchical_memory import EchoLayerMemory


@dataclass(frozen=True)
class MemoryFootprint:
    device_bytes: int
    """Persistent memory-state bytes on the compute device."""
    storage_bytes: int
    """Persistent bytes kept off the compute device (anchor pools, candidate histories, scene pool)."""
    working_cache_bytes: int
    """Keys and values of a 21-frame cache in every layer (the reference)."""
    boundary_bytes: int = 0
    """CPU bytes of the memory snapshot a shot boundary keeps (``memory.snapshot``; the latents of the shots
    done and the shared scene-pool frames come on top)."""
    window_tokens: int = 0
    """Most key tokens one layer attends over in a call (the length of its working cache)."""

    @property
    def device_ratio(self) -> float:
        return self.device_bytes / self.working_cache_bytes


def memory_footprint(policy, num_layers: int, heads: int, head_dim: int, dtype: torch.dtype,
                     grid: tuple[int, int], scenes: int = 1) -> MemoryFootprint:
    """Persistent bytes of ``policy``'s memory state for ``num_layers`` layers of ``heads x head_dim``,
    ``grid`` tokens per latent frame (30x52 at 480x832) and a video of ``scenes`` scenes."""
    frame_tokens = grid[0] * grid[1]
    state = policy.create(num_layers)
    like = torch.empty(1, frame_tokens, heads, head_dim, dtype=dtype, device="meta")
    for layer in state.layers:
        layer.allocate(like, grid)
    storage = state.storage_bytes
    frame_bytes = frame_tokens * heads * head_dim * like.element_size()
    echo = state.layers and isinstance(state.layers[0], EchoLayerMemory)
    if echo:
        layer = state.layers[0]
        cfg = layer.config
        candidates = len(range(0, cfg.recall_source_frames, cfg.recall_stride)) if layer.recorder.copies else 0
        stored_frame = layer.kv.nbytes(frame_tokens, heads, head_dim)
        # recall candidates of the running scene when not read from the anchor pool + one recall frame per
        # finished scene (the scene pool), both in the storage format, keys and values
        storage += 2 * num_layers * stored_frame * (candidates + scenes)
    working = 2 * 21 * frame_bytes * num_layers
    if echo:  # a boundary comes after a shot: count the frames a full cache keeps
        for layer in state.layers:
            layer.size_as_full()
    window = max((layer.k.shape[1] for layer in state.layers if getattr(layer, "k", None) is not None),
                 default=21 * frame_tokens)
    boundary = state.snapshot(copy=False).nbytes
    return MemoryFootprint(state.device_bytes, storage, working, boundary, window)
