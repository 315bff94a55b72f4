"""The pack's own files (scene pools, stories): names that can never leave their folder, and writes that
never leave half a file.

A name is 1-100 letters, digits, spaces, ``_``, ``-`` and ``.``, starting with a letter or digit (no path
separators, no ``..``); a trailing ``.safetensors`` is optional. The resolved file must sit directly in
its folder (a symlinked folder entry that points elsewhere is refused). Writes go to a hidden temporary
file in the same folder, are flushed to disk and renamed over the target only when complete; on any error
the temporary file is removed and an existing file of that name is left as it was.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

SUFFIX = ".safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")


def _stem(name) -> str | None:
    raw = str(name).strip()
    stem = raw[: -len(SUFFIX)] if raw.lower().endswith(SUFFIX) else raw
    return stem if _NAME.match(stem) and ".." not in stem else None


def named_file(folder: str | os.PathLike, name: str, what: str, error: type[Exception] = ValueError) -> Path:
    """The file called ``name`` in ``folder`` (``what`` names the kind in messages; ``error`` is raised)."""
    stem = _stem(name)
    if stem is None:
        raise error(f"invalid {what} name {name!r}: use 1-100 letters, digits, spaces, '_', '-' or '.', starting "
                    "with a letter or digit (no folders, no '..')")
    root = Path(folder).resolve()
    path = (root / (stem + SUFFIX)).resolve()
    if path.parent != root:
        raise error(f"invalid {what} name {name!r}: it leaves the {what} folder")
    return path


def file_names(folder: str | os.PathLike) -> list[str]:
    """Names of the files in ``folder`` (sorted; hidden files and names that are not valid skipped)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = []
    for path in root.iterdir():
        if path.is_file() and path.name.endswith(SUFFIX) and not path.name.startswith("."):
            stem = _stem(path.name)
            if stem is not None:
                names.append(stem)
    return sorted(names, key=str.lower)


def save_atomically(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and ``metadata`` as safetensors at ``path``: complete or not at all."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def read_state_file(path: str | os.PathLike, fmt: str, version: int, what: str,
                    error: type[Exception] = ValueError) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and tensors of one of the pack's safetensors files of format ``fmt`` (``what`` names it in
    messages, ``error`` is raised): refuses a missing file, one larger than half this machine's memory, a
    truncated one, and any other format or version."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path.name}")
    ram = physical_memory()
    size = path.stat().st_size
    if ram is not None and size > ram // 2:
        raise error(f"{path.name} is {size / 2**30:.1f} GiB, more than half of this machine's memory "
                    f"({ram / 2**30:.1f} GiB); it cannot be loaded here")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != fmt:
                raise error(f"{path.name} is not an Echo-Forcing {what} (no '{fmt}' header)")
            if meta.get("version") != str(version):
                raise error(f"{path.name} is a {what} of format version {meta.get('version')}; this pack reads "
                            f"version {version}")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise error(f"{path.name} is truncated or corrupt ({err}); save the {what} again") from None
    return meta, tensors
