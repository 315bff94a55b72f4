"""The scene pool: what survives of a finished scene, so a later scene (or a later job) can recall it (SPEC §3.7).

Per scene: its prompt and label, its routing feature, and per layer its Scene Recall Frame (and, only when
a mode needs it, its first latent frame, "select"). Kept on the CPU in the cache dtype (the official code
keeps the recall frame in float32 and casts it when it is loaded into the cache; storing the cast values
gives the same cache contents at half the memory). At most ``max_size`` scenes (64), oldest dropped.

A pool is immutable: a rollout returns a new pool. ``save``/``load`` use safetensors with a versioned
header that names the model signature (layers, heads, head dim, dtype, token grid); loading checks it and
refuses a pool from another model or resolution with a message that says what differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import file_names, named_file, read_state_file, save_atomically

FORMAT = "echo-forcing-scene-pool"
VERSION = 1

LayerFrames = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per layer (keys, values), each ``[P, heads, head_dim]``."""


class ScenePoolError(ValueError):
    """A pool file that cannot be used here; the message says why and what to do."""


@dataclass(frozen=True)
class PoolSignature:
    """What a pool's tensors depend on: the model's layer/head shape, the cache dtype and the token grid."""

    layers: int
    heads: int
    head_dim: int
    dtype: str
    grid: tuple[int, int]

    @classmethod
    def of(cls, layers: int, heads: int, head_dim: int, dtype: torch.dtype | str, grid) -> PoolSignature:
        """The signature of a run: ``dtype`` as a torch dtype or its name ("bfloat16")."""
        return cls(layers, heads, head_dim, str(dtype).replace("torch.", ""), tuple(grid))

    def describe(self) -> str:
        return (f"{self.layers} layers, {self.heads}x{self.head_dim} heads, {self.dtype}, "
                f"{self.grid[0]}x{self.grid[1]} tokens per frame")

    def require(self, expected: PoolSignature, source: str) -> None:
        """Refuse a pool made with another model, dtype or frame size than this run (``expected``)."""
        if self != expected:
            raise ScenePoolError(
                f"{source} was saved from a different model or resolution ({self.describe()}); this run needs "
                f"{expected.describe()}. Use a pool saved with the same model and size, or start a new pool.")


@dataclass(frozen=True, repr=False)
class PoolEntry:
    label: str
    prompt: str
    recall: LayerFrames | None = None
    select: LayerFrames | None = None
    feature: torch.Tensor | None = None
    scene: int | None = None
    """Index of the scene in the rollout that made it (None for entries loaded from a file)."""
    source: str = ""
    """Where the entry comes from: "" for this rollout, else the pool file's name."""

    def __repr__(self) -> str:
        parts = [f"{self.label!r}"] + [n for n in ("recall", "select") if getattr(self, n) is not None]
        return f"PoolEntry({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class ScenePool:
    entries: tuple[PoolEntry, ...] = ()
    max_size: int = 64
    signature: PoolSignature | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return f"ScenePool({len(self.entries)} scenes: {', '.join(e.label for e in self.entries)})"

    def __len__(self) -> int:
        return len(self.entries)

    def with_entries(self, entries: Sequence[PoolEntry], signature: PoolSignature | None = None) -> ScenePool:
        """A new pool holding ``entries`` (the newest ``max_size``)."""
        kept = tuple(entries)[-self.max_size:]
        return ScenePool(kept, self.max_size, signature or self.signature, self.notes)

    def recallable(self) -> list[PoolEntry]:
        return [e for e in self.entries if e.recall is not None]

    def find(self, label: str) -> PoolEntry | None:
        """The newest entry whose label matches (case-insensitive)."""
        for entry in reversed(self.entries):
            if entry.label.lower() == label.lower():
                return entry
        return None

    @property
    def nbytes(self) -> int:
        total = 0
        for entry in self.entries:
            for frames in (entry.recall, entry.select):
                if frames is not None:
                    total += sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in frames)
        return total

    # ---- files ----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the pool as safetensors (atomically: a temporary file renamed when complete)."""
        if self.signature is None:
            raise ScenePoolError("this pool has no model signature (it holds no scene yet); nothing to save")
        path = Path(path)
        tensors, entries = {}, []
        for i, entry in enumerate(self.entries):
            record = {"label": entry.label, "prompt": entry.prompt, "scene": entry.scene}
            for name in ("recall", "select"):
                frames = getattr(entry, name)
                record[name] = frames is not None
                if frames is not None:
                    tensors[f"{i}.{name}.k"] = torch.stack([k for k, _ in frames]).contiguous()
                    tensors[f"{i}.{name}.v"] = torch.stack([v for _, v in frames]).contiguous()
            entries.append(record)
        sig = self.signature
        metadata = {"format": FORMAT, "version": str(VERSION), "max_size": str(self.max_size),
                    "signature": json.dumps({"layers": sig.layers, "heads": sig.heads, "head_dim": sig.head_dim,
                                             "dtype": sig.dtype, "grid": list(sig.grid)}),
                    "entries": json.dumps(entries)}
        return save_atomically(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, expected: PoolSignature | None = None) -> ScenePool:
        """Read a pool written by ``save``; with ``expected``, refuse one made for another model or size."""
        path = Path(path)
        meta, tensors = read_state_file(path, FORMAT, VERSION, "scene pool", ScenePoolError)
        try:
            raw = json.loads(meta["signature"])
            signature = PoolSignature.of(raw["layers"], raw["heads"], raw["head_dim"], raw["dtype"], raw["grid"])
            if expected is not None:
                signature.require(expected, path.name)
            entries = []
            for i, record in enumerate(json.loads(meta["entries"])):
                frames = {}
                for name in ("recall", "select"):
                    if record[name]:
                        k, v = tensors[f"{i}.{name}.k"], tensors[f"{i}.{name}.v"]
                        frames[name] = tuple(zip(k.unbind(0), v.unbind(0), strict=True))
                entries.append(PoolEntry(record["label"], record["prompt"], frames.get("recall"),
                                         frames.get("select"), None, record.get("scene"), path.stem))
        except ScenePoolError:
            raise
        except (KeyError, ValueError, TypeError) as err:
            raise ScenePoolError(f"{path.name} has a damaged scene-pool header ({err}); save the pool again") from None
        return cls(tuple(entries), int(meta.get("max_size", 64)), signature)


def pool_file(folder: str | os.PathLike, name: str) -> Path:
    """The file of the pool called ``name`` inside ``folder``, refusing any name that could leave it
    (``memory.files``)."""
    return named_file(folder, name, "scene pool", ScenePoolError)


def pool_names(folder: str | os.PathLike) -> list[str]:
    """Names of the pools saved in ``folder`` (sorted; files whose names are not valid pool names skipped)."""
    return file_names(folder)
