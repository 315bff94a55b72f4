"""The scene pool: what survives of a finished scene, so a later scene (or a later job) can recall it.

Per scene: its prompt and label, its routing feature, and per layer its Scene Recall Frame (and, only when
a mode needs it, its first latent frame, "select"). Kept on the CPU as the run's cache will hold them: a
recall frame in the run's KV storage (``memory.kv_storage``: the cache dtype, or packed fp8 rows at 0.52x),
a select frame in the cache dtype. The official code keeps the recall frame in float32 and converts it when
it is loaded into the cache; storing the converted values gives the same cache contents at a fraction of the
memory. A pool file always holds the cache dtype (fp8 rows are decoded when saved), and a run reads either
(``KVFormat.stored``). At most ``max_size`` scenes (64), oldest dropped.

A pool is immutable: a rollout returns a new pool. ``save``/``load`` use safetensors with a versioned
header that names the model signature (layers, heads, head dim, dtype, token grid); loading checks it and
refuses a pool from another model or resolution with a message that says what differs.

While a video runs, its pool is a ``SceneRegistry`` (owned by ``memory.echo_memory.EchoMemoryState`` and
changed only by its own methods): the loaded pool's entries plus this video's scenes as they finish, the
run's signature, and where a recall target (a scene of this video or a label) points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..safe_files import WriteOutcome
from .config import EchoMemoryConfig, SceneMemoryError, Transition
from .files import HeaderFields, file_names, named_file, read_state_file, save_atomically
from .kv_storage import KVFormat
from .routing import Candidate, best, rank

if TYPE_CHECKING:
    from .state import SceneInfo

FORMAT = "echo-forcing-scene-pool"
VERSION = 1
MAX_POOL_SIZE = 1024
"""The most scenes a pool may hold (Echo Memory Config's scene_pool_size maximum)."""
MAX_GRID = 4096
MAX_LABEL = 1000
POOL_DTYPES = ("float32", "float16", "bfloat16")
POOL_DEVICE = torch.device("cpu")
"""Where a pool keeps its frames (saved with the pool, shared between runs)."""

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

    def __post_init__(self) -> None:
        for name in ("label", "prompt", "source"):
            if not isinstance(getattr(self, name), str):
                raise ScenePoolError(f"a pool entry's {name} must be text, got {type(getattr(self, name)).__name__}")
        for name in ("recall", "select"):
            frames = getattr(self, name)
            if frames is not None and not (isinstance(frames, tuple) and all(
                    isinstance(kv, tuple) and len(kv) == 2 and all(isinstance(t, torch.Tensor) and t.dim() == 3
                                                                  for t in kv) for kv in frames)):
                raise ScenePoolError(f"a pool entry's {name} frames must be per-layer (keys, values) tensors "
                                     "[tokens, heads, head_dim]")

    def __repr__(self) -> str:
        parts = [f"{self.label!r}"] + [n for n in ("recall", "select") if getattr(self, n) is not None]
        return f"PoolEntry({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class ScenePool:
    entries: tuple[PoolEntry, ...] = ()
    max_size: int = 64
    signature: PoolSignature | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or not \
                1 <= self.max_size <= MAX_POOL_SIZE:
            raise ScenePoolError(f"a scene pool's max_size must be a whole number in 1..{MAX_POOL_SIZE}, got "
                                 f"{self.max_size!r}")
        if not isinstance(self.entries, tuple) or not all(isinstance(e, PoolEntry) for e in self.entries):
            raise ScenePoolError("a scene pool's entries must be a tuple of PoolEntry")
        if len(self.entries) > self.max_size:
            raise ScenePoolError(f"a scene pool holds at most max_size={self.max_size} scenes, got "
                                 f"{len(self.entries)}")

    def __repr__(self) -> str:
        labels = ", ".join(repr(e.label)[1:-1][:40] for e in self.entries[:8])
        more = f", +{len(self.entries) - 8}" if len(self.entries) > 8 else ""
        return f"ScenePool({len(self.entries)} scenes: {labels}{more})"

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

    def save(self, path: str | os.PathLike) -> WriteOutcome:
        """Write the pool as safetensors (atomically: a temporary file renamed when complete)."""
        if self.signature is None:
            raise ScenePoolError("this pool has no model signature (it holds no scene yet); nothing to save")
        path = Path(path)
        tensors, entries = {}, []
        dtype = getattr(torch, self.signature.dtype)
        for i, entry in enumerate(self.entries):
            record = {"label": entry.label, "prompt": entry.prompt, "scene": entry.scene}
            for name in ("recall", "select"):
                frames = getattr(entry, name)
                record[name] = frames is not None
                if frames is not None:
                    tensors[f"{i}.{name}.k"] = torch.stack([KVFormat.unpacked(k, dtype) for k, _ in frames])
                    tensors[f"{i}.{name}.v"] = torch.stack([KVFormat.unpacked(v, dtype) for _, v in frames])
            entries.append(record)
        sig = self.signature
        metadata = {"format": FORMAT, "version": str(VERSION), "max_size": str(self.max_size),
                    "signature": json.dumps({"layers": sig.layers, "heads": sig.heads, "head_dim": sig.head_dim,
                                             "dtype": sig.dtype, "grid": list(sig.grid)}),
                    "entries": json.dumps(entries)}
        return save_atomically(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, expected: PoolSignature | None = None) -> ScenePool:
        """Read a pool written by ``save``; with ``expected``, refuse one made for another model or size.

        Every header field is type-checked, the entry count must be within ``max_size`` (1..``MAX_POOL_SIZE``),
        and the tensors must be exactly the ones the entries name, each ``[layers, tokens per frame, heads,
        head_dim]`` of the signature's dtype, finite (``memory.files``)."""
        path = Path(path)
        meta, tensors = read_state_file(path, FORMAT, VERSION, "scene pool", ScenePoolError)
        fields = HeaderFields(path.name, "scene pool", ScenePoolError)
        max_size = fields.int(meta, "max_size", 1, MAX_POOL_SIZE, text=True)
        raw = fields.json(meta, "signature", dict)
        grid = raw.get("grid")
        if not (isinstance(grid, list) and len(grid) == 2):
            raise fields.fail("signature.grid", "two numbers", grid)
        grid_hw = (fields.whole(grid[0], "signature.grid.h", 1, MAX_GRID),
                   fields.whole(grid[1], "signature.grid.w", 1, MAX_GRID))
        dtype = raw.get("dtype")
        if dtype not in POOL_DTYPES:
            raise fields.fail("signature.dtype", "one of " + ", ".join(POOL_DTYPES), dtype)
        signature = PoolSignature.of(fields.int(raw, "layers", 1, 1024, "signature."),
                                     fields.int(raw, "heads", 1, 1024, "signature."),
                                     fields.int(raw, "head_dim", 1, 4096, "signature."), dtype, grid_hw)
        if expected is not None:
            signature.require(expected, path.name)
        records = fields.json(meta, "entries", list)
        if len(records) > max_size:
            raise fields.fail("entries", f"at most max_size={max_size} scenes", f"{len(records)} scenes")
        shape = (signature.layers, grid_hw[0] * grid_hw[1], signature.heads, signature.head_dim)
        entries, used = [], set()
        for i, record in enumerate(records):
            where = f"entries[{i}]."
            record = fields.record(record, f"entries[{i}]")
            label = fields.text(record, "label", where, limit=MAX_LABEL)
            if not label.strip():
                raise fields.fail(where + "label", "a non-empty label", label)
            frames = {}
            for name in ("recall", "select"):
                if fields.flag(record, name, where):
                    kv = []
                    for part in ("k", "v"):
                        key = f"{i}.{name}.{part}"
                        tensor = tensors.get(key)
                        if tensor is None or tuple(tensor.shape) != shape or str(tensor.dtype) != f"torch.{dtype}":
                            got = "missing" if tensor is None else f"{list(tensor.shape)} {tensor.dtype}"
                            raise ScenePoolError(f"{path.name}: tensor {key} should be {list(shape)} {dtype} for "
                                                 f"the pool's signature, got {got}; save the pool again")
                        kv.append(tensor)
                        used.add(key)
                    frames[name] = tuple(zip(kv[0].unbind(0), kv[1].unbind(0), strict=True))
            entries.append(PoolEntry(label, fields.text(record, "prompt", where), frames.get("recall"),
                                     frames.get("select"), None,
                                     fields.int(record, "scene", 0, 2**31, where, optional=True), path.stem))
        extra = sorted(set(tensors) - used)
        if extra:
            raise ScenePoolError(f"{path.name} holds tensors no scene names ({', '.join(extra[:3])}); it was not "
                                 "written by Save Scene Pool")
        return cls(tuple(entries), max_size, signature)


class SceneRegistry:
    """One video's scene pool while it runs (see the module docstring)."""

    def __init__(self, scenes: Sequence[SceneInfo], base: ScenePool, max_size: int):
        self.scenes = scenes
        """The video's scenes (read only: their labels and prompts name the entries)."""
        self.base = base
        """The pool the video started from (never changed)."""
        self.max_size = max_size
        self.entries: list[PoolEntry] = list(base.entries)
        self.signature: PoolSignature | None = None  # this run's, known after the first registration

    # ---- the plan ---------------------------------------------------------------------------------------------

    def check_recall(self, index: int, config: EchoMemoryConfig) -> None:
        """Refuse scene ``index`` when it recalls nothing that can exist: no earlier scene (nor a loaded one),
        a target scene that does not come before it, a label no earlier scene or pool entry has."""
        scene = self.scenes[index]
        if scene.entry is Transition.RECALL:
            if not config.mode(Transition.RECALL).use_old_memory:
                return
            self._check_recallable(index, config.exclude_previous_scene)
        if scene.recall_target is not None:
            self._check_target(index, scene.recall_target)

    def _check_recallable(self, index: int, exclude_previous: bool) -> None:
        earlier = index - (1 if exclude_previous else 0)
        if earlier <= 0 and not self.base.recallable():
            raise SceneMemoryError(
                f"scene {index + 1} is a recall but there is no earlier scene to recall"
                + (" other than the previous one" if exclude_previous and index else "")
                + "; make it a smooth transition or a hard cut, or load a scene pool")

    def _check_target(self, index: int, target: int | str) -> None:
        if isinstance(target, int):
            if not 0 <= target < index:
                raise SceneMemoryError(f"scene {index + 1} recalls scene {target + 1}, which does not come before "
                                       f"it; name one of scenes 1..{index}")
        elif self.label_scene(target, index) is None and self.base.find(target) is None:
            known = [s.label for s in self.scenes[:index] if s.label] + [e.label for e in self.base.entries]
            raise SceneMemoryError(f"scene {index + 1} recalls {target!r}, which is neither an earlier scene's label "
                                   f"nor in the scene pool; known: {', '.join(known) or 'none'}")

    def label_scene(self, label: str, before: int) -> int | None:
        """The latest scene before ``before`` labelled ``label`` (case-insensitive)."""
        for j in range(before - 1, -1, -1):
            if (self.scenes[j].label or "").lower() == label.lower():
                return j
        return None

    # ---- registration -----------------------------------------------------------------------------------------

    def index_of(self, scene: int) -> int | None:
        """Position in ``entries`` of this video's scene ``scene`` (None once the pool dropped it)."""
        for i, entry in enumerate(self.entries):
            if entry.scene == scene and not entry.source:
                return i
        return None

    def register(self, scene: int, feature: Callable[[], torch.Tensor | None], select: LayerFrames | None = None,
                 recall: LayerFrames | None = None) -> None:
        """Record what scene ``scene`` leaves: a new entry (its routing feature from ``feature()``), or the
        frames added to its entry."""
        index = self.index_of(scene)
        if index is None:
            info = self.scenes[scene]
            entry = PoolEntry(info.label or f"scene {scene + 1}", info.prompt, recall, select, feature(), scene)
            self.entries.append(entry)
            self.entries = self.entries[-self.max_size:]
        else:
            old = self.entries[index]
            self.entries[index] = PoolEntry(old.label, old.prompt, recall or old.recall, select or old.select,
                                            old.feature, old.scene, old.source)

    def require_signature(self, signature: PoolSignature) -> None:
        """Take the run's signature at the first registration; a loaded pool of another model or size is
        refused there (after the first block, before any recall)."""
        if self.signature is None:
            self.signature = signature
            if self.base.signature is not None:
                self.base.signature.require(signature, "the scene pool")

    def resume(self, entries: list[PoolEntry], signature: PoolSignature | None,
               feature: Callable[[int], torch.Tensor | None]) -> None:
        """Take over the entries and signature of a shot boundary; this video's scenes get the routing feature
        of this plan (``feature(scene)``), and entries of the loaded pool are this run's own objects again (a
        boundary read from a file, or a pool loaded anew, holds equal copies of them)."""
        self.entries = [self._loaded(e) if e.source or e.scene is None else replace(e, feature=feature(e.scene))
                        for e in entries]
        self.signature = signature

    def _loaded(self, entry: PoolEntry) -> PoolEntry:
        for own in self.base.entries:
            if (own.label, own.prompt, own.source, own.scene) == (entry.label, entry.prompt, entry.source, entry.scene):
                return own
        return entry

    # ---- reads ------------------------------------------------------------------------------------------------

    def recall_entries(self) -> list[PoolEntry]:
        """The entries with a recall frame, oldest first."""
        return [e for e in self.entries if e.recall is not None]

    def newest_recall(self) -> LayerFrames | None:
        candidates = self.recall_entries()
        return candidates[-1].recall if candidates else None

    def choose(self, scene: int, kind: str, target: int | str | None, known: list[torch.Tensor | None],
               exclude_previous: bool) -> tuple[PoolEntry, Candidate, list[Candidate]]:
        """The entry a recall at scene ``scene`` brings back, with its ``kind`` ("recall" or "select") frame:
        the most similar (routing features ``known``, indexed like ``memory.routing.SceneFeatures``) or
        ``target``; with the chosen candidate and every candidate ranked."""
        pool = [e for e in self.entries if getattr(e, kind) is not None]
        if exclude_previous:
            pool = [e for e in pool if not (e.scene == scene - 1 and not e.source)]
        if not pool:
            raise SceneMemoryError(f"scene {scene + 1} is a recall but the scene pool holds no earlier scene")
        candidates = rank(known[scene], [self._feature(e, known) for e in pool])
        chosen = best(candidates)
        if target is not None:
            wanted = self._target(target, scene)
            matches = [c for c in candidates if pool[c.key] is wanted]
            if not matches:
                raise SceneMemoryError(f"scene {scene + 1}: the recall target {target!r} has no "
                                       f"{kind} frame in the pool")
            chosen = matches[0]
        return pool[chosen.key], chosen, candidates

    def _feature(self, entry: PoolEntry, known: list[torch.Tensor | None]) -> torch.Tensor:
        if not entry.source and entry.scene is not None:
            return known[entry.scene]
        return known[len(self.scenes) + next(i for i, own in enumerate(self.base.entries) if own is entry)]

    def _target(self, target: int | str, scene: int) -> PoolEntry | None:
        if isinstance(target, str):
            local = self.label_scene(target, scene)
            if local is None:
                return self.base.find(target)
            target = local
        index = self.index_of(target)
        return self.entries[index] if index is not None else None

    def result(self) -> ScenePool:
        """The pool after the video so far (a new object)."""
        return self.base.with_entries(self.entries, self.signature)


def pool_file(folder: str | os.PathLike, name: str) -> Path:
    """The file of the pool called ``name`` inside ``folder``, refusing any name that could leave it
    (``memory.files``)."""
    return named_file(folder, name, "scene pool", ScenePoolError)


def pool_names(folder: str | os.PathLike) -> list[str]:
    """Names of the pools saved in ``folder`` (sorted; files whose names are not valid pool names skipped)."""
    return file_names(folder)
