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

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory.files import read_state_file, save_atomically
from ..memory.scene_pool import ScenePool
from ..memory.snapshot import (
    MemorySnapshot,
    RecordReader,
    RecordWriter,
    snapshot_from_record,
    snapshot_record,
)
from ..memory.state import BlockReport
from ..safe_files import WriteOutcome
from .digests import file_checksum


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


# ---- files ----------------------------------------------------------------------------------------------------

FORMAT = "echo-forcing-shot-boundary"
VERSION = 2
"""2: the memory state records of the one-owner-per-state layout (memory.snapshot, ``snapshot_layout``)."""


class BoundaryFileError(ValueError):
    """A stored shot boundary that cannot be read (damaged, edited, another format)."""


def boundary_record(boundary: ShotBoundary, writer: RecordWriter) -> dict:
    """``boundary`` as JSON-able data; its tensors go to ``writer`` (latents and noise state by name)."""
    memory, _ = snapshot_record(boundary.memory, writer)
    writer.tensors["latents"] = boundary.latents.contiguous()
    if boundary.noise_state is not None:
        writer.tensors["noise_state"] = boundary.noise_state.contiguous()
    return {"shot": boundary.shot, "block": boundary.block, "planned_frames": boundary.planned_frames,
            "switches": list(boundary.switches), "block_seconds": list(boundary.block_seconds),
            "block_reports": [{"slots": r.slots, "notes": r.notes} for r in boundary.block_reports],
            "pool": writer.value(boundary.pool), "memory": memory}


def boundary_from_record(record: dict, tensors: dict[str, torch.Tensor]) -> ShotBoundary:
    """The boundary ``boundary_record`` stored (classes only from the memory package, no pickle)."""
    pool = RecordReader(tensors).value(record["pool"])
    if pool is not None and not isinstance(pool, ScenePool):
        raise BoundaryFileError("the stored scene pool is not a scene pool")
    boundary = ShotBoundary(
        int(record["shot"]), int(record["block"]), tensors["latents"], snapshot_from_record(record["memory"], tensors),
        tensors.get("noise_state"), tuple(record["switches"]),
        tuple(BlockReport(int(r["slots"]), dict(r["notes"])) for r in record["block_reports"]),
        tuple(float(x) for x in record["block_seconds"]), pool, int(record["planned_frames"]))
    if len(boundary.block_reports) != boundary.block or len(boundary.block_seconds) != boundary.block:
        raise BoundaryFileError("the stored boundary's blocks and reports disagree")
    return boundary


def save_boundary(boundary: ShotBoundary, path: str | os.PathLike, key: str) -> WriteOutcome:
    """Write ``boundary`` (stored under reuse key ``key``) as safetensors, atomically, with a checksum."""
    writer = RecordWriter()
    record = boundary_record(boundary, writer)
    metadata = {"format": FORMAT, "version": str(VERSION), "key": key, "boundary": json.dumps(record)}
    metadata["checksum"] = file_checksum(metadata, writer.tensors)
    return save_atomically(writer.tensors, path, metadata)


def load_boundary(path: str | os.PathLike, key: str) -> ShotBoundary:
    """Read a boundary ``save_boundary`` wrote for ``key``; anything else is refused."""
    meta, tensors = read_state_file(path, FORMAT, VERSION, "shot boundary", BoundaryFileError)
    if meta.get("key") != key:
        raise BoundaryFileError(f"{Path(path).name} holds the boundary of another key")
    if meta.get("checksum") != file_checksum({k: v for k, v in meta.items() if k != "checksum"}, tensors):
        raise BoundaryFileError(f"{Path(path).name} does not match its checksum")
    try:
        return boundary_from_record(json.loads(meta["boundary"]), tensors)
    except BoundaryFileError:
        raise
    except Exception as err:
        raise BoundaryFileError(f"{Path(path).name} is damaged ({type(err).__name__}: {str(err)[:300]})") from None
