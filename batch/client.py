"""The batch queue's ComfyUI client: HTTP and websocket with aiohttp, one worker per server.

Per server, one websocket ``/ws?clientId=<client id>`` stays open, and one worker takes the next line from a
queue shared by all servers (so a free server always takes the next line). For a line it:

1. sends ``POST /prompt {"prompt", "client_id", "prompt_id"}`` with a fresh prompt id (HTTP 400: ComfyUI's
   validation errors, formatted per node);
2. follows the websocket events of that prompt id (``execution_start``, ``progress``, ``execution_success`` /
   ``execution_error`` / ``execution_interrupted``, and ``executing`` with ``node: null`` at the end); when
   the websocket is silent for ``poll_interval`` seconds it asks ``/history/<id>`` (and ``/queue``, to notice a
   prompt the server forgot), and a dropped websocket is reopened;
3. reads ``/history/<id>`` and downloads every output file through ``/view`` into ``<out>/<job name>/``
   (temporary name, then rename), plus ``job.json`` (the line, the prompt id, the server and the outputs).

A line that fails is retried ``retries`` times (it goes back to the shared queue). When a server cannot be
reached, its line goes back to the queue and, if ``/system_stats`` no longer answers, the server takes no more
lines. Timeouts and Ctrl-C remove the line's prompt from the server (``POST /queue {"delete"}`` and
``POST /interrupt {"prompt_id"}``), and the manifest stays valid at every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .jobs import (
    DONE,
    FAILED,
    JOB_FILE,
    PENDING,
    BatchUsageError,
    Job,
    LineResult,
    Manifest,
    Plan,
    file_stem,
    format_execution_error,
    format_interrupted,
    format_node_errors,
    format_validation_error,
    history_error,
    load_workflow,
    node_label,
    output_files,
    plan_batch,
    read_prompt_file,
    summarize,
    write_atomic,
)

__all__ = ["ComfyServer", "JobFailed", "ServerLost", "check_server", "normalize_server", "run_queue",
           "run_queue_sync"]

Log = Callable[[str], None]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
CHECK_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5.0
HISTORY_WAIT = 60.0
MAX_CONNECTION_LOSSES = 3


class JobFailed(Exception):
    """ComfyUI refused or failed the line; the message is ComfyUI's own error text."""


class ServerLost(Exception):
    """The server stopped answering (connection refused or reset, websocket gone)."""


def normalize_server(url: str) -> str:
    """``host:port`` or ``http(s)://host:port[/path]`` -> ``http(s)://host:port[/path]`` without a trailing slash."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise BatchUsageError(f"--server {url}: use an http:// or https:// address such as http://127.0.0.1:8188")
    return url


async def check_server(session: aiohttp.ClientSession, url: str) -> dict:
    """``GET /system_stats``; :class:`BatchUsageError` with a clear message when ``url`` is no ComfyUI."""
    try:
        async with session.get(f"{url}/system_stats", timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT)) as resp:
            if resp.status != 200:
                raise BatchUsageError(f"{url}/system_stats answered HTTP {resp.status}; is {url} a ComfyUI server?")
            stats = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        raise BatchUsageError(f"cannot reach ComfyUI at {url} ({type(err).__name__}: {err}); start ComfyUI there "
                              "or fix --server") from None
    except ValueError:
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


class ComfyServer:
    """One ComfyUI server: its websocket, ``/prompt``, ``/history``, ``/view`` and cancelling."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client_id: str, poll_interval: float = 5.0):
        self.session = session
        self.url = url
        self.client_id = client_id
        self.poll_interval = poll_interval
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.lost: str | None = None

    async def connect(self) -> None:
        """Open (or reopen) the websocket; :class:`ServerLost` when it cannot be opened."""
        await self.close()
        ws_url = "ws" + self.url[len("http"):] + "/ws"
        try:
            self.ws = await asyncio.wait_for(
                self.session.ws_connect(ws_url, params={"clientId": self.client_id}), CONNECT_TIMEOUT)
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
        """One request; (status, JSON body or text). Connection problems raise :class:`ServerLost`."""
        try:
            async with self.session.request(method, self.url + path, **kwargs) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise ServerLost(f"{method} {path} failed ({type(err).__name__}: {err})") from None

    async def submit(self, graph: dict, prompt_id: str) -> tuple[str, str | None]:
        """``POST /prompt``; (prompt id, warning about invalid output branches or None); :class:`JobFailed`."""
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        status, answer = await self._json("POST", "/prompt", json=body)
        if status == 400:
            raise JobFailed(format_validation_error(answer, graph))
        if status != 200 or not isinstance(answer, dict) or not answer.get("prompt_id"):
            raise JobFailed(f"POST /prompt answered HTTP {status}: {str(answer)[:500]}")
        warning = format_node_errors(answer["node_errors"], graph) if answer.get("node_errors") else None
        return str(answer["prompt_id"]), warning

    async def _next_event(self) -> dict | None:
        """The next JSON event, or None after ``poll_interval`` seconds of silence or a reconnect."""
        while True:
            if self.ws is None:
                await self.connect()
                return None
            try:
                msg = await self.ws.receive(timeout=self.poll_interval)
            except asyncio.TimeoutError:
                return None
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    return event
            elif msg.type == aiohttp.WSMsgType.BINARY:
                continue  # preview images
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                await self.connect()  # ServerLost when the server refuses it
                return None

    async def wait(self, prompt_id: str, graph: dict, report: Log) -> None:
        """Follow the prompt to its end; :class:`JobFailed` with ComfyUI's error when it did not succeed."""
        last_tenth: dict[str, int] = {}
        while True:
            event = await self._next_event()
            if event is None:
                entry = await self.history(prompt_id, wait=0)
                if entry is None and not await self._queued(prompt_id):
                    entry = await self.history(prompt_id, wait=0)  # it may have finished between the two questions
                    if entry is None:
                        raise JobFailed(f"{self.url} no longer has the prompt in its queue or history (was the "
                                        "server restarted or its queue cleared?)")
                if entry is not None:
                    self._check_history(entry, graph)
                    return
                continue
            kind, data = event.get("type"), event.get("data")
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_start":
                report("started")
            elif kind == "progress":
                node, value, total = str(data.get("node")), data.get("value"), data.get("max")
                if isinstance(value, (int, float)) and isinstance(total, (int, float)) and total > 0:
                    tenth = int(10 * value / total)
                    if tenth > last_tenth.get(node, -1) or value == total:
                        last_tenth[node] = tenth
                        report(f"{node_label(graph, node)}: {value:g}/{total:g}")
            elif kind == "execution_success":
                return
            elif kind == "execution_error":
                raise JobFailed(format_execution_error(data, graph))
            elif kind == "execution_interrupted":
                raise JobFailed(format_interrupted(data, graph))
            elif kind == "executing" and data.get("node") is None:
                entry = await self.history(prompt_id)
                if entry is None:
                    raise JobFailed("ComfyUI finished the prompt but has no history entry for it")
                self._check_history(entry, graph)
                return

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
        """``GET /history/<id>``; waits up to ``wait`` seconds for the entry (ComfyUI stores it just after
        ``execution_success``); None when there is none."""
        delay, waited = 0.05, 0.0
        while True:
            status, answer = await self._json("GET", f"/history/{prompt_id}")
            if status == 200 and isinstance(answer, dict) and isinstance(answer.get(prompt_id), dict):
                return answer[prompt_id]
            if waited >= wait:
                return None
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)

    async def download(self, params: dict[str, str], dest: Path) -> None:
        """``GET /view`` into ``dest``, streamed to a temporary name and renamed when complete."""
        tmp = dest.with_name(f".{dest.name}.partial")
        try:
            async with self.session.get(f"{self.url}/view", params=params) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    raise JobFailed(f"cannot download {params['filename']} (subfolder {params['subfolder']!r}, "
                                    f"type {params['type']}) from /view: HTTP {resp.status} {text}")
                with open(tmp, "wb") as handle:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        handle.write(chunk)
            os.replace(tmp, dest)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise ServerLost(f"download of {params['filename']} failed ({type(err).__name__}: {err})") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    async def cancel(self, prompt_id: str) -> None:
        """Best effort: drop the prompt from the server's queue and interrupt it if it is running."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cancel(prompt_id), CANCEL_TIMEOUT)

    async def _cancel(self, prompt_id: str) -> None:
        await self._json("POST", "/queue", json={"delete": [prompt_id]})
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})


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

    def mark(self, job: Job, status: str, **fields) -> None:
        self.manifest.update(job.name, job.line, self.plan.workflow.hash, status, **fields)


async def _run_job(server: ComfyServer, job: Job, run: _Run) -> list[str]:
    """Submit one line, follow it and download its outputs; the manifest's file list (relative paths)."""
    job_dir = run.out_dir / job.name
    for rel in run.manifest.jobs.get(job.name, {}).get("files") or []:  # stale outputs of an earlier run
        with contextlib.suppress(FileNotFoundError):
            (run.out_dir / rel).unlink()
    if server.ws is None or server.ws.closed:
        await server.connect()  # before submitting: ComfyUI drops the events of a client that is not connected
    job.prompt_id = str(uuid.uuid4())
    run.mark(job, PENDING, prompt_id=job.prompt_id, server=server.url, attempts=job.attempts, error=None, files=[])
    tag = f"line {job.line.number} [{server.url}]"

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

    job_dir.mkdir(parents=True, exist_ok=True)
    files = []
    listed = output_files(outputs)
    for item in listed:
        await server.download(item.view_params(), job_dir / item.local_name)
        files.append(f"{job.name}/{item.local_name}")
    record = {"line": job.line.number, "script": job.line.text, "prompt_id": prompt_id, "server": server.url,
              "files": {item.local_name: item.view_params() | {"node": item.node_id, "key": item.key}
                        for item in listed},
              "outputs": outputs}
    if warning:
        record["warning"] = warning
    write_atomic(job_dir / JOB_FILE, (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    files.append(f"{job.name}/{JOB_FILE}")
    return files


async def _worker(server: ComfyServer, run: _Run) -> None:
    """Take lines from the shared queue until it is empty or the server is lost."""
    while True:
        job = await run.next_job()
        if job is None:
            return
        job.attempts += 1
        run.busy += 1
        try:
            if run.timeout:
                files = await asyncio.wait_for(_run_job(server, job, run), run.timeout)
            else:
                files = await _run_job(server, job, run)
        except asyncio.CancelledError:
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            run.mark(job, PENDING, error="stopped before it finished (Ctrl-C)")
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
        except asyncio.TimeoutError:  # before OSError: since Python 3.11 it is the built-in TimeoutError
            if job.prompt_id:
                await server.cancel(job.prompt_id)
            _failed(run, job, f"timed out after {run.timeout:g} s", server, True)
        except OSError as err:  # writing the outputs
            _failed(run, job, f"cannot write the outputs: {err}", server, True)
        except JobFailed as err:
            _failed(run, job, str(err), server, True)
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
                    out: str | os.PathLike, *, timeout: float | None = None, client_id: str | None = None,
                    retries: int = 0, log: Log = print, poll_interval: float = 5.0) -> list[LineResult]:
    """Run every line of ``prompts`` through ``workflow`` on ``servers``; one :class:`LineResult` per line.

    :class:`BatchUsageError` before anything is submitted when a file, the manifest or a server is unusable.
    """
    if not servers:
        raise BatchUsageError("give at least one --server")
    urls = [normalize_server(url) for url in servers]
    duplicates = sorted({url for url in urls if urls.count(url) > 1})
    if duplicates:
        raise BatchUsageError(f"--server {duplicates[0]} is given twice; a ComfyUI server runs one prompt at a "
                              "time, so give each server once")
    if timeout is not None and timeout <= 0:
        raise BatchUsageError(f"--timeout must be positive seconds, got {timeout:g}")
    if retries < 0:
        raise BatchUsageError(f"--retries must be 0 or more, got {retries}")
    lines = read_prompt_file(prompts)
    flow = load_workflow(workflow)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BatchUsageError(f"cannot use --out {out_dir}: {err}") from None
    manifest = Manifest.load(out_dir)
    plan = plan_batch(lines, flow, file_stem(prompts), manifest)
    log(f"{Path(prompts).name}: {len(lines)} lines; {len(plan.jobs)} to run, {len(plan.skipped)} done earlier, "
        f"{len(plan.invalid)} invalid")
    for line in plan.invalid:
        log(f"line {line.number}: FAILED: {line.error}")
    if plan.jobs:
        client_id = client_id or uuid.uuid4().hex
        timeouts = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeouts) as session:
            for url in urls:
                log(describe_server(url, await check_server(session, url)))
            workers = [ComfyServer(session, url, client_id, poll_interval) for url in urls]
            run = _Run(plan, manifest, asyncio.Queue(), timeout, retries, log)
            for job in plan.jobs:
                run.queue.put_nowait(job)
            try:
                for server in workers:
                    await server.connect()
            except ServerLost as err:
                raise BatchUsageError(str(err)) from None
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
            lost = "; ".join(f"{server.url}: {server.lost}" for server in workers if server.lost)
            while not run.queue.empty():
                job = run.queue.get_nowait()
                run.mark(job, FAILED, error=f"no server left to run it ({lost})")
    return summarize(plan, manifest)


def run_queue_sync(*args, **kwargs) -> list[LineResult]:
    """:func:`run_queue` in a fresh event loop (Ctrl-C leaves the manifest valid and raises KeyboardInterrupt)."""
    return asyncio.run(run_queue(*args, **kwargs))

