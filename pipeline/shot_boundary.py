"""A shot boundary: everything a rollout needs to go on at the first block of shot k, so shots 1..k-1 are
never generated twice (after an edit of a later shot, after a stop, or in a later job).

Taken right before the memory's ``start_scene(k)`` (and once after the last shot, for extending the video):
the memory state (``memory.snapshot``: with Echo-Forcing only the frames ``enter_scene`` may keep, the scene
pool and the transition history), the noise generator's state (official order only; per-shot noise needs
none), the latents of the shots so far, and what the report shows of them (switches, per-block memory
reports and times). Everything is in CPU memory, and a boundary is never changed after it is made: a rollout
that resumes from it copies what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..memory.scene_pool import ScenePool
from ..memory.snapshot import MemorySnapshot
from ..memory.state import BlockReport


@dataclass(frozen=True, repr=False)
class ShotBoundary:
    shot: int
    """Shots done: the boundary sits before shot ``shot`` (0-based), or after the last one."""
    block: int
    """Blocks done."""
    latents: torch.Tensor
    """Normalised latents of the shots done, ``[B, frames done, C, h, w]`` float32 on the CPU."""
    memory: MemorySnapshot
    noise_state: torch.Tensor | None
    """The official-order generator's state after the blocks done (None with per-shot noise)."""
    switches: tuple[dict, ...]
    """The scene-switch reports of the shots done."""
    block_reports: tuple[BlockReport, ...]
    block_seconds: tuple[float, ...]
    pool: ScenePool | None
    """The scene pool after the shots done (its frames are shared with the memory snapshot)."""
    planned_frames: int
    """Latent frames of the whole video this boundary was made in (the official noise order depends on it)."""

    def __repr__(self) -> str:
        return f"ShotBoundary(after {self.shot} shots, {self.block} blocks, {self.nbytes / 2**20:.1f} MiB)"

    @property
    def frames(self) -> int:
        return self.latents.shape[1]

    @property
    def nbytes(self) -> int:
        """CPU bytes this boundary holds itself (latents, memory snapshot, generator state); scene-pool frames
        are shared with the pool and counted by ``pool_bytes``."""
        noise = 0 if self.noise_state is None else self.noise_state.numel()
        return self.latents.numel() * self.latents.element_size() + self.memory.nbytes + noise

    @property
    def pool_bytes(self) -> int:
        return self.pool.nbytes if self.pool is not None else 0
