"""Snapshots of a memory state at a shot boundary: what the cache must remember to go on at a shot's first block.

A rollout that stops after a shot (or a later run that reuses the shots before an edit) continues from a
snapshot taken right before the next shot's ``start_scene``. ``capture`` copies every per-layer object of a
state (its fields, recursively: tensors, numbers, lists, dicts, nested helper objects) into CPU memory, plus
the scene-level fields the state names (``MemoryState.boundary_fields``); ``restore`` writes a copy back into
a FRESH state of the same policy, built for the new shot list, so what derives from the plan (validation,
routing features, the scene list) is computed for the new plan and only what the video so far decided is
carried over.

Rules of the walk:
* tensors are copied to the CPU (a snapshot never holds GPU memory) and remember their device and whether
  they were pinned, so a restore puts each back where it was; two fields holding the same tensor still share
  one after a restore;
* tensors held by frozen dataclasses (scene-pool entries, configs) are immutable by contract and shared,
  not copied: a snapshot and the live run refer to the same scene-pool frames;
* frozen dataclasses, enums, callables (methods a test patched onto a layer included) are shared as they
  are; a callable field is not state and is left as the fresh object has it;
* an object may choose what is captured with ``snapshot_fields()`` and how it is put back with
  ``restore_fields(fields)`` (Echo-Forcing's layer keeps only the frames ``memory.transitions.enter_scene``
  can read).

A snapshot is never changed after creation; every restore copies from it. Stored as plain data
(``snapshot_record``), it names its state's ``MemoryState.snapshot_layout``; a record of another layout is
refused with a ``SnapshotFormatError`` that says so.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
from dataclasses import dataclass

import torch

_ATOMS = (int, float, complex, str, bytes, bool, type(None), torch.device, torch.dtype, enum.Enum, type)
_BEHAVIOUR = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.BuiltinMethodType,
              types.LambdaType)


def _frozen(value) -> bool:
    params = getattr(type(value), "__dataclass_params__", None)
    return params is not None and params.frozen


def _fields(obj) -> dict:
    getter = getattr(obj, "snapshot_fields", None)
    fields = getter() if getter is not None else vars(obj)
    return {k: v for k, v in fields.items() if not isinstance(v, _BEHAVIOUR)}


def _shared_tensors(value, found: dict[int, torch.Tensor], seen: dict[int, object], frozen: bool = False) -> None:
    """Collect the tensors reachable through frozen dataclasses (immutable, shared by snapshots)."""
    if isinstance(value, torch.Tensor):
        if frozen:
            found[id(value)] = value
        return
    if id(value) in seen or isinstance(value, _ATOMS):
        return
    seen[id(value)] = value  # kept alive: ``snapshot_fields`` may build temporaries whose ids would be reused
    if _frozen(value):
        for f in dataclasses.fields(value):
            _shared_tensors(getattr(value, f.name), found, seen, True)
        return
    for item in _children(value):
        _shared_tensors(item, found, seen, frozen)


def _children(value) -> list:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if isinstance(value, _BEHAVIOUR) or not hasattr(value, "__dict__"):
        return []
    return list(_fields(value).values())


@dataclass(frozen=True)
class _Object:
    """A captured object: its class and its captured fields."""

    cls: type
    fields: dict


@dataclass(frozen=True)
class _Tensor:
    """A captured tensor: its CPU copy and where it lived."""

    data: torch.Tensor
    device: torch.device
    pinned: bool


_NOT_LEAF = object()


class _Mapper:
    """Maps a tree of values: atoms and callables pass (``atom``), containers are rebuilt, everything else is
    a leaf (``leaf``). Every object met is memoised by id, and kept alive meanwhile, so shared references
    stay shared and no id is reused by a temporary."""

    def __init__(self):
        self.memo: dict[int, object] = {}
        self.originals: list[object] = []

    def atom(self, value):
        return value

    def leaf(self, value, key: int):
        return _NOT_LEAF

    def value(self, value):
        if isinstance(value, _ATOMS) or isinstance(value, _BEHAVIOUR):
            return self.atom(value)
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        self.originals.append(value)
        out = self.leaf(value, key)
        if out is not _NOT_LEAF:
            return out
        if isinstance(value, dict):
            out = self.memo[key] = {}
            out.update((k, self.value(v)) for k, v in value.items())
        elif isinstance(value, list):
            out = self.memo[key] = []
            out.extend(self.value(v) for v in value)
        elif isinstance(value, (tuple, set, frozenset)):
            out = self.memo[key] = type(value)(self.value(v) for v in value)
        else:
            raise TypeError(f"cannot snapshot a {type(value).__name__} in a memory state")
        return out


class _Walk(_Mapper):
    """One capture (``copy=True``: CPU copies; ``copy=False``: references only, to count bytes on meta tensors)."""

    def __init__(self, shared: dict[int, torch.Tensor], copy: bool):
        super().__init__()
        self.shared, self.copy = shared, copy
        self.bytes = 0

    def leaf(self, value, key: int):
        if isinstance(value, torch.Tensor):
            if key in self.shared:
                out = value
            else:
                self.bytes += value.numel() * value.element_size()
                data = value.detach().to("cpu", copy=True) if self.copy else value
                out = _Tensor(data, value.device, value.device.type == "cpu" and value.is_pinned())
        elif _frozen(value):
            out = value
        elif hasattr(value, "__dict__"):
            out = self.memo[key] = _Object(type(value), {})
            out.fields.update((k, self.value(v)) for k, v in _fields(value).items())
            return out
        else:
            return _NOT_LEAF
        self.memo[key] = out
        return out


class _Restore(_Mapper):
    def __init__(self, moves: dict[torch.device, torch.device]):
        super().__init__()
        self.moves = moves  # the snapshot's compute device -> this run's (a story made on another machine)

    def atom(self, value):
        return self.moves.get(value, value) if isinstance(value, torch.device) else value

    def leaf(self, value, key: int):
        if isinstance(value, torch.Tensor):
            out = value  # tensors met here are shared (immutable) ones
        elif isinstance(value, _Tensor):
            device = self.moves.get(value.device, value.device)
            if device.type == "cpu":
                out = value.data.clone(memory_format=torch.preserve_format)
                if value.pinned and torch.cuda.is_available():
                    out = out.pin_memory()
            else:
                out = value.data.to(device, copy=True)
        elif isinstance(value, _Object):
            out = self.memo[key] = object.__new__(value.cls)
            _put(out, self.fields(value))
            return out
        elif _frozen(value):
            out = value
        else:
            return _NOT_LEAF
        self.memo[key] = out
        return out

    def fields(self, captured: _Object) -> dict:
        return {k: self.value(v) for k, v in captured.fields.items()}


def _put(obj, fields: dict) -> None:
    setter = getattr(obj, "restore_fields", None)
    if setter is not None:
        setter(fields)
    else:
        obj.__dict__.update(fields)


@dataclass(frozen=True, repr=False)
class MemorySnapshot:
    """A memory state at a shot boundary, in CPU memory. Immutable; restore it with ``MemoryState.resume``."""

    state_type: type
    layers: tuple[_Object, ...]
    scene_fields: dict
    nbytes: int
    """Bytes this snapshot holds itself (its tensor copies; shared scene-pool frames not counted)."""
    device: torch.device | None = None
    """The compute device the state ran on (a restore on another device moves what lived there)."""

    def __repr__(self) -> str:
        return f"MemorySnapshot({self.state_type.__name__}, {len(self.layers)} layers, {self.nbytes} bytes)"


def capture(state, copy: bool = True, device: torch.device | str | None = None) -> MemorySnapshot:
    """A snapshot of ``state`` (a ``memory.state.MemoryState``) between two shots, made on compute device
    ``device``. ``copy=False`` only counts the bytes a snapshot would hold (works on meta tensors; the result
    must not be restored)."""
    scene_fields = state.boundary_fields()
    shared: dict[int, torch.Tensor] = {}
    seen: dict[int, object] = {}
    for value in (scene_fields, *state.layers):
        _shared_tensors(value, shared, seen)
    walk = _Walk(shared, copy)
    layers = tuple(walk.value(layer) for layer in state.layers)
    fields = walk.value(scene_fields)
    return MemorySnapshot(type(state), layers, fields, walk.bytes, None if device is None else torch.device(device))


def restore(snapshot: MemorySnapshot, state, device: torch.device | str | None = None) -> None:
    """Write a copy of ``snapshot`` into ``state``, a fresh state made by the same policy, for a run on
    ``device`` (what lived on the snapshot's compute device goes there)."""
    if type(state) is not snapshot.state_type or len(state.layers) != len(snapshot.layers):
        raise ValueError(f"a snapshot of {snapshot.state_type.__name__} with {len(snapshot.layers)} layers cannot "
                         f"resume {type(state).__name__} with {len(state.layers)} layers")
    moves = {}
    if device is not None and snapshot.device is not None and torch.device(device) != snapshot.device:
        moves[snapshot.device] = torch.device(device)
    walk = _Restore(moves)
    for layer, captured in zip(state.layers, snapshot.layers, strict=True):
        if type(layer) is not captured.cls:
            raise ValueError(f"a snapshot of {captured.cls.__name__} layers cannot resume {type(layer).__name__}")
        if captured.fields.get("config", None) != getattr(layer, "config", None):
            raise ValueError("the snapshot was made with other memory settings than this run's; use the same "
                             "preset and options, or start from the beginning")
        _put(layer, walk.fields(captured))
    state.resume_fields(walk.value(snapshot.scene_fields))


# ---- files: a snapshot as JSON plus named tensors (no pickle) --------------------------------------------------


class SnapshotFormatError(ValueError):
    """A stored snapshot that cannot be read back (damaged, or naming something this pack does not have)."""


def _known_types() -> dict[str, type]:
    """The only classes a stored snapshot may name: the memory package's own (looked up by name, never
    imported from the file)."""
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                found[value.__name__] = value
    return found


class RecordWriter:
    """Turns snapshot values into JSON-able data, collecting their tensors by name (each tensor once)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.names: dict[int, str] = {}
        self.keep: list[object] = []

    def tensor(self, t: torch.Tensor, device: torch.device | None = None, pinned: bool = False) -> dict:
        name = self.names.get(id(t))
        if name is None:
            name = self.names[id(t)] = f"t{len(self.tensors)}"
            self.tensors[name] = t.detach().to("cpu").contiguous()
            self.keep.append(t)
        out = {"$tensor": name}
        if device is not None:
            out.update(device=str(device), pinned=pinned)
        return out

    def value(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (enum.Enum, torch.device, torch.dtype, type)):
            return self._name(v)
        if isinstance(v, torch.Tensor):
            return self.tensor(v)
        if isinstance(v, _Tensor):
            return self.tensor(v.data, v.device, v.pinned)
        if isinstance(v, _Object):
            return {"$object": v.cls.__name__, "fields": self.value(v.fields)}
        if _frozen(v):
            return {"$frozen": type(v).__name__,
                    "fields": {f.name: self.value(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}}
        if isinstance(v, (tuple, list, dict)):
            return self._container(v)
        raise SnapshotFormatError(f"cannot store a {type(v).__name__} of a memory snapshot")

    @staticmethod
    def _name(v) -> dict:
        """An enum member, device, dtype or memory class, by name."""
        if isinstance(v, enum.Enum):
            return {"$enum": type(v).__name__, "value": v.value}
        if isinstance(v, torch.device):
            return {"$device": str(v)}
        if isinstance(v, torch.dtype):
            return {"$dtype": str(v).replace("torch.", "")}
        return {"$type": v.__name__}

    def _container(self, v: tuple | list | dict):
        if isinstance(v, tuple):
            return {"$tuple": [self.value(x) for x in v]}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: self.value(x) for k, x in v.items()}
        return {"$dict": [[self.value(k), self.value(x)] for k, x in v.items()]}


class RecordReader:
    """Turns stored data back into values; classes only from the memory package, tensors by name."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors, self.types = tensors, _known_types()

    def type(self, name) -> type:
        cls = self.types.get(name) if isinstance(name, str) else None
        if cls is None:
            raise SnapshotFormatError(f"the stored memory names {repr(name)[:60]}, which is not a memory class of "
                                      "this pack")
        return cls

    def value(self, v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            raise SnapshotFormatError(f"unexpected stored value {repr(v)[:60]}")
        for tag, read in self._TAGGED:
            if tag in v:
                return read(self, v)
        return {k: self.value(x) for k, x in v.items()}

    def _tensor(self, v: dict):
        t = self.tensors.get(v["$tensor"])
        if t is None:
            raise SnapshotFormatError(f"the stored memory refers to a missing tensor {v['$tensor']!r}")
        return t if "device" not in v else _Tensor(t, _device(v["device"]), bool(v.get("pinned")))

    def _dtype(self, v: dict) -> torch.dtype:
        dtype = getattr(torch, str(v["$dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise SnapshotFormatError(f"unknown dtype {repr(v['$dtype'])[:40]}")
        return dtype

    def _frozen(self, v: dict):
        cls = self.type(v["$frozen"])
        if not _frozen_class(cls):
            raise SnapshotFormatError(f"{cls.__name__} is not an immutable value")
        return cls(**self.value(v["fields"]))

    _TAGGED = (
        ("$tensor", _tensor),
        ("$enum", lambda self, v: self.type(v["$enum"])(v["value"])),
        ("$device", lambda self, v: _device(v["$device"])),
        ("$dtype", _dtype),
        ("$type", lambda self, v: self.type(v["$type"])),
        ("$object", lambda self, v: _Object(self.type(v["$object"]), self.value(v["fields"]))),
        ("$frozen", _frozen),
        ("$tuple", lambda self, v: tuple(self.value(x) for x in v["$tuple"])),
        ("$dict", lambda self, v: {self._key(k): self.value(x) for k, x in v["$dict"]}),
    )
    """How each tagged value (``RecordWriter``) is read back, tried in this order."""

    def _key(self, k):
        key = self.value(k)
        if isinstance(key, (list, dict)):
            raise SnapshotFormatError("a stored mapping has an unhashable key")
        return key


_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d{1,3})?$")


def _device(name: object) -> torch.device:
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise SnapshotFormatError(f"the stored memory names an unknown device {repr(name)[:40]}")
    return torch.device(name)


def _frozen_class(cls: type) -> bool:
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and params.frozen


def snapshot_record(snapshot: MemorySnapshot,
                    writer: RecordWriter | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """``snapshot`` as JSON-able data plus named CPU tensors (for a safetensors file)."""
    writer = writer or RecordWriter()
    record = {"state": snapshot.state_type.__name__, "layout": snapshot.state_type.snapshot_layout,
              "layers": [writer.value(layer) for layer in snapshot.layers],
              "scene_fields": writer.value(snapshot.scene_fields), "nbytes": snapshot.nbytes,
              "device": None if snapshot.device is None else str(snapshot.device)}
    return record, writer.tensors


def _check_layout(state_type: type, stored: object) -> None:
    """Refuse a snapshot stored with another layout of its state (``MemoryState.snapshot_layout``)."""
    expected = getattr(state_type, "snapshot_layout", None)
    if expected is None:
        raise SnapshotFormatError(f"the stored memory names {state_type.__name__}, which is not a memory state")
    if stored != expected:
        raise SnapshotFormatError(
            f"the stored {state_type.__name__} has snapshot layout {repr(stored)[:20]}, but this version of the pack "
            f"reads layout {expected} (it was written by another version); generate its shots again")


def snapshot_from_record(record: dict, tensors: dict[str, torch.Tensor]) -> MemorySnapshot:
    """The snapshot ``snapshot_record`` stored; refuses anything that is not this pack's memory."""
    reader = RecordReader(tensors)
    try:
        state_type = reader.type(record["state"])
        _check_layout(state_type, record.get("layout", 1))
        layers = tuple(reader.value(layer) for layer in record["layers"])
        if not all(isinstance(layer, _Object) for layer in layers):
            raise SnapshotFormatError("a stored layer is not a memory object")
        fields = reader.value(record["scene_fields"])
        if not isinstance(fields, dict):
            raise SnapshotFormatError("the stored scene fields are not a mapping")
        device = record.get("device")
        return MemorySnapshot(state_type, layers, fields, int(record["nbytes"]),
                              None if device is None else torch.device(device))
    except SnapshotFormatError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise SnapshotFormatError(f"the stored memory is damaged ({type(err).__name__}: {err})") from None
