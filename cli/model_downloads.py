"""Known model files by name (``models/registry.py``) into a ComfyUI models folder: the hub transfer, the
SHA-256 check and the safe conversion of pickle releases. ``cli/models.py`` is the command around it.

The steps, each refusing before the next starts:

1. **Where.** The file goes to ``<models>/<folder>/<file>``; a folder or file that resolves outside
   ``<models>`` (a symbolic link, ``..``) is refused (``safe_files.confined_file``). A file already there is
   kept when it is the registry's (same SHA-256, or a conversion of it) and otherwise replaced only with
   ``force``.
2. **What.** One HEAD request (``huggingface_hub.get_hf_file_metadata``) at the pinned commit gives the
   commit the hub serves, the file's size and the SHA-256 of its LFS object. A hub file whose SHA-256 is not the
   pinned one is refused before any byte is transferred; an entry without a pinned SHA-256 is checked against
   the hub's, and one without a pinned commit records the commit it resolved (both said on the console).
   Disk space and, for a conversion, RAM are checked against the file's size.
3. **Transfer.** ``huggingface_hub``'s ``http_get`` (progress bar, retries that continue with a ``Range``
   request after a cut connection) appends to ``<models>/.echo_forcing_downloads/<name>.<commit>.<ext>.part``.
   That file outlives a failed or interrupted run, and the next run continues it with a ``Range`` request.
   (``hf_hub_download`` is not used: huggingface_hub 1.x deletes its partial file when a run fails.) The folder
   sits beside the model folders, so ComfyUI lists nothing of it, and on the same file system, so the finished
   file is moved, never copied; it is removed when empty.
4. **Check.** The whole file is hashed; a mismatch deletes it and names both digests.
5. **Place.** A safetensors release is moved into place through ``safe_files.atomic_write``. A pickle release
   is read with ``torch.load(weights_only=True)`` (``models.checkpoints.read_tensors``: nothing but tensors is
   unpickled), reduced to the entry the pack's loader picks (:func:`convert_release`), checked as a complete,
   finite Wan2.1 DiT (or LoRA), and written as safetensors with its provenance in the metadata; then the pickle
   is deleted. A conversion that fails keeps the checked pickle in the staging folder for the next run.

Without a network, ``file=`` takes a file downloaded by hand instead (checked against the pinned SHA-256 first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..models.registry import FOLDERS, HUB, KnownModel, download_command
from ..safe_files import UnsafePathError, atomic_write, available_memory, confined_file, confined_folder, write_text

STAGING_FOLDER = ".echo_forcing_downloads"
"""Inside the models folder: partial and not yet converted downloads (resumable), removed when empty."""
_CHUNK = 8 * 2 ** 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "h11", "requests", "urllib3", "socket", "ssl")
_OFFLINE_VALUES = ("1", "on", "yes", "true")
SOURCE_KEYS = {"repo": "echo_forcing.source_repo", "path": "echo_forcing.source_path",
               "revision": "echo_forcing.source_revision", "sha256": "echo_forcing.source_sha256",
               "name": "echo_forcing.registry_name"}
"""Safetensors metadata a converted file carries (besides ``echo_forcing.source_entry``, the loader's key)."""


class ModelDownloadError(ValueError):
    """A download that cannot be done or did not succeed; the message says why and what to do.

    ``exit_code``: 2 for a request that cannot be met as given (target refused, file in the way), 1 for a
    failure on the way (the hub, the network, a wrong file)."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class HashMismatchError(ModelDownloadError):
    """The downloaded (or given) file is not the pinned one; it has been deleted (a given file is kept)."""


@dataclass(frozen=True)
class DownloadResult:
    model: KnownModel
    path: Path
    revision: str | None
    """The commit the file came from (None for a file that was already there or given by hand)."""
    sha256: str
    """The SHA-256 of the hub file (of the pickle, for a converted file)."""
    already_present: bool
    converted: bool


# ---------------------------------------------------------------------------------------------------- places


def models_folder(text: str | os.PathLike) -> Path:
    """The ComfyUI models folder given by ``--to``, resolved; it must exist and hold one of ComfyUI's model folders
    (a typo, or the ComfyUI folder itself, must not grow a tree of model folders)."""
    path = Path(text).expanduser()
    folders = ", ".join(f"{f}/" for f in FOLDERS)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise ModelDownloadError(f"--to {str(path)!r} {what}; give your ComfyUI models folder (the one holding "
                                 f"{folders})", exit_code=2)
    if not any((path / folder).is_dir() for folder in FOLDERS):
        raise ModelDownloadError(f"--to {str(path)!r} holds none of {folders}: is it ComfyUI's models folder? (If it "
                                 "is, create the folder the file goes in first.)", exit_code=2)
    return path.resolve()


def target_path(root: Path, model: KnownModel) -> Path:
    """``<root>/<folder>/<file>``, refused when its folder or a link at it leads outside ``root``."""
    try:
        return confined_file(root, root / model.folder / model.file)
    except UnsafePathError as err:
        raise ModelDownloadError(f"{err}. Point --to at the folder that really holds {model.folder}/ (the target "
                                 "of the link), or remove the link", exit_code=2) from None


def staging_folder(root: Path) -> Path:
    try:
        return confined_folder(root, root / STAGING_FOLDER)
    except UnsafePathError as err:
        raise ModelDownloadError(f"{err}; remove {STAGING_FOLDER} there", exit_code=2) from None


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


# ---------------------------------------------------------------------------------------------------- checks


def sha256_file(path: Path, log: Callable[[str], None] | None = None) -> str:
    """The file's SHA-256, read in 8 MiB pieces."""
    size = path.stat().st_size
    if log is not None and size > 256 * 2 ** 20:
        log(f"  checking the SHA-256 of {path.name} ({_size(size)}) ...")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _converted_source(path: Path) -> dict[str, str]:
    """The provenance metadata of a safetensors file (empty when it has none or cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # any unreadable file is simply not ours: the caller refuses to overwrite it
        return {}


def _already_there(model: KnownModel, target: Path, log: Callable[[str], None]) -> str | None:
    """The SHA-256 of the hub file when ``target`` is already the registry's file, else None."""
    if not target.is_file() or model.sha256 is None:
        return None
    if model.convert:
        meta = _converted_source(target)
        ok = meta.get(SOURCE_KEYS["sha256"]) == model.sha256 and meta.get(SOURCE_KEYS["name"]) == model.name
        return model.sha256 if ok else None
    return model.sha256 if sha256_file(target, log) == model.sha256 else None


def _check_room(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ModelDownloadError(f"{what} needs {_size(need)} of free disk space in {folder} but {_size(free)} is "
                                 "free; make room and run the command again (a partial download is kept)")


def _check_ram(model: KnownModel, size: int | None) -> None:
    """A conversion reads the whole pickle (the loader's rule): refuse before downloading when RAM is short."""
    free = available_memory()
    if model.convert and size is not None and free is not None and size > free:
        raise ModelDownloadError(f"converting {model.name} reads the whole {_size(size)} file, but only {_size(free)} "
                                 "of RAM is available; close other programs and run the command again")


# ------------------------------------------------------------------------------------------------ conversion


def _tensors_to_save(sd: dict) -> dict:
    """Contiguous tensors, each with storage of its own (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, value in sd.items():
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr()
        if value.numel() and ptr in seen:
            value = value.clone()
        seen.add(ptr)
        out[key] = value
    return out


def convert_release(model: KnownModel, source: Path, target: Path, *, revision: str, sha256: str,
                    log: Callable[[str], None] = print) -> int:
    """Write the research pickle ``source`` as safetensors at ``target``; the number of bytes written.

    The pickle is opened with ``weights_only=True`` only. A DiT keeps the entry the pack's loader takes with
    ``weights="auto"`` (``generator_ema``, else ``generator``; LongLive: ``generator`` first, the weights its
    LoRA was trained on) under plain Wan2.1 names, checked name by name, shape by shape and for NaN/Inf before
    anything is written; a LoRA keeps its tensors and names. The entry goes into the metadata, so the loader
    reads the file back as that entry: the same tensors, the same ``weights`` choices as the pickle.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..models.checkpoints import (
        CONVERTED_ENTRY_KEY,
        check_finite,
        convert_to_wan,
        lora_tensors,
        read_tensors,
        validate_wan_state_dict,
    )

    log(f"  converting {source.name} to safetensors (torch.load weights_only=True) ...")
    raw = read_tensors(source)
    if model.kind == "lora":
        entry, tensors = lora_tensors(raw)
        what = f"LoRA, {len(tensors)} tensors"
    else:
        converted = convert_to_wan(raw, weights="auto", prefer_generator=model.use_generator)
        entry, tensors = converted.entry, converted.state_dict
        config = validate_wan_state_dict(tensors)
        check_finite(tensors, f"{model.hub_file}")
        what = f"{config.signature}{f', entry {entry}' if entry else ''}"
    del raw
    metadata = {"format": "pt", SOURCE_KEYS["repo"]: model.repo, SOURCE_KEYS["path"]: model.path,
                SOURCE_KEYS["revision"]: revision, SOURCE_KEYS["sha256"]: sha256, SOURCE_KEYS["name"]: model.name,
                "echo_forcing.converted_by": f"python -m echo_forcing models download {model.name}"}
    if entry:
        metadata[CONVERTED_ENTRY_KEY] = entry
    tensors = _tensors_to_save(tensors)
    written = atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    with safe_open(str(target), framework="pt", device="cpu") as f:
        if set(f.keys()) != set(tensors):
            raise ModelDownloadError(f"{target} does not hold the {len(tensors)} tensors just written; the disk may "
                                     "be failing")
    log(f"  wrote {target} ({_size(written.size)}): {what}")
    return written.size


# --------------------------------------------------------------------------------------------------- the hub


def _hub():
    """huggingface_hub's pieces, imported only here (the models command is the only user)."""
    try:
        from huggingface_hub import file_download, utils
    except ImportError:
        raise ModelDownloadError("downloading needs the huggingface_hub package, which is not installed: run "
                                 "pip install \"huggingface_hub>=0.25\" with the Python that runs this command "
                                 "(ComfyUI's, for a custom_nodes install)") from None
    return file_download, utils


def _is_network_error(err: BaseException) -> bool:
    """A connection problem (refused, unreachable, DNS, timeout, cut transfer) rather than an answer."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(type(e).__module__.split(".")[0] in _NETWORK_MODULES for e in (err, err.__cause__, err.__context__)
               if e is not None)


def _manual(model: KnownModel, root: Path) -> str:
    """How to get the file by hand (from the public hub, at the pinned commit)."""
    url, folder = model.url(), root / model.folder
    if model.convert:
        return (f"download {url} by hand, then run: {download_command(model.name, str(root))} --file "
                f"<the downloaded {model.hub_file}> (it checks and converts it into {folder})")
    return f"download {url} by hand into {folder}"


def _hub_error(err: BaseException, model: KnownModel, endpoint: str, root: Path) -> ModelDownloadError:
    """One line for a failed hub request: what failed, and how to download by hand (from the public hub)."""
    _, utils = _hub()
    detail = (str(err).splitlines() or [""])[0][:160]
    if isinstance(err, utils.OfflineModeIsEnabled):
        return ModelDownloadError(f"huggingface_hub is in offline mode (HF_HUB_OFFLINE is set), so {model.name} "
                                  f"cannot be downloaded; unset it, or {_manual(model, root)}")
    if isinstance(err, (utils.RepositoryNotFoundError, utils.RevisionNotFoundError, utils.EntryNotFoundError)):
        return ModelDownloadError(f"the hub at {endpoint} has no {model.path} in {model.repo} at revision "
                                  f"{model.revision or 'main'} ({type(err).__name__}); the registry entry "
                                  f"{model.name!r} may be out of date: see https://huggingface.co/{model.repo}")
    if isinstance(err, utils.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", "?")
        return ModelDownloadError(f"the hub at {endpoint} answered HTTP {status} for {model.name} ({detail}); try "
                                  f"again later, or {_manual(model, root)}")
    if _is_network_error(err):
        return ModelDownloadError(f"cannot reach the Hugging Face hub at {endpoint} ({type(err).__name__}: "
                                  f"{detail or 'no answer'}); check the connection (or HF_ENDPOINT), or "
                                  f"{_manual(model, root)}")
    return ModelDownloadError(f"asking the hub at {endpoint} about {model.name} failed ({type(err).__name__}: "
                              f"{detail}); {_manual(model, root)}")


@dataclass(frozen=True)
class _HubFile:
    commit: str
    sha256: str
    size: int | None
    location: str
    headers: dict


def _hub_file(model: KnownModel, endpoint: str, root: Path, log: Callable[[str], None]) -> _HubFile:
    """What the hub serves for the entry (one HEAD request), checked against the pins before any transfer."""
    file_download, utils = _hub()
    url = model.url(endpoint=endpoint)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES:
        raise _hub_error(utils.OfflineModeIsEnabled("HF_HUB_OFFLINE is set"), model, endpoint, root)
    headers = utils.build_hf_headers()
    try:
        meta = file_download.get_hf_file_metadata(url, headers=headers, timeout=30)
    except Exception as err:  # every failure of the request becomes one clear line (classified there)
        raise _hub_error(err, model, endpoint, root) from None
    commit = meta.commit_hash
    if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ModelDownloadError(f"{endpoint} did not say which commit it serves for {model.name} (no X-Repo-Commit "
                                 f"header): is HF_ENDPOINT / --endpoint a Hugging Face hub? "
                                 f"{_manual(model, root)}")
    if model.revision is not None and commit != model.revision:
        raise ModelDownloadError(f"{endpoint} served commit {commit} when asked for the pinned {model.revision} of "
                                 f"{model.repo}; refusing a file of another revision")
    hub_sha = meta.etag if meta.etag and _SHA256.match(meta.etag) else None
    if model.sha256 is not None and hub_sha is not None and hub_sha != model.sha256:
        raise ModelDownloadError(f"the hub's {model.path} at {commit[:12]} has SHA-256 {hub_sha}, not the pinned "
                                 f"{model.sha256}; nothing was downloaded (the registry entry {model.name!r} is "
                                 "wrong, or the endpoint serves another file)")
    expected = model.sha256 or hub_sha
    if expected is None:
        raise ModelDownloadError(f"neither the registry nor the hub gives a SHA-256 for {model.path} (the hub's ETag "
                                 f"is {meta.etag!r}, not an LFS digest), so the download could not be checked; "
                                 "nothing was downloaded")
    if model.revision is None:
        log(f"  the registry pins no revision for {model.name}: using {commit} (main now), recorded with the file")
    if model.sha256 is None:
        log(f"  the registry pins no SHA-256 for {model.name}: checking against the hub's LFS SHA-256 {expected}")
    location = meta.location or url
    if location == url:  # served by the hub itself: fetch by commit, so a moving branch cannot change the bytes
        location = model.url(commit, endpoint)
    if urlsplit(location).netloc != urlsplit(url).netloc:  # a signed CDN address: no hub token leaves the hub
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return _HubFile(commit, expected, meta.size or model.size, location, headers)


@contextlib.contextmanager
def _locked(path: Path):
    """The partial file, opened for appending, locked against a second download of the same file."""
    f = open(path, "a+b")
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no second-process protection, the SHA-256 check still catches a mix
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelDownloadError(f"another download is writing {path}; wait for it to finish") from None
            except OSError:  # a file system without locks
                pass
        f.seek(0, os.SEEK_END)
        yield f
    finally:
        f.close()


def _transfer(model: KnownModel, hub: _HubFile, partial: Path, endpoint: str, root: Path,
              log: Callable[[str], None]) -> None:
    """Append the rest of the file to ``partial`` (a ``Range`` request when part of it is there)."""
    file_download, _ = _hub()
    with _locked(partial) as f:
        have = f.tell()
        if hub.size is not None and have > hub.size:
            f.truncate(0)
            have = 0
        if have:
            log(f"  continuing a partial download at {_size(have)} of {_size(hub.size)}")
        try:
            file_download.http_get(hub.location, f, resume_size=have, headers=dict(hub.headers),
                                   expected_size=hub.size, displayed_filename=model.hub_file)
            f.flush()
            os.fsync(f.fileno())
        except KeyboardInterrupt:
            raise
        except Exception as err:  # classified: what stopped it, and that the next run continues
            f.flush()
            done, why = f.tell(), f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
            if _is_network_error(err):
                raise ModelDownloadError(f"the download of {model.name} from {endpoint} stopped at {_size(done)} of "
                                         f"{_size(hub.size)} ({why}); run the same command again to continue it, or "
                                         f"{_manual(model, root)}") from None
            raise ModelDownloadError(f"the download of {model.name} failed at {_size(done)} of {_size(hub.size)} "
                                     f"({why}); run the same command again to continue it") from None


def _verify(path: Path, expected: str, what: str, log: Callable[[str], None], delete: bool = True) -> None:
    got = sha256_file(path, log)
    if got != expected:
        if delete:
            path.unlink(missing_ok=True)
        gone = "it was deleted; run the command again to download it afresh" if delete else "nothing was written"
        raise HashMismatchError(f"{what} has SHA-256 {got}, expected {expected}: the file is damaged or not the "
                                f"registry's; {gone}")
    log(f"  SHA-256 {expected[:16]}... verified")


def _place(model: KnownModel, source: Path, target: Path, *, revision: str, sha256: str, move: bool,
           log: Callable[[str], None]) -> int:
    """Put the checked ``source`` at ``target``: converted, moved (same file system) or copied."""
    if model.convert:
        return convert_release(model, source, target, revision=revision, sha256=sha256, log=log)

    def fill(tmp: Path) -> None:
        if move:
            try:
                os.replace(source, tmp)
                return
            except OSError:  # another file system (a folder mounted elsewhere): copy, then remove the source
                pass
        shutil.copyfile(source, tmp)

    written = atomic_write(target, fill)
    if move:
        source.unlink(missing_ok=True)
    log(f"  wrote {target} ({_size(written.size)})")
    return written.size


def _record_unpinned(model: KnownModel, target: Path, commit: str, sha256: str) -> None:
    """A file taken as is without a pinned commit or digest: say which commit and digest it was checked against
    in ``<file>.source.json`` (a converted file carries this in its metadata)."""
    if model.convert or (model.revision and model.sha256):
        return
    write_text(target.with_name(target.name + ".source.json"), json.dumps(
        {"repo": model.repo, "path": model.path, "revision": commit, "sha256": sha256,
         "pinned": {"revision": model.revision is not None, "sha256": model.sha256 is not None}}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------- the whole


def download(model: KnownModel, models_dir: str | os.PathLike, *, endpoint: str | None = None, force: bool = False,
             file: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> DownloadResult:
    """Put ``model`` into ``<models_dir>/<folder>/<file>``, checked (and converted); see the module's docstring."""
    root = models_folder(models_dir)
    target = target_path(root, model)
    if target.is_dir() and not target.is_symlink():
        raise ModelDownloadError(f"{target} is a folder; move it away first", exit_code=2)
    present = _already_there(model, target, log)
    if present is not None and not force:
        log(f"{model.name}: {target} is already there (SHA-256 of {model.hub_file} {present[:16]}...)")
        return DownloadResult(model, target, None, present, already_present=True, converted=model.convert)
    if os.path.lexists(target) and not force:
        raise ModelDownloadError(f"{target} exists and is not the registry's {model.name} (or cannot be checked); "
                                 "pass --force to replace it, or move it away", exit_code=2)
    if file is not None:
        return _from_file(model, Path(file), target, log)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")
    if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
        raise ModelDownloadError(f"the hub endpoint {endpoint!r} is not an http(s) address", exit_code=2)
    staging = staging_folder(root)
    log(f"{model.name}: {model.repo} {model.path} at {(model.revision or 'main')[:12]} ({_size(model.size)}, "
        f"licence {model.licence})")
    hub = _hub_file(model, endpoint, root, log)
    _check_ram(model, hub.size)
    staging.mkdir(exist_ok=True)
    try:
        return _download_into(model, hub, staging, target, endpoint, root, log)
    finally:
        _remove_if_empty(staging)


def _download_into(model: KnownModel, hub: _HubFile, staging: Path, target: Path, endpoint: str, root: Path,
                   log: Callable[[str], None]) -> DownloadResult:
    stem = f"{model.name}.{hub.commit[:12]}{Path(model.hub_file).suffix.lower()}"
    done, partial = staging / stem, staging / (stem + ".part")
    if done.is_file():
        log(f"  found the checked download of an earlier run: {done}")
        _verify(done, hub.sha256, str(done), log)
    else:
        have = partial.stat().st_size if partial.is_file() else 0
        need = max((hub.size or 0) - have, 0) + ((hub.size or 0) if model.convert else 0)
        _check_room(staging, need, f"downloading {model.name}")
        log(f"  downloading into {staging} (a failed or interrupted run is continued by the next one)")
        _transfer(model, hub, partial, endpoint, root, log)
        _verify(partial, hub.sha256, f"the download of {model.name}", log)
        os.replace(partial, done)
    try:
        _place(model, done, target, revision=hub.commit, sha256=hub.sha256, move=True, log=log)
    except ModelDownloadError:
        raise
    except (ValueError, OSError, RuntimeError, MemoryError) as err:
        raise ModelDownloadError(f"{model.name} was downloaded and its SHA-256 checked, but could not be put in "
                                 f"place as {target}: {err} The checked download stays in {done}: the next run uses "
                                 "it (or delete it)") from None
    done.unlink(missing_ok=True)
    _record_unpinned(model, target, hub.commit, hub.sha256)
    return DownloadResult(model, target, hub.commit, hub.sha256, already_present=False, converted=model.convert)


def _from_file(model: KnownModel, source: Path, target: Path, log: Callable[[str], None]) -> DownloadResult:
    """A copy of the hub file downloaded by hand: checked against the pinned SHA-256, then placed (the given file
    is left where it is)."""
    if model.sha256 is None:
        raise ModelDownloadError(f"the registry pins no SHA-256 for {model.name}, so a file given with --file cannot "
                                 "be checked; download it from the hub instead", exit_code=2)
    if not source.is_file():
        raise ModelDownloadError(f"--file {str(source)!r} is not a file", exit_code=2)
    if source.resolve() == target.resolve():
        raise ModelDownloadError(f"--file names the target {target} itself", exit_code=2)
    if source.suffix.lower() != Path(model.hub_file).suffix.lower():
        raise ModelDownloadError(f"--file {source.name} does not end in {Path(model.hub_file).suffix} like "
                                 f"{model.hub_file}; give the file downloaded from {model.url()}", exit_code=2)
    _check_ram(model, source.stat().st_size)
    log(f"{model.name}: checking {source} against the pinned SHA-256 of {model.path}")
    _verify(source, model.sha256, str(source), log, delete=False)
    _place(model, source, target, revision=model.revision or "unknown", sha256=model.sha256, move=False, log=log)
    return DownloadResult(model, target, None, model.sha256, already_present=False, converted=model.convert)
