"""The pack's own safetensors files (scene pools, stories, spilled shot boundaries): named within their
folder, written atomically, and read only after their header says they are what they claim.

Names and writes are the safe-file layer's (``safe_files``): a name is 1-100 letters, digits, spaces, ``_``,
``-`` and ``.``, starting with a letter or digit (no separators, no ``..``), and the resolved file must sit
directly in its folder; a write goes to a temporary file of the pack's own pattern, is flushed and renamed.

Reading (:func:`read_state_file`) refuses, before any tensor is read: a missing file, a header that is not
a safetensors header or is over :data:`MAX_HEADER_BYTES`, another format or version, and a file that needs
more memory than is free (:data:`MEMORY_SHARE` of the available RAM). After reading: any float tensor holding
NaN or infinity. The header's fields are read with :class:`HeaderFields`, which type-checks every value and
names the field that is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from .. import safe_files
from ..models.checkpoints import non_finite
from ..safe_files import WriteOutcome, available_memory

SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 64 * 2**20
"""The largest header the pack reads (its own files' headers are kilobytes to a few megabytes)."""
MEMORY_SHARE = 0.5
"""A state file may take at most this share of the RAM available when it is read."""


def named_file(folder: str | os.PathLike, name: object, what: str, error: type[Exception] = ValueError) -> Path:
    """The file called ``name`` in ``folder`` (``what`` names the kind in messages; ``error`` is raised)."""
    return safe_files.named_file(folder, name, SUFFIX, what, error)


def file_names(folder: str | os.PathLike) -> list[str]:
    """Names of the files in ``folder`` (sorted; hidden files and names that are not valid skipped). Stale
    temporaries of a killed save are cleaned first, so they go when the nodes list the folder (at start)."""
    safe_files.clean_stale_temps(folder)
    return safe_files.file_names(folder, SUFFIX)


def save_atomically(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str]) -> WriteOutcome:
    """Write ``tensors`` and ``metadata`` as safetensors at ``path``: complete or not at all."""
    from safetensors.torch import save_file

    return safe_files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _header_length(path: Path, size: int, what: str, error: type[Exception]) -> int:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise error(f"{path.name} is truncated or corrupt (shorter than a header); save the {what} again")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER_BYTES, size - 8):
        why = "more than the file holds" if length > size - 8 else "over the 64 MiB limit"
        raise error(f"{path.name} is truncated or corrupt: its header claims {length} bytes, {why}; save the "
                    f"{what} again")
    return length


def read_state_file(path: str | os.PathLike, fmt: str, version: int, what: str,
                    error: type[Exception] = ValueError) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and tensors of one of the pack's safetensors files of format ``fmt`` (``what`` names it in
    messages, ``error`` is raised); see the module docstring for what is refused."""

    def check(meta: dict[str, str]) -> None:
        if meta.get("format") != fmt:
            raise error(f"{Path(path).name} is not an Echo-Forcing {what} (no '{fmt}' header)")
        if meta.get("version") != str(version):
            raise error(f"{Path(path).name} is a {what} of format version {str(meta.get('version'))[:20]}; this "
                        f"pack reads version {version}")

    return read_tensor_file(path, what, error, check)


def read_tensor_file(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
                     check_header: Callable[[dict[str, str]], None] | None = None
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and tensors of any safetensors file (a state file, a latent file), with the refusals of the
    module docstring; ``check_header`` sees the metadata before any tensor is read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path.name}")
    size = path.stat().st_size
    _header_length(path, size, what, error)
    free = available_memory()
    if free is not None and size > free * MEMORY_SHARE:
        raise error(f"{path.name} is {size / 2**30:.2f} GiB, more than half the memory free now "
                    f"({free / 2**30:.2f} GiB); it cannot be loaded here")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if check_header is not None:
                check_header(meta)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise error(f"{path.name} is truncated or corrupt ({err}); save the {what} again") from None
    bad = non_finite(tensors)
    if bad:
        raise error(f"{path.name} holds NaN or infinite values (tensor {bad[0]!r}); it is damaged and cannot be "
                    f"used: save the {what} again from a good run")
    return meta, tensors


class HeaderFields:
    """Typed access to a JSON header field of a state file; every wrong value raises ``error`` naming the
    file, the field and what was expected (so no malformed header reaches the code as a wrong type)."""

    def __init__(self, source: str, what: str, error: type[Exception]):
        self.source, self.what, self.error = source, what, error

    def fail(self, field: str, expected: str, value: object) -> Exception:
        return self.error(f"{self.source} has a damaged {self.what} header: {field} should be {expected}, got "
                          f"{safe_files.shown(value, 60)}; save the {self.what} again")

    def json(self, meta: dict, key: str, kind: type) -> object:
        raw = meta.get(key)
        if not isinstance(raw, str):
            raise self.fail(key, "present", raw)
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise self.fail(key, "JSON", raw) from None
        if not isinstance(value, kind):
            raise self.fail(key, kind.__name__, value)
        return value

    def int(self, record: dict, key: str, low: int, high: int, where: str = "", optional: bool = False,
            text: bool = False) -> int | None:
        """An integer in ``low..high`` (``text``: written as decimal digits, as safetensors metadata is)."""
        return self.whole(record.get(key) if isinstance(record, dict) else None, where + key, low, high, optional,
                          text)

    def whole(self, value: object, field: str, low: int, high: int, optional: bool = False,
              text: bool = False) -> int | None:
        """``value`` (the header field ``field``) as an integer in ``low..high`` (see :meth:`int`)."""
        if value is None and optional:
            return None
        if text and isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"an integer in {low}..{high}", value)
        return value

    def number(self, record: dict, key: str, low: float, high: float, where: str = "") -> float:
        value = record.get(key) if isinstance(record, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise self.fail(where + key, f"a number in {low:g}..{high:g}", value)
        return float(value)

    def text(self, record: dict, key: str, where: str = "", optional: bool = False, limit: int = 100_000) -> str | None:
        value = record.get(key) if isinstance(record, dict) else None
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise self.fail(where + key, f"text of at most {limit} characters", value)
        return value

    def flag(self, record: dict, key: str, where: str = "") -> bool:
        value = record.get(key) if isinstance(record, dict) else None
        if not isinstance(value, bool):
            raise self.fail(where + key, "true or false", value)
        return value

    def record(self, value: object, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, "an object", value)
        return value
