"""The batch queue's ComfyUI client: HTTP and websocket with aiohttp, one worker per server.

Per server, one websocket ``/ws?clientId=<client id>`` stays open, and one worker takes the next line from a
queue shared by all servers (so a free server always takes the next line). For a line it:

1. sends ``POST /prompt {"prompt", "client_id", "prompt_id"}`` with a fresh prompt id (HTTP 400: ComfyUI's
   validation errors, formatted per node);
2. follows the websocket events of that prompt id (``execution_start``, ``progress``, ``execution_success`` /
   ``execution_error`` / ``execution_interrupted``, and ``executing`` with ``node: null`` at the end); every
   ``poll_interval`` seconds, whatever the websocket says, it asks ``/history/<id>`` (only that prompt's entry;
   then ``/queue``, to notice a prompt the server forgot), so a missed completion among other events never
   hangs it; a dropped websocket is reopened (at most once a second);
3. reads ``/history/<id>`` and downloads every output file through ``/view`` into ``<out>/<job name>/``
   (see :mod:`.outfiles`: names checked, paths confined to the output folder, temporary file, rename), plus
   ``job.json`` (the line, the prompt id, the server and the outputs).

Limits (defaults in :mod:`.jobs`): every HTTP request has a connect timeout and a read timeout (no byte for
``read_timeout`` seconds); JSON answers larger than ``MAX_JSON_BYTES`` are refused; a download that fails or
stalls is tried again ``download_retries`` times with a doubling delay, a file larger than
``max_download_bytes`` (by its Content-Length, or counted while it arrives) is refused; every line has a
``timeout`` from submitting to its last file.

A line that fails is retried ``retries`` times (it goes back to the shared queue) unless the failure is certain
to repeat (an unsafe output name, a file over the size limit). When a server cannot be reached, its line goes
back to the queue and, if ``/system_stats`` no longer answers, the server takes no more lines. Timeouts and
Ctrl-C remove the line's prompt from the server (``POST /queue {"delete"}`` and ``POST /interrupt
{"prompt_id"}``), and the manifest stays valid at every step: every line ends done, failed, or (after Ctrl-C)
pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from ..safe_files import AtomicFile, UnsafePathError, confined_file, confined_folder
from .jobs import (
    CONNECT_TIMEOUT,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_GB,
    DEFAULT_READ_TIMEOUT,
    DONE,
    DOWNLOAD_RETRIES,
    FAILED,
    JOB_FILE,
    MAX_JSON_BYTES,
    MAX_RETRY_DELAY,
    PENDING,
    RETRY_DELAY,
    BatchInterrupted,
    BatchUsageError,
    Job,
    LineResult,
    Manifest,
    Plan,
    UnsafeOutput,
    fill_workflow,
    format_execution_error,
    format_interrupted,
    format_node_errors,
    format_validation_error,
    history_error,
    job_name,
    json_bytes,
    load_workflow,
    node_label,
    output_files,
    start_batch,
    summarize,
)
from .outfiles import (
    shown,
    write_atomic,
)

__all__ = ["ComfyServer", "JobFailed", "Limits", "ServerLost", "check_server", "normalize_server", "run_queue",
           "run_queue_sync"]

Log = Callable[[str], None]

CHECK_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5.0
HISTORY_WAIT = 60.0
MAX_CONNECTION_LOSSES = 3
DEFAULT_MAX_DOWNLOAD_BYTES = int(DEFAULT_MAX_DOWNLOAD_GB * 2**30)
_PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class JobFailed(Exception):
    """ComfyUI refused or failed the line (the message is ComfyUI's own error text), or its outputs cannot be
    saved. ``retry`` is False when running the line again would fail the same way."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class ServerLost(Exception):
    """The server stopped answering (connection refused or reset, websocket gone)."""


class _TryAgain(Exception):
    """A download failed in a way that may pass (timeout, dropped connection, HTTP 5xx)."""


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Limits:
    """Timeouts and sizes of one run (seconds and bytes; None: no limit)."""

    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    download_retries: int = DOWNLOAD_RETRIES
    retry_delay: float = RETRY_DELAY
    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES
    max_json_bytes: int = MAX_JSON_BYTES

    def request(self) -> aiohttp.ClientTimeout:
        """A JSON request: connect, read, and in all at most two read timeouts after connecting."""
        return aiohttp.ClientTimeout(total=self.connect_timeout + 2 * self.read_timeout,
                                     sock_connect=self.connect_timeout, sock_read=self.read_timeout)

    def download(self) -> aiohttp.ClientTimeout:
        """A download: no total (files are large), but no byte for ``read_timeout`` seconds is a stall."""
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout)


def normalize_server(url: str) -> str:
    """``host:port`` or ``http(s)://host:port[/path]`` -> ``http(s)://host:port[/path]`` without a trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise BatchUsageError(f"--server {url}: use an http:// or https:// address such as http://127.0.0.1:8188")
    return url


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or :class:`_TooLarge` as soon as it is longer than ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge(f"{resp.content_length} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise _TooLarge(f"more than {limit} bytes")
    return bytes(data)


async def check_server(session: aiohttp.ClientSession, url: str) -> dict:
    """``GET /system_stats``; :class:`BatchUsageError` with a clear message when ``url`` is no ComfyUI."""
    try:
        async with session.get(f"{url}/system_stats", timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as resp:
            if resp.status != 200:
                raise BatchUsageError(f"{url}/system_stats answered HTTP {resp.status}; is {url} a ComfyUI server?")
            stats = json.loads(await _read_limited(resp, MAX_JSON_BYTES))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        raise BatchUsageError(f"cannot reach ComfyUI at {url} ({type(err).__name__}: {err}); start ComfyUI there "
                              "or fix --server") from None
    except (ValueError, _TooLarge):
        raise BatchUsageError(f"{url}/system_stats did not answer JSON; is {url} a ComfyUI server?") from None
    if not isinstance(stats, dict):
        raise BatchUsageError(f"{url}/system_stats did not answer a JSON object; is {url} a ComfyUI server?")
    return stats


def describe_server(url: str, stats: dict) -> str:
    """``<url>: ComfyUI <version>, <first device>`` from ``/system_stats``."""
    system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
    devices = stats.get("devices") if isinstance(stats.get("devices"), list) else []
    text = f"{url}: ComfyUI {system.get('comfyui_version', '(version unknown)')}"
    if devices and isinstance(devices[0], dict) and devices[0].get("name"):
        text += f", {devices[0]['name']}"
    return text


_CLOSED = object()  # _next_event: the websocket closed


class ComfyServer:
    """One ComfyUI server: its websocket, ``/prompt``, ``/history``, ``/view`` and cancelling."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client_id: str, poll_interval: float = 5.0,
                 limits: Limits | None = None):
        self.session = session
        self.url = url
        self.client_id = client_id
        self.poll_interval = poll_interval
        self.limits = limits or Limits()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.lost: str | None = None
        self._connected_at: float | None = None

    async def connect(self) -> None:
        """Open (or reopen, at most once a second) the websocket; :class:`ServerLost` when it cannot be opened."""
        await self.close()
        loop = asyncio.get_running_loop()
        if self._connected_at is not None:
            await asyncio.sleep(max(0.0, self._connected_at + min(1.0, self.poll_interval) - loop.time()))
        self._connected_at = loop.time()
        ws_url = "ws" + self.url[len("http"):] + "/ws"
        try:
            self.ws = await asyncio.wait_for(
                self.session.ws_connect(ws_url, params={"clientId": self.client_id}), self.limits.connect_timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise ServerLost(f"cannot open the websocket {ws_url} ({type(err).__name__}: {err})") from None

    async def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            with contextlib.suppress(Exception):
                await ws.close()

    async def alive(self) -> bool:
        try:
            await check_server(self.session, self.url)
        except BatchUsageError:
            return False
        return True

    async def _json(self, method: str, path: str, **kwargs) -> tuple[int, object]:
        """One request; (status, JSON body or text). Connection problems and timeouts raise :class:`ServerLost`,
        an answer over ``max_json_bytes`` raises :class:`JobFailed`."""
        try:
            async with self.session.request(method, self.url + path, timeout=self.limits.request(),
                                            **kwargs) as resp:
                text = (await _read_limited(resp, self.limits.max_json_bytes)).decode("utf-8", "replace")
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise ServerLost(f"{method} {path} failed ({type(err).__name__}: {err})") from None
        except _TooLarge as err:
            raise JobFailed(f"{method} {path} answered {err}, more than the {self.limits.max_json_bytes >> 20} MiB "
                            "the client reads") from None

    async def submit(self, graph: dict, prompt_id: str) -> tuple[str, str | None]:
        """``POST /prompt``; (prompt id, warning about invalid output branches or None); :class:`JobFailed`."""
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        status, answer = await self._json("POST", "/prompt", json=body)
        if status == 400:
            raise JobFailed(format_validation_error(answer, graph))
        if status != 200 or not isinstance(answer, dict) or not answer.get("prompt_id"):
            raise JobFailed(f"POST /prompt answered HTTP {status}: {str(answer)[:500]}")
        given = str(answer["prompt_id"])
        if not _PROMPT_ID.fullmatch(given):
            raise JobFailed(f"POST /prompt answered the prompt id {shown(given)}, which is not an id", retry=False)
        warning = format_node_errors(answer["node_errors"], graph) if answer.get("node_errors") else None
        return given, warning

    async def _next_event(self, timeout: float) -> object:
        """The next JSON event; None after ``timeout`` seconds without one; ``_CLOSED`` when the websocket closed."""
        if self.ws is None or self.ws.closed:
            await self.connect()  # ServerLost when the server refuses it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                msg = await self.ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                return None
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    return event
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                await self.close()
                return _CLOSED
            # binary messages are preview images

    async def wait(self, prompt_id: str, graph: dict, report: Log) -> None:
        """Follow the prompt to its end; :class:`JobFailed` with ComfyUI's error when it did not succeed."""
        last_tenth: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.poll_interval
        while True:
            now = loop.time()
            if now >= next_poll:
                if await self._finished(prompt_id, graph):
                    return
                next_poll = loop.time() + self.poll_interval
                continue
            event = await self._next_event(next_poll - now)
            if event is _CLOSED:
                next_poll = loop.time()  # ask /history at once (ServerLost when the server is gone)
                continue
            if event is None:
                continue
            if await self._on_event(event, prompt_id, graph, report, last_tenth):
                return

    async def _on_event(self, event: dict, prompt_id: str, graph: dict, report: Log,
                        last_tenth: dict[str, int]) -> bool:
        """Act on one websocket event; True when it says the prompt succeeded (:class:`JobFailed` when it failed).

        Events of other prompts, and events without a ``data`` object, are ignored.
        """
        kind, data = event.get("type"), event.get("data")
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return False
        if kind == "execution_start":
            report("started")
        elif kind == "progress":
            _report_progress(data, graph, report, last_tenth)
        elif kind == "execution_success":
            return True
        elif kind == "execution_error":
            raise JobFailed(format_execution_error(data, graph))
        elif kind == "execution_interrupted":
            raise JobFailed(format_interrupted(data, graph))
        elif kind == "executing" and data.get("node") is None:
            entry = await self.history(prompt_id)
            if entry is None:
                raise JobFailed("ComfyUI finished the prompt but has no history entry for it")
            self._check_history(entry, graph)
            return True
        return False

    async def _finished(self, prompt_id: str, graph: dict) -> bool:
        """Whether ``/history/<id>`` has the prompt's entry (:class:`JobFailed` when it failed or vanished)."""
        entry = await self.history(prompt_id, wait=0)
        if entry is None and not await self._queued(prompt_id):
            entry = await self.history(prompt_id, wait=0)  # it may have finished between the two questions
            if entry is None:
                raise JobFailed(f"{self.url} no longer has the prompt in its queue or history (was the "
                                "server restarted or its queue cleared?)")
        if entry is None:
            return False
        self._check_history(entry, graph)
        return True

    async def _queued(self, prompt_id: str) -> bool:
        """Whether ``GET /queue`` lists the prompt as running or pending (True when the server cannot say)."""
        status, answer = await self._json("GET", "/queue")
        if status != 200 or not isinstance(answer, dict):
            return True
        items = [*(answer.get("queue_running") or []), *(answer.get("queue_pending") or [])]
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)

    @staticmethod
    def _check_history(entry: dict, graph: dict) -> None:
        error = history_error(entry, graph)
        if error is not None:
            raise JobFailed(error)

    async def history(self, prompt_id: str, wait: float = HISTORY_WAIT) -> dict | None:
        """``GET /history/<id>`` (that prompt's entry only); waits up to ``wait`` seconds for the entry (ComfyUI
        stores it just after ``execution_success``); None when there is none."""
        delay, waited = 0.05, 0.0
        while True:
            status, answer = await self._json("GET", f"/history/{quote(prompt_id, safe='')}")
            if status == 200 and isinstance(answer, dict) and isinstance(answer.get(prompt_id), dict):
                return answer[prompt_id]
            if waited >= wait:
                return None
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)

    async def download(self, params: dict[str, str], dest: Path, report: Log = lambda text: None) -> int:
        """``GET /view`` into ``dest`` (an already confined path) through a temporary file; the size in bytes.

        Failures that may pass are tried again ``download_retries`` times, waiting ``retry_delay`` seconds,
        doubled each time; then :class:`ServerLost` if the server no longer answers, else :class:`JobFailed`.
        """
        what = f"{shown(params['filename'])} (subfolder {shown(params['subfolder'])}, type {params['type']})"
        delay, tries = self.limits.retry_delay, self.limits.download_retries + 1
        for attempt in range(1, tries + 1):
            try:
                return await self._download_once(params, dest, what)
            except _TryAgain as err:
                if attempt == tries:
                    if not await self.alive():
                        raise ServerLost(f"download of {what} failed ({err})") from None
                    raise JobFailed(f"cannot download {what}: {err}; gave up after {tries} tries (the file is "
                                    "still on the server)") from None
                report(f"download of {what}: {err}; trying again in {delay:g} s ({attempt}/{tries - 1})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
        raise AssertionError("unreachable")

    async def _download_once(self, params: dict[str, str], dest: Path, what: str) -> int:
        limit = self.limits.max_download_bytes
        try:
            async with self.session.get(f"{self.url}/view", params=params, timeout=self.limits.download()) as resp:
                if resp.status != 200:
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    text = "".join(c if c.isprintable() else " " for c in text).strip()
                    message = f"/view answered HTTP {resp.status} {text}".rstrip()
                    if resp.status >= 500 or resp.status == 429:
                        raise _TryAgain(message)
                    raise JobFailed(f"cannot download {what}: {message}")
                if limit is not None and resp.content_length is not None and resp.content_length > limit:
                    raise JobFailed(f"{what} is {resp.content_length} bytes, more than the download limit of "
                                    f"{_size(limit)} (--max-download-gb); not downloaded", retry=False)
                with AtomicFile(dest) as handle:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        if limit is not None and handle.size + len(chunk) > limit:
                            raise JobFailed(f"{what} is larger than the download limit of {_size(limit)} "
                                            "(--max-download-gb); download stopped", retry=False)
                        handle.write(chunk)
                    handle.commit()
                    return handle.size
        except asyncio.TimeoutError:  # before ClientError: a stalled read is both
            raise _TryAgain(f"no data for {self.limits.read_timeout:g} s") from None
        except aiohttp.ClientError as err:
            raise _TryAgain(f"{type(err).__name__}: {err}") from None

    async def cancel(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the server's queue and interrupt it if it is running."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cancel(prompt_id), CANCEL_TIMEOUT)

    async def _cancel(self, prompt_id: str) -> None:
        await self._json("POST", "/queue", json={"delete": [prompt_id]})
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})


def _report_progress(data: dict, graph: dict, report: Log, last_tenth: dict[str, int]) -> None:
    """Report a node's ``progress`` event when it reaches a new tenth of its total, or its end."""
    node, value, total = str(data.get("node")), data.get("value"), data.get("max")
    if isinstance(value, (int, float)) and isinstance(total, (int, float)) and total > 0:
        tenth = int(10 * value / total)
        if tenth > last_tenth.get(node, -1) or value == total:
            last_tenth[node] = tenth
            report(f"{node_label(graph, node)}: {value:g}/{total:g}")


def _size(limit: int) -> str:
    return f"{limit / 2**30:g} GiB" if limit >= 2**30 else f"{limit} bytes"


@dataclass
class _Run:
    """What the workers share."""

    plan: Plan
    manifest: Manifest
    queue: asyncio.Queue
    timeout: float | None
    retries: int
    log: Log
    busy: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_job(self) -> Job | None:
        """The next line; waits while other workers still run lines that may come back (retry, lost server)."""
        while True:
            if not self.queue.empty():
                return self.queue.get_nowait()
            if self.busy == 0:
                return None
            self.wake.clear()
            await self.wake.wait()

    @property
    def out_dir(self) -> Path:
        return self.manifest.out_dir

    @property
    def root(self) -> Path:
        return self.manifest.root

    def mark(self, job: Job, status: str, **fields) -> None:
        self.manifest.update(job.name, job.line, self.plan.workflow.hash, status, **fields)


async def _run_job(server: ComfyServer, job: Job, run: _Run) -> list[str]:
    """Submit one line, follow it and download its outputs; the manifest's file list (relative paths)."""
    tag = f"line {job.line.number} [{server.url}]"
    root = run.root
    job_dir = run.out_dir / job.name
    confined_folder(root, job_dir)  # refuse a line folder that leads out of the output folder before any work
    run.manifest.remove_outputs(job.name, lambda text: run.log(f"{tag}: {text}"))
    if server.ws is None or server.ws.closed:
        await server.connect()  # before submitting: ComfyUI drops the events of a client that is not connected
    job.prompt_id = str(uuid.uuid4())
    run.mark(job, PENDING, prompt_id=job.prompt_id, server=server.url, attempts=job.attempts, error=None, files=[])

    prompt_id, warning = await server.submit(job.graph, job.prompt_id)
    if prompt_id != job.prompt_id:  # a server that ignores the client's prompt id
        job.prompt_id = prompt_id
        run.mark(job, PENDING, prompt_id=prompt_id)
    run.log(f"{tag}: queued as {prompt_id}" + (f" (warning: {warning})" if warning else ""))
    await server.wait(prompt_id, job.graph, lambda text: run.log(f"{tag}: {text}"))
    entry = await server.history(prompt_id)
    if entry is None:
        raise JobFailed("ComfyUI reported success but has no history entry for the prompt")
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    try:
        listed = output_files(outputs)
    except UnsafeOutput as err:
        raise JobFailed(str(err), retry=False) from None

    folder = confined_folder(root, job_dir)
    folder.mkdir(exist_ok=True)
    files = []
    for item in listed:
        dest = confined_file(root, folder / item.local_name)
        await server.download(item.view_params(), dest, lambda text: run.log(f"{tag}: {text}"))
        files.append(f"{job.name}/{item.local_name}")
    record = {"line": job.line.number, "script": job.line.text, "prompt_id": prompt_id, "server": server.url,
              "files": {item.local_name: item.view_params() | {"node": item.node_id, "key": item.key}
                        for item in listed},
              "outputs": outputs}
    if warning:
        record["warning"] = warning
    write_atomic(root, folder / JOB_FILE, json_bytes(record))
    files.append(f"{job.name}/{JOB_FILE}")
    return files


async def _no_stray_timeouts(work):
    """``work``, with a timeout inside it reported as a failure of the line (so that only the line's own
    ``wait_for`` raises ``TimeoutError``)."""
    try:
        return await work
    except asyncio.TimeoutError as err:
        raise JobFailed(f"timed out ({type(err).__name__}: {err})") from None


async def _worker(server: ComfyServer, run: _Run) -> None:
    """Take lines from the shared queue until it is empty or the server is lost."""
    while True:
        job = await run.next_job()
        if job is None:
            return
        job.attempts += 1
        run.busy += 1
        try:
            work = _no_stray_timeouts(_run_job(server, job, run))
            files = await asyncio.wait_for(work, run.timeout) if run.timeout else await work
        except asyncio.CancelledError:
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            run.mark(job, PENDING, error="stopped before it finished (interrupted)")
            raise
        except ServerLost as err:
            job.attempts -= 1
            job.connection_losses += 1
            if job.connection_losses >= MAX_CONNECTION_LOSSES:
                _failed(run, job, f"lost the connection {job.connection_losses} times; last: {err}", server, False)
            else:
                run.mark(job, PENDING, error=f"{server.url}: {err}")
                run.queue.put_nowait(job)
            if not await server.alive():
                server.lost = str(err)
                run.log(f"{server.url}: {err}; the server does not answer any more and takes no more lines")
                return
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            await server.close()
            run.log(f"{server.url}: {err}; the line goes back to the queue")
        except asyncio.TimeoutError:  # the line's own timeout (_no_stray_timeouts turns any other into JobFailed)
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            _failed(run, job, f"timed out after {run.timeout:g} s", server, True)
        except JobFailed as err:
            _failed(run, job, str(err), server, err.retry)
        except UnsafePathError as err:  # the line's folder or a file in it leads out of the output folder
            _failed(run, job, str(err), server, False)
        except OSError as err:  # writing the outputs
            _failed(run, job, f"cannot write the outputs: {err}", server, True)
        except Exception as err:  # anything else fails this line only; the batch goes on
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            _failed(run, job, f"unexpected error: {type(err).__name__}: {err}", server, False)
        else:
            run.mark(job, DONE, files=files, error=None)
            run.log(f"line {job.line.number} [{server.url}]: done, {len(files)} files in {run.out_dir / job.name}")
        finally:
            run.busy -= 1
            run.wake.set()


def _failed(run: _Run, job: Job, error: str, server: ComfyServer, may_retry: bool) -> None:
    if may_retry and job.attempts <= run.retries:
        run.log(f"line {job.line.number} [{server.url}]: failed ({error}); retry {job.attempts}/{run.retries}")
        run.mark(job, PENDING, error=error)
        run.queue.put_nowait(job)
    else:
        run.log(f"line {job.line.number} [{server.url}]: FAILED: {error}")
        run.mark(job, FAILED, error=error)


async def run_queue(prompts: str | os.PathLike, workflow: str | os.PathLike, servers: list[str],
                    out: str | os.PathLike, *, timeout: float | None = DEFAULT_JOB_TIMEOUT,
                    client_id: str | None = None, retries: int = 0, log: Log = print, poll_interval: float = 5.0,
                    read_timeout: float = DEFAULT_READ_TIMEOUT,
                    max_download_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
                    download_retries: int = DOWNLOAD_RETRIES, retry_delay: float = RETRY_DELAY) -> list[LineResult]:
    """Run every line of ``prompts`` through ``workflow`` on ``servers``; one :class:`LineResult` per line.

    ``timeout`` is per line (None or 0: no limit); ``max_download_bytes`` per file (None: no limit).
    :class:`BatchUsageError` before anything is submitted when a file, the manifest or a server is unusable.
    """
    urls = _server_urls(servers)
    _check_limits(timeout, read_timeout, max_download_bytes, retries, download_retries)
    limits = Limits(read_timeout=read_timeout, download_retries=download_retries, retry_delay=retry_delay,
                    max_download_bytes=max_download_bytes)
    plan, manifest = _load_plan(prompts, workflow, out, log)
    if plan.jobs:
        run = _Run(plan, manifest, asyncio.Queue(), timeout or None, retries, log)
        await _run_on_servers(run, urls, client_id or uuid.uuid4().hex, poll_interval, limits)
    return summarize(plan, manifest)


def _server_urls(servers: list[str]) -> list[str]:
    """The normalised server URLs; :class:`BatchUsageError` when there are none or one is given twice."""
    if not servers:
        raise BatchUsageError("give at least one --server")
    urls = [normalize_server(url) for url in servers]
    duplicates = sorted({url for url in urls if urls.count(url) > 1})
    if duplicates:
        raise BatchUsageError(f"--server {duplicates[0]} is given twice; a ComfyUI server runs one prompt at a "
                              "time, so give each server once")
    return urls


def _check_limits(timeout: float | None, read_timeout: float, max_download_bytes: int | None, retries: int,
                  download_retries: int) -> None:
    """:class:`BatchUsageError` for a negative timeout or retry count, or a non-positive read or size limit."""
    if timeout is not None and timeout < 0:
        raise BatchUsageError(f"--timeout must be 0 (no limit) or positive seconds, got {timeout:g}")
    if not read_timeout > 0:
        raise BatchUsageError(f"--read-timeout must be positive seconds, got {read_timeout:g}")
    if max_download_bytes is not None and max_download_bytes <= 0:
        raise BatchUsageError(f"the download limit must be positive, got {max_download_bytes} bytes")
    if retries < 0 or download_retries < 0:
        raise BatchUsageError(f"--retries must be 0 or more, got {min(retries, download_retries)}")


def _load_plan(prompts: str | os.PathLike, workflow: str | os.PathLike, out: str | os.PathLike,
               log: Log) -> tuple[Plan, Manifest]:
    """Read the prompt file, the workflow and the output folder's manifest; plan the lines and log the plan."""
    flow = load_workflow(workflow)
    plan, manifest, run = start_batch(prompts, out, flow.hash, log)
    plan.workflow = flow
    plan.jobs = [Job(job_name(plan.stem, line.number), line, fill_workflow(flow, line, plan.stem), reason)
                 for line, reason in run]
    return plan, manifest


async def _run_on_servers(run: _Run, urls: list[str], client_id: str, poll_interval: float, limits: Limits) -> None:
    """Check and connect every server, run the planned lines on one worker per server, then mark the lines
    no server was left to run as failed."""
    # every request passes its own timeouts (Limits); the websocket lives as long as the run
    session_timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout)
    async with aiohttp.ClientSession(timeout=session_timeout) as session:
        for url in urls:
            run.log(describe_server(url, await check_server(session, url)))
        workers = [ComfyServer(session, url, client_id, poll_interval, limits) for url in urls]
        for job in run.plan.jobs:
            run.queue.put_nowait(job)
        try:
            for server in workers:
                await server.connect()
        except ServerLost as err:
            raise BatchUsageError(str(err)) from None
        await _run_workers(run, workers)
        _fail_unrun_lines(run, workers)


async def _run_workers(run: _Run, workers: list[ComfyServer]) -> None:
    """One :func:`_worker` per server until all end; the first unexpected error stops (and is raised after)
    the others, as does cancellation; every server is closed either way."""
    tasks = [asyncio.ensure_future(_worker(server, run)) for server in workers]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # an unexpected error or Ctrl-C: stop the other workers too (they cancel their prompts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in workers:
            await server.close()
    for task in done:
        task.result()


def _fail_unrun_lines(run: _Run, workers: list[ComfyServer]) -> None:
    """Mark the lines still queued (every server was lost) as failed, naming why each server was lost."""
    lost = "; ".join(f"{server.url}: {server.lost}" for server in workers if server.lost)
    while not run.queue.empty():
        job = run.queue.get_nowait()
        run.mark(job, FAILED, error=f"no server left to run it ({lost})")


def run_queue_sync(*args, **kwargs) -> list[LineResult]:
    """:func:`run_queue` in a fresh event loop.

    Ctrl-C (SIGINT) or SIGTERM cancels the run: the workers cancel their prompts on the servers and save the
    manifest, then :class:`BatchInterrupted` is raised (a second signal stops at once). Where the loop cannot
    take signals (Windows), Ctrl-C raises KeyboardInterrupt after the same cleanup.
    """
    loop = asyncio.new_event_loop()
    main = loop.create_task(run_queue(*args, **kwargs))
    received: list[int] = []
    previous: dict[int, object] = {}

    def stop(signum: int) -> None:
        received.append(signum)
        _restore_signal(loop, signum, previous.pop(signum))  # a second signal gets the usual handling
        main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = signal.getsignal(signum)
            loop.add_signal_handler(signum, stop, signum)
            previous[signum] = handler
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            pass
    try:
        return loop.run_until_complete(main)
    except asyncio.CancelledError:
        if received:
            raise BatchInterrupted(received[0]) from None
        raise
    finally:
        for signum, handler in previous.items():
            _restore_signal(loop, signum, handler)
        if not main.done() and not received:  # KeyboardInterrupt without a loop handler: clean up as for a signal
            main.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(main)
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())  # aiohttp resolves names in threads
        loop.close()


def _restore_signal(loop: asyncio.AbstractEventLoop, signum: int, handler: object) -> None:
    with contextlib.suppress(Exception):
        loop.remove_signal_handler(signum)
    with contextlib.suppress(Exception):
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
