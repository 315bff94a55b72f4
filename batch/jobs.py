"""The batch queue's bookkeeping, without any network: prompt lines, jobs, the resume manifest, ComfyUI's errors.

* **Prompt file**: the official one-video-per-line scene-script format. Blank lines and lines
  starting with ``#`` are skipped; line numbers are 1-based positions in the file. Every line is checked with
  :func:`~..pipeline.scene_script.parse_scene_script` before anything is submitted; a bad line fails on its
  own with the parser's message.
* **Workflow**: an API-format ComfyUI workflow (``{node_id: {"class_type", "inputs", "_meta"?}}``) with exactly
  one ``EchoForcingSceneScript`` node; each line goes into that node's ``script`` input.
* **Job name** ``<stem>-<line:04d>`` (``stem`` = the prompt file's name without extension, characters outside
  ``A-Za-z0-9._-`` replaced by ``_``). It names the line's output folder in ``--out`` and its manifest key.
  Every string ``filename_prefix`` input becomes ``<prefix>/<job name>`` (just ``<job name>`` when the prefix
  is empty), so the files of different lines never collide on the server either.
* **Manifest** ``<out>/queue-state.json``, rewritten atomically after every change. A line is skipped on a
  rerun only when it is ``done``, its text and the workflow hash are unchanged, and all its files exist.
* **Output names** come from ComfyUI's history and are checked by :mod:`.outfiles` (one safe path component,
  confined to the line's folder). A name that fails the check fails its line, never the batch.
* **Limits and exit codes**: the ``DEFAULT_*`` figures and ``EXIT_*`` codes below are the command's documented
  defaults (README, "Batch jobs").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..pipeline.scene_script import SceneScriptError, parse_scene_script
from ..safe_files import UnsafePathError, confined_file
from .outfiles import (
    check_name,
    check_view_params,
    clean_stale_temps,
    listed_file,
    plain,
    remove_file,
    shown,
    write_atomic,
)

SCENE_SCRIPT_CLASS = "EchoForcingSceneScript"
SCRIPT_INPUT = "script"
PREFIX_INPUT = "filename_prefix"
MANIFEST_NAME = "queue-state.json"
JOB_FILE = "job.json"
MANIFEST_VERSION = 1

DONE, FAILED, PENDING = "done", "failed", "pending"

# Exit codes of ``python -m echo_forcing queue``.
EXIT_OK = 0  # every line is done (in this run or an earlier one)
EXIT_FAILED = 1  # the batch ran and at least one line failed (the summary and queue-state.json say why)
EXIT_USAGE = 2  # nothing was submitted: bad arguments, prompt file, workflow, state file, output folder or server
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): running prompts were cancelled on their servers, the state is saved
EXIT_TERMINATED = 143  # SIGTERM: the same as Ctrl-C

# Defaults of the command's limits (each is an option of the command).
DEFAULT_JOB_TIMEOUT = 3 * 3600.0  # seconds per line, from submitting to the last downloaded file (--timeout)
DEFAULT_READ_TIMEOUT = 60.0  # seconds without a byte from a server before a request counts as stalled
CONNECT_TIMEOUT = 10.0  # seconds to connect to a server (HTTP and websocket)
DEFAULT_MAX_DOWNLOAD_GB = 20.0  # GiB per downloaded file (--max-download-gb)
DOWNLOAD_RETRIES = 3  # a failed or stalled download is tried again this many times ...
RETRY_DELAY = 2.0  # ... after this many seconds, doubling each time (at most MAX_RETRY_DELAY)
MAX_RETRY_DELAY = 30.0
MAX_JSON_BYTES = 64 << 20  # the largest JSON answer (/history/<id>, /queue, ...) the client reads
MAX_INPUT_FILE_BYTES = 64 << 20  # the largest prompt or workflow file the command reads


class BatchUsageError(Exception):
    """The batch cannot start (bad prompt file, workflow, manifest or server); the CLI exits with code 2."""


class BatchInterrupted(Exception):
    """The batch was stopped by a signal (Ctrl-C or SIGTERM); the manifest is saved. ``exit_code`` is
    EXIT_INTERRUPTED or EXIT_TERMINATED (128 + the signal's number, as a shell reports it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}.get(signum, 128 + signum)


class UnsafeOutput(Exception):
    """ComfyUI's history names an output that cannot be saved safely; its line fails, the batch goes on."""


# ------------------------------------------------------------------------------------------------ prompt lines


@dataclass(frozen=True)
class PromptLine:
    """One video of a prompt file: its 1-based line ``number``, the stripped ``text`` and the parser's ``error``."""

    number: int
    text: str
    error: str | None = None

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def parse_prompt_lines(text: str) -> list[PromptLine]:
    """Every non-blank, non-comment line, validated; lines that do not parse carry the parser's message."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parse_scene_script(line)
        except SceneScriptError as err:
            lines.append(PromptLine(number, line, f"invalid scene script: {err}"))
        else:
            lines.append(PromptLine(number, line))
    return lines


def _read_text(path: Path, what: str) -> str:
    """A prompt or workflow file's text, refused when it is over ``MAX_INPUT_FILE_BYTES``."""
    size = path.stat().st_size
    if size > MAX_INPUT_FILE_BYTES:
        raise BatchUsageError(f"{what} file {path} is {size / 2**20:.0f} MiB; the limit is "
                              f"{MAX_INPUT_FILE_BYTES // 2**20} MiB")
    return path.read_text(encoding="utf-8-sig")


def read_prompt_file(path: str | os.PathLike) -> list[PromptLine]:
    """Read and validate a prompt file (UTF-8, a BOM is ignored); :class:`BatchUsageError` when it is unusable."""
    path = Path(path)
    try:
        text = _read_text(path, "prompt")
    except FileNotFoundError:
        raise BatchUsageError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BatchUsageError(f"cannot read prompt file {path}: {err}") from None
    lines = parse_prompt_lines(text)
    if not lines:
        raise BatchUsageError(f"prompt file {path} has no prompt lines (only blank lines and '#' comments)")
    return lines


def file_stem(path: str | os.PathLike) -> str:
    """The prompt file's stem, safe as a file and folder name (``A-Za-z0-9._-``, others become ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem).strip(".")
    return stem or "prompts"


def job_name(stem: str, number: int) -> str:
    """``<stem>-<line:04d>``: the line's output folder, manifest key and ``filename_prefix`` suffix."""
    return f"{stem}-{number:04d}"


# ---------------------------------------------------------------------------------------------------- workflow


@dataclass(frozen=True)
class Workflow:
    """An API-format workflow with its scene-script node; ``hash`` ignores titles and the script itself."""

    source: str
    graph: dict
    script_node: str
    hash: str

    def node_label(self, node_id: object, class_type: str | None = None) -> str:
        return node_label(self.graph, node_id, class_type)


def node_label(graph: dict | None, node_id: object, class_type: str | None = None) -> str:
    """``node 5 'Title' (ClassType)`` from the workflow (title only when it differs from the class)."""
    node = (graph or {}).get(str(node_id))
    node = node if isinstance(node, dict) else {}
    cls = class_type or node.get("class_type")
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    label = f"node {node_id}"
    if isinstance(title, str) and title and title != cls:
        label += f" '{title}'"
    return f"{label} ({cls})" if cls else label


def parse_workflow(data: object, source: str) -> Workflow:
    """Check an API-format workflow (``source`` names it in errors) and find its scene-script node."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise BatchUsageError(
            f"{source} is a UI-format workflow (it has a top-level \"nodes\" list); the queue needs the API format: "
            "use its *_api.json file (the pack's own are in workflows/api/), or save one from ComfyUI with "
            "Workflow > Export (API)")
    if not isinstance(data, dict) or not data:
        raise BatchUsageError(f"{source} is not an API-format workflow: expected a JSON object of nodes "
                              "{\"<id>\": {\"class_type\": ..., \"inputs\": {...}}}")
    for node_id, node in data.items():
        if not (isinstance(node, dict) and isinstance(node.get("class_type"), str)
                and isinstance(node.get("inputs"), dict)):
            raise BatchUsageError(f"{source}: entry {node_id!r} is not an API-format node (it needs \"class_type\" "
                                  "and \"inputs\"); export the workflow with Workflow > Export (API)")
    found = [node_id for node_id, node in data.items() if node["class_type"] == SCENE_SCRIPT_CLASS]
    if len(found) != 1:
        problem = f"has no {SCENE_SCRIPT_CLASS} node" if not found else \
            f"has {len(found)} {SCENE_SCRIPT_CLASS} nodes ({', '.join(found)})"
        raise BatchUsageError(f"{source} {problem}; the queue needs exactly one, and puts each prompt line into "
                              f"its \"{SCRIPT_INPUT}\" input")
    script_node = found[0]
    hashed = {}
    for node_id, node in data.items():
        inputs = dict(node["inputs"])
        if node_id == script_node:
            inputs.pop(SCRIPT_INPUT, None)
        hashed[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
    return Workflow(source=source, graph=data, script_node=script_node, hash=digest)


def load_workflow(path: str | os.PathLike) -> Workflow:
    """Read an API-format workflow file (see :func:`parse_workflow`)."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path, "workflow"))
    except FileNotFoundError:
        raise BatchUsageError(f"workflow file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise BatchUsageError(f"workflow file {path} is not valid JSON: {err.msg} at line {err.lineno} "
                              f"column {err.colno}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BatchUsageError(f"cannot read workflow file {path}: {err}") from None
    return parse_workflow(data, str(path))


def fill_workflow(workflow: Workflow, line: PromptLine, stem: str) -> dict:
    """The graph for one line: a deep copy with the script set and every ``filename_prefix`` made per-line."""
    graph = copy.deepcopy(workflow.graph)
    graph[workflow.script_node]["inputs"][SCRIPT_INPUT] = line.text
    name = job_name(stem, line.number)
    for node in graph.values():
        prefix = node["inputs"].get(PREFIX_INPUT)
        if isinstance(prefix, str):
            base = prefix.rstrip("/\\")
            node["inputs"][PREFIX_INPUT] = f"{base}/{name}" if base else name
    return graph


# --------------------------------------------------------------------------------------------- ComfyUI errors


def format_validation_error(body: object, graph: dict | None = None) -> str:
    """A readable message from the body of a ``POST /prompt`` refusal, one part per node error."""
    if not isinstance(body, dict):
        return f"ComfyUI refused the prompt: {body!r}"
    error = body.get("error")
    if isinstance(error, dict):
        head = str(error.get("message") or error.get("type") or "ComfyUI refused the prompt")
        if error.get("details"):
            head += f" ({error['details']})"
    elif isinstance(error, str) and error:
        head = error
    else:
        head = "ComfyUI refused the prompt"
    return _with_node_errors(head, body.get("node_errors"), graph)


def _with_node_errors(head: str, node_errors: object, graph: dict | None) -> str:
    parts = []
    for node_id, info in (node_errors if isinstance(node_errors, dict) else {}).items():
        info = info if isinstance(info, dict) else {}
        label = node_label(graph, node_id, info.get("class_type"))
        for err in info.get("errors") or [{}]:
            err = err if isinstance(err, dict) else {"message": str(err)}
            text = str(err.get("message") or err.get("type") or "invalid")
            if err.get("details"):
                text += f": {err['details']}"
            parts.append(f"{label}: {text}")
    return f"{head}: {'; '.join(parts)}" if parts else head


def format_node_errors(node_errors: object, graph: dict | None = None) -> str:
    """The ``node_errors`` of an accepted prompt (some output branches invalid, the others still run)."""
    return _with_node_errors("some outputs failed validation and will not run", node_errors, graph)


def format_execution_error(data: dict, graph: dict | None = None) -> str:
    """``node <id> (<class>): <exception_type>: <exception_message>`` from an ``execution_error`` event."""
    label = node_label(graph, data.get("node_id"), data.get("node_type"))
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message") or "").strip()
    return f"{label}: {kind}: {message}" if message else f"{label}: {kind}"


def format_interrupted(data: dict, graph: dict | None = None) -> str:
    """``interrupted`` (at which node, when ComfyUI says) from an ``execution_interrupted`` event."""
    if data.get("node_id") is None:
        return "interrupted"
    return f"interrupted at {node_label(graph, data['node_id'], data.get('node_type'))}"


def history_error(entry: dict, graph: dict | None = None) -> str | None:
    """``None`` when a ``/history`` entry finished well, else the error its status messages describe."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages") or []
    for message in messages:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            if message[0] == "execution_error":
                return format_execution_error(message[1], graph)
            if message[0] == "execution_interrupted":
                return format_interrupted(message[1], graph)
    if status.get("status_str") == "error":
        return "ComfyUI reported an error without details (see the server's log)"
    return None


# ----------------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputFile:
    """One file in a node's output (``/history`` ``outputs``), and the local name it is saved under."""

    node_id: str
    key: str
    filename: str
    subfolder: str = ""
    type: str = "output"
    local_name: str = ""

    def view_params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def _node_order(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _node_tag(node_id: str) -> str:
    """The node id as a file name prefix (ComfyUI's ids are digits, or ``parent:child`` in subgraphs)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", node_id)[:32] or "node"


def output_files(outputs: object) -> list[OutputFile]:
    """Every ``{"filename", "subfolder"?, "type"?}`` item of every output list, with unique local names.

    Nodes are taken in id order. A local name is the server's file name, checked by
    :func:`.outfiles.check_name` (no folders, no ``..``, no NUL, at most 255 bytes, ...); a leading ``.`` becomes
    ``_.`` (names starting with ``.`` are the client's own temporary files). When two outputs share a name
    (same file name in different subfolders, or names equal but for case), the later gets ``<node id>-`` in
    front (and a counter if needed). ``job.json`` is reserved. :class:`UnsafeOutput` when any item's file
    name, subfolder or type is unsafe: the line's outputs are then not downloaded at all.
    """
    files: list[OutputFile] = []
    seen: set[tuple[str, str, str]] = set()
    used = {JOB_FILE.casefold()}
    for node_id in sorted((outputs if isinstance(outputs, dict) else {}), key=lambda n: _node_order(str(n))):
        ui = outputs[node_id]
        for key, items in (ui.items() if isinstance(ui, dict) else ()):
            for item in items if isinstance(items, list) else ():
                if not (isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]):
                    continue
                where = f"node {plain(node_id)}, {plain(key)}"
                subfolder, kind = item.get("subfolder") or "", item.get("type") or "output"
                try:
                    filename = check_name(item["filename"], f"ComfyUI's history ({where}) names an output file")
                    check_view_params(subfolder, kind, f"ComfyUI's history ({where})")
                except UnsafePathError as err:
                    raise UnsafeOutput(f"{err}; the line's outputs are not downloaded") from None
                ident = (filename, subfolder, kind)
                if ident in seen:
                    continue
                seen.add(ident)
                base = "_" + filename if filename.startswith(".") else filename
                name, n = base, 1
                while name.casefold() in used:
                    tag = _node_tag(str(node_id))
                    name = f"{tag}-{base}" if n == 1 else f"{tag}-{n}-{base}"
                    n += 1
                try:
                    check_name(name, f"ComfyUI's history ({where}) names an output file {shown(filename)}; saved as")
                except UnsafePathError as err:
                    raise UnsafeOutput(f"{err}; the line's outputs are not downloaded") from None
                used.add(name.casefold())
                files.append(OutputFile(str(node_id), str(key), filename, subfolder, kind, name))
    return files


def json_bytes(data: object) -> bytes:
    """Indented UTF-8 JSON; text that is not valid Unicode (from a server) is kept as ``\\uXXXX`` escapes."""
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------------- manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """``<out>/queue-state.json``: per job name, the line's state (see the module docstring for the rules).

    A record holds ``line``, ``text_hash``, ``workflow_hash``, ``status`` (done / failed / pending),
    ``prompt_id``, ``server``, ``files`` (paths relative to the out folder), ``error``, ``attempts``, and the
    ``started`` / ``finished`` / ``updated`` times (UTC, ISO 8601). Every change is saved at once, atomically.
    """

    def __init__(self, path: Path, jobs: dict[str, dict] | None = None):
        self.path = Path(path)
        self.jobs: dict[str, dict] = jobs if jobs is not None else {}

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    @property
    def root(self) -> Path:
        """The output folder, resolved: everything the batch writes or removes must lie inside it."""
        return self.out_dir.resolve()

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Manifest:
        """The manifest in ``out_dir`` (empty when there is none yet). Records that are not JSON objects are
        dropped (their lines run again); the file lists are checked when they are used."""
        path = Path(out_dir) / MANIFEST_NAME
        try:
            confined_file(path.parent.resolve(), path)
        except UnsafePathError as err:
            raise BatchUsageError(f"cannot use the queue state: {err}") from None
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
                raise ValueError("no \"jobs\" object")
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        except (OSError, ValueError) as err:
            raise BatchUsageError(f"cannot use the queue state {path}: {err}; delete it to start over (every line "
                                  "is then run again)") from None
        return cls(path, {name: record for name, record in data["jobs"].items() if isinstance(record, dict)})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": MANIFEST_VERSION, "jobs": dict(sorted(self.jobs.items()))}
        write_atomic(self.root, self.path, json_bytes(data))

    def listed_files(self, name: str) -> list[object]:
        """The files the record of job ``name`` lists (unchecked: see :func:`.outfiles.listed_file`)."""
        files = self.jobs.get(name, {}).get("files")
        return files if isinstance(files, list) else []

    def rerun_reason(self, name: str, line: PromptLine, workflow_hash: str) -> str | None:
        """Why the line must run (again), or ``None`` when its finished result can be kept."""
        record = self.jobs.get(name)
        if record is None:
            return "new"
        if record.get("text_hash") != line.text_hash:
            return "line changed"
        if record.get("workflow_hash") != workflow_hash:
            return "workflow changed"
        status = record.get("status")
        if status != DONE:
            return "failed before" if status == FAILED else "unfinished before"
        if not isinstance(record.get("files"), list):
            return "its file list is unreadable"
        root = self.root
        for rel in record["files"]:
            try:
                path = listed_file(root, name, rel)
            except UnsafePathError as err:
                return f"{MANIFEST_NAME} lists {shown(rel)}: {err}"
            if not path.is_file():
                return f"output {rel} is missing"
        return None

    def remove_outputs(self, name: str, log: Callable[[str], None]) -> None:
        """Remove the files an earlier run of line ``name`` left (those its record lists, inside its own folder
        only), before the line runs again."""
        root = self.root
        for rel in self.listed_files(name):
            try:
                remove_file(root, listed_file(root, name, rel))
            except UnsafePathError as err:
                log(f"{name}: {MANIFEST_NAME} lists {shown(rel)}: {err}; left alone (was the state file edited?)")

    def update(self, name: str, line: PromptLine, workflow_hash: str, status: str, **fields) -> dict:
        """Set the line's status and fields (``started`` / ``finished`` are stamped by status) and save."""
        record = self.jobs.setdefault(name, {})
        record.update(line=line.number, text_hash=line.text_hash, workflow_hash=workflow_hash, status=status,
                      **fields)
        now = _now()
        if status == PENDING and fields.get("prompt_id"):
            record["started"] = now
            record.pop("finished", None)
        elif status in (DONE, FAILED):
            record["finished"] = now
        record["updated"] = now
        self.save()
        return record


# ------------------------------------------------------------------------------------------------------- plan


@dataclass
class Job:
    """A line to submit: its name, the filled graph, and the attempt counters the workers keep."""

    name: str
    line: PromptLine
    graph: dict
    reason: str
    attempts: int = 0
    connection_losses: int = 0
    prompt_id: str | None = None


@dataclass
class Plan:
    """What a run does: ``jobs`` to submit, ``skipped`` (done earlier), ``invalid`` (failed scene-script check)."""

    stem: str
    workflow: Workflow | None
    """The API workflow (``queue``); None for ``batch``, whose lines the pack's pipeline renders."""
    lines: list[PromptLine]
    jobs: list[Job] = field(default_factory=list)
    skipped: list[PromptLine] = field(default_factory=list)
    invalid: list[PromptLine] = field(default_factory=list)


def sort_lines(lines: Iterable[PromptLine], stem: str, manifest: Manifest,
               recipe_hash: str) -> tuple[list[tuple[PromptLine, str]], list[PromptLine], list[PromptLine]]:
    """The lines to run (each with why), those done earlier and the invalid ones (recorded as failed at once).
    ``recipe_hash`` is what else decides a line's outputs: the workflow's hash (``queue``) or the render recipe's
    (``batch``); the manifest keeps it as ``workflow_hash``."""
    run, skipped, invalid = [], [], []
    for line in lines:
        name = job_name(stem, line.number)
        if line.error is not None:
            invalid.append(line)
            manifest.update(name, line, recipe_hash, FAILED, error=line.error, prompt_id=None, server=None, files=[])
            continue
        reason = manifest.rerun_reason(name, line, recipe_hash)
        if reason is None:
            skipped.append(line)
        else:
            run.append((line, reason))
    return run, skipped, invalid


def plan_batch(lines: Iterable[PromptLine], workflow: Workflow, stem: str, manifest: Manifest) -> Plan:
    """Sort the lines into jobs to run, lines already done and invalid lines (recorded as failed at once)."""
    plan = Plan(stem=stem, workflow=workflow, lines=list(lines))
    run, plan.skipped, plan.invalid = sort_lines(plan.lines, stem, manifest, workflow.hash)
    plan.jobs = [Job(job_name(stem, line.number), line, fill_workflow(workflow, line, stem), reason)
                 for line, reason in run]
    return plan


@dataclass(frozen=True)
class LineResult:
    """How a line ended in this run: ``status`` is done, skipped or failed; ``detail`` says more."""

    number: int
    name: str
    status: str
    detail: str


def summarize(plan: Plan, manifest: Manifest) -> list[LineResult]:
    """One result per line of the file, in file order, from the manifest after the run."""
    results = []
    skipped = {line.number for line in plan.skipped}
    for line in plan.lines:
        name = job_name(plan.stem, line.number)
        record = manifest.jobs.get(name, {})
        files = record.get("files") if isinstance(record.get("files"), list) else []
        count = f"{len(files)} file" + ("" if len(files) == 1 else "s")
        where = f" on {record['server']}" if record.get("server") else ""
        if line.number in skipped:
            results.append(LineResult(line.number, name, "skipped", f"done earlier, {count}"))
        elif record.get("status") == DONE:
            results.append(LineResult(line.number, name, DONE, f"{count}{where}"))
        elif record.get("status") == FAILED:
            results.append(LineResult(line.number, name, FAILED, f"{record.get('error') or 'failed'}{where}"))
        else:
            results.append(LineResult(line.number, name, FAILED, "not finished"))
    return results


def start_batch(prompts: str | os.PathLike, out: str | os.PathLike, recipe_hash: str,
                log: Callable[[str], None]) -> tuple[Plan, Manifest, list[tuple[PromptLine, str]]]:
    """Read and check the prompt file, open the output folder and its manifest, sort the lines
    (:func:`sort_lines`), remove stale temporary files of ours and log the plan; the plan (its ``jobs`` left for
    the caller to make), the manifest and the lines to run with why."""
    lines = read_prompt_file(prompts)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BatchUsageError(f"cannot use --out {out_dir}: {err}") from None
    manifest = Manifest.load(out_dir)
    stem = file_stem(prompts)
    run, skipped, invalid = sort_lines(lines, stem, manifest, recipe_hash)
    plan = Plan(stem=stem, workflow=None, lines=lines, skipped=skipped, invalid=invalid)
    root = manifest.root
    for folder in [root, *(root / job_name(stem, line.number) for line in lines)]:
        for path in clean_stale_temps(root, folder):
            log(f"removed {path.relative_to(root)}, a temporary file an interrupted run left")
    log(f"{Path(prompts).name}: {len(lines)} lines; {len(run)} to run, {len(skipped)} done earlier, "
        f"{len(invalid)} invalid")
    for line in invalid:
        log(f"line {line.number}: FAILED: {line.error}")
    return plan, manifest, run


def summary(results: list[LineResult], prompts: object, out: object) -> tuple[str, int]:
    """The command's closing table (one row per line) and its exit code."""
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", FAILED)}
    rows = [f"\nsummary of {prompts} -> {out}:"]
    for result in results:
        label = "FAILED" if result.status == FAILED else result.status
        rows.append(f"  line {result.number:>4}  {label:<7}  {result.name}  {result.detail}")
    rows.append(f"{counts['done']} done, {counts['skipped']} skipped (done earlier), {counts[FAILED]} failed")
    return "\n".join(rows), EXIT_FAILED if counts[FAILED] else EXIT_OK
