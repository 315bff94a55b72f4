"""Prefix reuse: shot boundaries kept in RAM between runs, so a run whose first shots are unchanged starts
after them (change shot 5 of six and only shots 5 and 6 are generated).

A run plan names each of its shot boundaries by a key, a hash of everything that decides the shots before it
(``RunPlan.boundary_keys``). The sampler asks the cache for the longest prefix it holds (``longest``), resumes
the rollout there and stores every new boundary it passes (``put``). The cache is an LRU bounded by a RAM
budget: every boundary's own bytes (latents, memory snapshot) plus the scene-pool frames the kept boundaries
refer to, each frame counted once however many boundaries share it. A boundary larger than the whole budget
is not kept. Boundaries are immutable, so one can be handed to any number of runs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from .shot_boundary import ShotBoundary

DEFAULT_BUDGET_GB = 8.0


class PrefixCacheError(ValueError):
    """A cache setting that cannot be used."""


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


def budget_bytes(gigabytes: float) -> int:
    """A RAM budget in bytes from GiB, refusing what cannot be a budget."""
    if isinstance(gigabytes, bool) or not isinstance(gigabytes, (int, float)) or not gigabytes > 0 \
            or gigabytes != gigabytes or gigabytes == float("inf"):
        raise PrefixCacheError(f"the shot cache's RAM budget must be a positive number of GiB, got {gigabytes!r}; "
                               "turn shot reuse off instead of a budget of 0")
    return int(gigabytes * 2**30)


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

    def __init__(self, budget: int):
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise PrefixCacheError(f"the shot cache's budget must be a positive number of bytes, got {budget!r}")
        self.budget = budget
        self._entries: OrderedDict[str, ShotBoundary] = OrderedDict()
        self._shared: dict[int, list] = {}  # id -> [tensor, bytes, references]
        self._own = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """RAM held: the boundaries' own bytes plus every shared scene-pool frame once."""
        return self._own + sum(entry[1] for entry in self._shared.values())

    def resize(self, budget: int) -> None:
        with self._lock:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
                raise PrefixCacheError(f"the shot cache's budget must be a positive number of bytes, got {budget!r}")
            self.budget = budget
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

    def longest(self, keys: Sequence[str]) -> ShotBoundary | None:
        """The boundary of the longest prefix held among ``keys`` (``keys[k - 1]`` after k shots), or None."""
        for key in reversed(keys):
            boundary = self.get(key)
            if boundary is not None:
                return boundary
        return None

    def put(self, key: str, boundary: ShotBoundary) -> bool:
        """Keep ``boundary`` under ``key`` (the most recently used); older ones leave to stay in budget.
        Returns False when it alone is larger than the budget (then it is not kept)."""
        with self._lock:
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
