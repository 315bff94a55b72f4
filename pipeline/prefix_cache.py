"""Prefix reuse: shot boundaries kept in RAM between runs, so a run whose first shots are unchanged starts
after them (change shot 5 of six and only shots 5 and 6 are generated).

A run plan names each of its shot boundaries by a key, a hash of everything that decides the shots before it
(``RunPlan.boundary_keys``). The sampler asks the cache for the longest prefix it holds (``longest``), resumes
the rollout there and stores every new boundary it passes (``put``). The cache is an LRU bounded by a RAM
budget: every boundary's own bytes (latents, memory snapshot) plus the scene-pool frames the kept boundaries
refer to, each frame counted once however many boundaries share it. A boundary larger than the whole budget
is not kept. Boundaries are immutable, so one can be handed to any number of runs.

Optionally a folder is a second level (``folder``, ``folder_budget``): every boundary put is also written
there (``<key>.safetensors``, ``pipeline.shot_boundary.save_boundary``, atomically), a key missing in RAM is
looked up there, and the oldest files leave when the folder holds more than its budget (a boundary is not
written while it would leave less than ``DISK_RESERVE`` free on the disk). The RAM level never holds more
than ``RAM_SHARE`` of the machine's memory, whatever budget is asked. Only files named
like a key are ever read or deleted in that folder; a damaged one is deleted and counts as missing. The
command line keeps its boundaries there between runs; in ComfyUI it lets a small RAM budget spill to disk.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from ..safe_files import physical_memory
from .shot_boundary import BoundaryFileError, ShotBoundary, load_boundary, save_boundary

_KEY_FILE = re.compile(r"^[0-9a-f]{64}\.safetensors$")

DEFAULT_BUDGET_GB = 8.0
RAM_SHARE = 0.5
"""The RAM level never holds more than this share of the machine's memory, whatever budget is asked."""
DISK_RESERVE = 2 * 2**30
"""A boundary is written to the folder only while this much disk stays free after it."""


class PrefixCacheError(ValueError):
    """A cache setting that cannot be used."""


def budget_bytes(gigabytes: float) -> int:
    """A budget in bytes from GiB, refusing what cannot be a budget."""
    if isinstance(gigabytes, bool) or not isinstance(gigabytes, (int, float)) or not gigabytes > 0 \
            or gigabytes != gigabytes or gigabytes == float("inf"):
        raise PrefixCacheError(f"the shot cache's RAM budget must be a positive number of GiB, got {gigabytes!r}; "
                               "turn shot reuse off instead of a budget of 0")
    return int(gigabytes * 2**30)


def _capped(budget: int) -> int:
    ram = physical_memory()
    return budget if ram is None else min(budget, int(ram * RAM_SHARE))


def _disk_free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _shared_frames(boundary: ShotBoundary) -> dict[int, tuple[torch.Tensor, int]]:
    frames = {}
    if boundary.pool is not None:
        for entry in boundary.pool.entries:
            for layers in (entry.recall, entry.select):
                for k, v in layers or ():
                    for t in (k, v):
                        frames[id(t)] = (t, t.numel() * t.element_size())
    return frames


class PrefixCache:
    """An LRU of shot boundaries by key within ``budget`` bytes of RAM. Thread-safe."""

    def __init__(self, budget: int, folder: str | os.PathLike | None = None, folder_budget: int | None = None):
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise PrefixCacheError(f"the shot cache's budget must be a positive number of bytes, got {budget!r}")
        self.budget = _capped(budget)
        self._entries: OrderedDict[str, ShotBoundary] = OrderedDict()
        self._shared: dict[int, list] = {}  # id -> [tensor, bytes, references]
        self._own = 0
        self._lock = threading.RLock()
        self.folder: Path | None = None
        self.folder_budget = 0
        if folder is not None:
            self.use_folder(folder, folder_budget if folder_budget is not None else budget)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """RAM held: the boundaries' own bytes plus every shared scene-pool frame once."""
        return self._own + sum(entry[1] for entry in self._shared.values())

    def use_folder(self, folder: str | os.PathLike | None, budget: int = 0) -> None:
        """Keep boundaries in ``folder`` too, within ``budget`` bytes (None: RAM only)."""
        with self._lock:
            if folder is None:
                self.folder, self.folder_budget = None, 0
                return
            if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
                raise PrefixCacheError(f"the shot cache folder's budget must be a positive number of bytes, got "
                                       f"{budget!r}")
            self.folder, self.folder_budget = Path(folder), budget
            self.folder.mkdir(parents=True, exist_ok=True)
            self._trim_folder()

    def _file(self, key: str) -> Path | None:
        if self.folder is None or not _KEY_FILE.match(f"{key}.safetensors"):
            return None
        return self.folder / f"{key}.safetensors"

    def _folder_files(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if _KEY_FILE.match(p.name) and p.is_file() and not p.is_symlink()]

    def _trim_folder(self) -> None:
        files = sorted(self._folder_files(), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.folder_budget:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)

    def _read(self, key: str) -> ShotBoundary | None:
        path = self._file(key)
        if path is None or not path.is_file() or path.is_symlink():
            return None
        try:
            boundary = load_boundary(path, key)
        except BoundaryFileError:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used
        return boundary

    def resize(self, budget: int) -> None:
        with self._lock:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
                raise PrefixCacheError(f"the shot cache's budget must be a positive number of bytes, got {budget!r}")
            self.budget = _capped(budget)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._shared.clear()
            self._own = 0

    def get(self, key: str) -> ShotBoundary | None:
        with self._lock:
            boundary = self._entries.get(key)
            if boundary is not None:
                self._entries.move_to_end(key)
                return boundary
            boundary = self._read(key)
            if boundary is not None:
                self._keep(key, boundary)
            return boundary

    def longest(self, keys: Sequence[str]) -> ShotBoundary | None:
        """The boundary of the longest prefix held among ``keys`` (``keys[k - 1]`` after k shots), or None."""
        for key in reversed(keys):
            boundary = self.get(key)
            if boundary is not None:
                return boundary
        return None

    def put(self, key: str, boundary: ShotBoundary) -> bool:
        """Keep ``boundary`` under ``key`` (the most recently used); older ones leave to stay in budget.
        Returns False when it alone is larger than the RAM budget (then RAM does not keep it; a folder does
        when it fits there)."""
        with self._lock:
            path = self._file(key)
            if path is not None and _disk_free(path.parent) > boundary.nbytes + boundary.pool_bytes + DISK_RESERVE:
                save_boundary(boundary, path, key)
                self._trim_folder()
            return self._keep(key, boundary)

    def _keep(self, key: str, boundary: ShotBoundary) -> bool:
        if key in self._entries:
            self._remove(key)
        extra = sum(b for i, (_, b) in _shared_frames(boundary).items() if i not in self._shared)
        if boundary.nbytes + extra > self.budget:
            return False
        self._entries[key] = boundary
        self._own += boundary.nbytes
        for i, (tensor, size) in _shared_frames(boundary).items():
            self._shared.setdefault(i, [tensor, size, 0])[2] += 1
        self._evict()
        return key in self._entries

    def _remove(self, key: str) -> None:
        boundary = self._entries.pop(key)
        self._own -= boundary.nbytes
        for i in _shared_frames(boundary):
            entry = self._shared[i]
            entry[2] -= 1
            if entry[2] == 0:
                del self._shared[i]

    def _evict(self) -> None:
        while self._entries and self.nbytes > self.budget:
            self._remove(next(iter(self._entries)))
