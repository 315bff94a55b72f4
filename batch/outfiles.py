"""Every file the batch command writes or removes, confined to its output folder (``--out``).

* **Names.** A file name that comes from outside (ComfyUI's history, the state file) is one path component:
  a non-empty string of valid Unicode, at most 255 bytes in UTF-8, without NUL or other control characters,
  ``/`` or ``\\``, not ``.`` or ``..``, not starting with a drive letter (``C:``); on Windows also without
  ``<>:"|?*``, a trailing dot or space, or a device name (``CON``, ``NUL``, ``COM1``, ...).
* **Confinement.** Before a file is written or removed its path is resolved (every symbolic link followed):
  the folder it sits in and the file itself must lie inside the resolved output folder. A symbolic link that
  leads out of it is refused, never followed; one that stays inside is replaced or removed as a link.
* **Temporary files** are the pack's own (:mod:`..safe_files`): ``.<name>.<16 hex digits>.echo-tmp`` in the
  target's own folder, created exclusively with mode ``0o666`` (so the file gets the user's umask, like any
  other new file), written, flushed to disk and renamed over the target only when complete; on any error or
  interruption the temporary file is removed. Downloaded files never start with ``.`` (a leading dot becomes
  ``_.``), so no output name can match this pattern.
* **Stale temporary files** (left by a killed run) are removed on the next run: only regular files whose name
  matches the pattern exactly and that nothing wrote to for ``safe_files.STALE_SECONDS`` (15 minutes). Any
  other file (``x.partial``, ``.x.partial``, a symbolic link) is never removed.

These checks guard against a tampered state file and a hostile or broken server. They do not guard against
another local user changing the output folder while the command runs; run one batch per output folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import safe_files
from ..safe_files import DRIVE_LETTER, UnsafePathError, component_problem, confined_file, confined_folder, shown

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain(value: object, limit: int = 40) -> str:
    """``value`` as text for messages: itself when short and printable, else :func:`shown`."""
    text = str(value)
    return text if text.isprintable() and len(text) <= limit else shown(value, limit)


def check_name(name: object, what: str) -> str:
    """``name`` itself when it is a safe file name; :class:`UnsafePathError` naming ``what`` otherwise."""
    problem = component_problem(name)
    if problem is not None:
        raise UnsafePathError(f"{what} {shown(name)}, which {problem}")
    return name


def check_view_params(subfolder: object, kind: object, where: str) -> None:
    """An output's subfolder and type are only sent back to ComfyUI's ``/view``, never used as local paths,
    but must still be plain relative text (``where`` says who gave them)."""
    for value, what in ((subfolder, "subfolder"), (kind, "type")):
        if not isinstance(value, str):
            problem = "is not a string"
        elif _CONTROL.search(value):
            problem = "contains a control character"
        elif what == "subfolder" and (value.startswith(("/", "\\")) or DRIVE_LETTER.match(value)):
            problem = "is an absolute path"
        elif ".." in value.replace("\\", "/").split("/"):
            problem = "contains '..'"
        else:
            continue
        raise UnsafePathError(f"{where} gives an output the {what} {shown(value)}, which {problem}")


def listed_file(root: Path, folder_name: str, rel: object) -> Path:
    """A file the state file lists for a line: ``<folder_name>/<file name>``, confined to that line's folder."""
    prefix = folder_name + "/"
    if not isinstance(rel, str) or not rel.startswith(prefix):
        raise UnsafePathError(f"it is not a file of the line's folder {folder_name}/")
    name = check_name(rel[len(prefix):], "its file name")
    return confined_file(root, root / folder_name / name)


def write_atomic(root: Path, path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (confined to ``root``) through a temporary file; the path written."""
    target = confined_file(root, path)
    safe_files.atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target


def remove_file(root: Path, path: Path) -> bool:
    """Remove ``path`` (confined to ``root``) if it is a file or a link; whether something was removed."""
    target = confined_file(root, path)
    try:
        if target.is_dir() and not target.is_symlink():
            return False
        target.unlink()
    except FileNotFoundError:
        return False
    return True


def clean_stale_temps(root: Path, folder: Path) -> list[Path]:
    """Remove the pack's own temporary files in ``folder`` (confined to ``root``) that nothing wrote to for
    ``safe_files.STALE_SECONDS``; the paths removed."""
    try:
        folder = confined_folder(root, folder)
    except UnsafePathError:
        return []
    return [folder / name for name in safe_files.clean_stale_temps(folder)]
