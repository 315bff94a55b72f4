"""The one safe-file layer of the pack (no torch, no ComfyUI: the batch client uses it too).

Every file the pack writes or removes goes through here:

* **Names never leave their folder.** :func:`named_file` turns a user's name into a file directly inside a
  folder (1-100 letters, digits, spaces, ``_``, ``-``, ``.``; no separators, no ``..``);
  :func:`component_problem` says why a name from a file or a server cannot be a file name (a
  separator, ``..``, NUL or another control character, over 255 bytes, ...), and :func:`confined_file`
  refuses a path whose folder or link target ends up outside its root.
* **Writes are complete or absent.** :func:`atomic_write` writes to a temporary file of the pack's own
  pattern (``.<name>.<16 hex>.echo-tmp``) created exclusively in the target's folder, flushes it to disk and
  renames it over the target (``os.replace``), then flushes the folder. Two writers of the same name never
  share a temporary file; each gets a complete file on disk, the later rename wins, and each is told
  whether it replaced a file (:class:`WriteOutcome`). Writes to one folder are serialised by an advisory
  lock on the folder where the OS has one.
* **Nothing of the user's is deleted.** Only temporary files of exactly our pattern, untouched for
  :data:`STALE_SECONDS`, are cleaned (left behind by a killed process); a user's ``x.partial`` or
  ``.x.safetensors.partial`` is never touched.
* **Modes follow the user's umask** (``0o666 & ~umask``), as any file the user's own tools create.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEMP_SUFFIX = ".echo-tmp"
KEPT_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
"""Extensions a temporary file keeps (video writers choose the container by it)."""
_TEMP = re.compile(r"^\..+\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX)
                   + "(" + "|".join(re.escape(e) for e in KEPT_EXTENSIONS) + ")?$", re.S)
STALE_SECONDS = 15 * 60
"""A temporary file of ours untouched this long belongs to a process that died; it is removed."""
MAX_NAME_BYTES = 255
"""The longest file name (one path component) most file systems accept."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")


class UnsafePathError(ValueError):
    """A path that would leave its folder or cannot be a file name; the message says which and why."""


# ------------------------------------------------------------------------------------------------------- names


def name_stem(name: object, suffix: str) -> str | None:
    """The stem of a user's file name (``suffix`` optional at its end), or None when it is not a valid name."""
    if not isinstance(name, str):
        return None
    raw = name.strip()
    stem = raw[: -len(suffix)] if suffix and raw.lower().endswith(suffix) else raw
    return stem if _NAME.match(stem) and ".." not in stem else None


def named_file(folder: str | os.PathLike, name: object, suffix: str, what: str,
               error: type[Exception] = ValueError) -> Path:
    """The file called ``name`` (plus ``suffix``) directly in ``folder``; ``error`` names the ``what``."""
    stem = name_stem(name, suffix)
    if stem is None:
        quoted = name if isinstance(name, str) else type(name).__name__
        raise error(f"invalid {what} name {shown(quoted)}: use 1-100 letters, digits, spaces, '_', '-' or '.', "
                    "starting with a letter or digit (no folders, no '..')")
    root = Path(folder).resolve()
    path = (root / (stem + suffix)).resolve()
    if path.parent != root:
        raise error(f"invalid {what} name {shown(name)}: it leaves the {what} folder")
    return path


def file_names(folder: str | os.PathLike, suffix: str) -> list[str]:
    """Names (stems) of the regular files ``*suffix`` in ``folder``: sorted, hidden and invalid names skipped."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = []
    for path in root.iterdir():
        if path.name.endswith(suffix) and not path.name.startswith(".") and path.is_file():
            stem = name_stem(path.name, suffix)
            if stem is not None:
                names.append(stem)
    return sorted(names, key=str.lower)


DRIVE_LETTER = re.compile(r"[A-Za-z]:")
_WINDOWS_CHARS = set('<>:"|?*')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}


def component_problem(name: object) -> str | None:
    """Why ``name`` cannot be one file name (a path component) here, or None when it can: not text, empty,
    not valid Unicode, NUL or another control character, a path separator, ``.`` or ``..``, a drive letter,
    over 255 bytes in UTF-8; on Windows also ``<>:"|?*``, a trailing dot or space, a device name."""
    if not isinstance(name, str):
        return f"is not a string but {type(name).__name__}"
    if not name:
        return "is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if "\x00" in name:
        return "contains a NUL character"
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"contains the control character {control!r}"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", ".."):
        return f"is {name!r}"
    if DRIVE_LETTER.match(name):
        return "starts with a drive letter"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long (at most {MAX_NAME_BYTES})"
    if os.name == "nt":
        bad = next((c for c in name if c in _WINDOWS_CHARS), None)
        if bad is not None:
            return f"contains {bad!r}, which Windows does not allow in file names"
        if name[-1] in ". ":
            return "ends with a dot or a space, which Windows drops"
        if name.split(".")[0].strip().upper() in _WINDOWS_DEVICES:
            return "is a device name on Windows"
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def confined_folder(root: Path, folder: Path) -> Path:
    """``folder`` resolved (every symlink followed); :class:`UnsafePathError` when it lies outside ``root``
    (an already resolved folder)."""
    resolved = folder.resolve()
    if not _inside(resolved, root):
        raise UnsafePathError(f"{folder} leads to {resolved}, outside the output folder {root} (a symbolic link?); "
                              "refusing to write or remove anything there")
    return resolved


def confined_file(root: Path, path: Path) -> Path:
    """The path to write or remove for ``path``: its folder resolved, its own name kept (a symbolic link is
    replaced or removed as a link). :class:`UnsafePathError` when the folder, or the file's link target, lies
    outside ``root``."""
    folder = confined_folder(root, path.parent)
    target = folder / path.name
    if target.is_symlink():
        resolved = target.resolve()
        if not _inside(resolved, root):
            raise UnsafePathError(f"{path} is a symbolic link to {resolved}, outside the output folder {root}; "
                                  "refusing to replace or remove it")
    return target


class OutputFolderError(argparse.ArgumentTypeError, ValueError):
    """An output folder that cannot be used; argparse shows the message as a usage error (exit code 2)."""


def output_folder(text: str) -> Path:
    """A command's output folder from its argument (an ``argparse`` type): a folder that exists or can be made.

    Refuses an empty name (which would mean the current folder), control characters, an existing file, a
    folder under a file and a place this user cannot write to, each with a message that names it.
    """
    if not isinstance(text, str) or not text.strip():
        raise OutputFolderError("the output folder is empty; give a folder name, e.g. --out renders")
    if any(ord(ch) < 32 for ch in text):
        raise OutputFolderError(f"the output folder {shown(text)} holds a control character")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{shown(text)} is a file, not a folder")
    parent = path.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputFolderError(f"cannot make the output folder {shown(text)}: {shown(str(parent))} is a file")
    writable = path if path.exists() else parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise OutputFolderError(f"cannot write in the output folder {shown(text)}: no permission to write in "
                                f"{shown(str(writable))}")
    return path


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters; never raises (a repr that fails, or an
    int too long for ``repr``, is named by its type). Every message that quotes an outside value uses it."""
    try:
        text = repr(value)
    except Exception:  # any object may reach a message; a repr that fails must not break it
        text = f"<{type(value).__name__}>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------------ writes


def file_mode() -> int:
    """``0o666`` less the process's umask: the mode a plain ``open(..., "w")`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_own_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file of the pack's own pattern (``.<name>.<16 hex>.echo-tmp``)."""
    return bool(_TEMP.match(name))


def clean_stale_temps(folder: str | os.PathLike, older_than: float = STALE_SECONDS) -> list[str]:
    """Remove our own temporary files in ``folder`` untouched for ``older_than`` seconds; their names."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    now = time.time()
    for path in root.iterdir():
        if not is_own_temp(path.name):
            continue
        with contextlib.suppress(OSError):
            info = path.lstat()
            if path.is_symlink() or not path.is_file() or now - info.st_mtime < older_than:
                continue
            path.unlink()
            removed.append(path.name)
    return removed


@dataclass(frozen=True)
class WriteOutcome:
    path: Path
    replaced: bool
    """Whether a file of that name was there (and is now replaced)."""
    size: int


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An advisory exclusive lock on ``folder`` (serialises the pack's writers; a no-op where unsupported)."""
    try:
        import fcntl
    except ImportError:  # Windows: os.replace is still atomic
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened for locking (some network file systems): write unlocked
        yield
        return
    try:
        with contextlib.suppress(OSError):  # no lock support (ENOLCK): os.replace alone still keeps files whole
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def temp_path_for(path: Path, keep_suffix: bool = False) -> Path:
    """A new, exclusively created, empty temporary file of our pattern next to ``path`` (mode per umask);
    ``keep_suffix`` ends it with ``path``'s extension (for writers that choose a format by it)."""
    stem = path.name.encode("utf-8", "surrogateescape")[: MAX_NAME_BYTES - 50].decode("utf-8", "ignore")
    ext = path.suffix.lower() if keep_suffix and path.suffix.lower() in KEPT_EXTENSIONS else ""
    while True:
        tmp = path.with_name(f".{stem}.{secrets.token_hex(8)}{TEMP_SUFFIX}{ext}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, lock: bool = True,
                 keep_suffix: bool = False) -> WriteOutcome:
    """Call ``write(temp)`` to fill a fresh temporary file next to ``path``, then move it over ``path``.

    The temporary file is flushed to disk before the rename and the folder after it; on any error (or an
    interrupt) it is removed and an existing ``path`` is left as it was. Stale temporaries of ours in the
    folder are cleaned first. A symlink at ``path`` is replaced by the file, never followed.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder) if lock else contextlib.nullcontext():
        clean_stale_temps(folder)
        tmp = temp_path_for(path, keep_suffix)
        try:
            write(tmp)
            mode = file_mode()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
                os.chmod(tmp, mode)  # writers that create their own file (mkstemp-like) may have made it 0600
            replaced = os.path.lexists(path)
            if path.is_dir() and not path.is_symlink():
                raise IsADirectoryError(f"{path.name} is a folder; choose another name")
            size = tmp.stat().st_size
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _sync_folder(folder)
    return WriteOutcome(path, replaced, size)


class AtomicFile:
    """A file written as a stream under a temporary name next to ``target`` (a confined path).

    ``with AtomicFile(target) as f: f.write(...); f.commit()``: ``commit`` flushes the data to disk and renames
    the file over ``target``; leaving the block without committing removes the temporary file.
    """

    def __init__(self, target: Path):
        self.target, self.size, self._done = Path(target), 0, False
        self.path = temp_path_for(self.target)
        try:
            self._file = open(self.path, "r+b")  # closed by commit or __exit__
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise

    def __enter__(self) -> AtomicFile:
        return self

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, self.target)
        self._done = True
        _sync_folder(self.target.parent)

    def __exit__(self, *exc) -> None:
        if not self._done:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def write_text(path: str | os.PathLike, text: str) -> WriteOutcome:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; Windows cannot open a folder this way)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------------ memory


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """RAM available to a new allocation without swapping (Linux ``MemAvailable``; else half the physical)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    ram = physical_memory()
    return None if ram is None else ram // 2
