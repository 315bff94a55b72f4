"""``python -m echo_forcing batch``: every line of a prompt file rendered by the pack's pipeline (``batch.headless``),
in this process or on a Ray cluster (``batch.ray_pool``), with ``queue``'s contract.

**The same contract as ``queue``** (``batch.jobs``): the same prompt-file rules, job names ``<stem>-<line:04d>``
and per-line folders in ``--out``, the same ``queue-state.json`` (its ``workflow_hash`` is the render recipe's
digest here), so a rerun skips the lines done with an unchanged script and recipe whose files are all there; the
same ``job.json`` beside each line's files, the same exit codes (0 all done, 1 some line failed, 2 usage error,
130 Ctrl-C, 143 SIGTERM) and the same summary lines.

**Who writes.** Workers return each line's files as bytes; this driver writes them, atomically and confined to
``--out`` (``batch.outfiles``), and records them. A worker on another machine needs no shared disk, and nothing
a worker returns is written outside the line's folder.

**Dispatch.** Lines whose first shot is the same go to the same worker, one after another, so the worker's shot
cache starts each after the shots it already made (the storytelling reuse: same bits as a fresh run). A worker
with no group left takes the next group; when none is left it takes a line of the largest group still waiting.

**Faults.** A line that fails inside a worker (a bad script for the model, a run refused by its plan) fails
alone and is not retried: it would fail again. A worker that dies (killed, out of memory) is restarted by the
pool and its line retried, at most ``retries`` times (Ray's actor restarts and task retries); then the line
fails and the worker is replaced for the lines still to come. Ctrl-C or SIGTERM stops the workers, records the
running lines as unfinished and saves the state; running the command again goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from ..pipeline.scene_script import parse_scene_script
from .headless import BlockDone, RenderRecipe
from .jobs import (
    DONE,
    FAILED,
    JOB_FILE,
    PENDING,
    BatchInterrupted,
    BatchUsageError,
    LineResult,
    Manifest,
    Plan,
    PromptLine,
    job_name,
    json_bytes,
    start_batch,
    summarize,
)
from .outfiles import check_name, confined_folder, write_atomic

Log = Callable[[str], None]
POLL_SECONDS = 0.1
"""How long the driver waits for a finished line before it looks at the workers' progress again."""


@dataclass
class LineJob:
    """One line to render: its name, line, dispatch group (its first shot) and attempts so far."""

    name: str
    line: PromptLine
    reason: str
    group: str
    attempts: int = 0


@dataclass
class Outcome:
    """What a worker made of a line: its files, or the error that failed it (``lost``: the worker died, after the
    pool's retries)."""

    worker: str
    files: dict[str, bytes] = field(default_factory=dict)
    summary: str = ""
    reused_shots: int = 0
    seconds: float = 0.0
    error: str | None = None
    lost: bool = False


class Pool(Protocol):
    """Workers that render lines: ``size`` of them, each taking one line at a time."""

    size: int

    def submit(self, worker: int, job: LineJob) -> object:
        """Start ``job`` on ``worker``; a handle for :meth:`wait`."""

    def wait(self, handles: list, timeout: float) -> list[tuple[object, Outcome]]:
        """The handles that finished within ``timeout`` seconds, with their outcomes."""

    def events(self) -> list[tuple[str, BlockDone | str]]:
        """Progress since the last call: (line name, a block done) or (worker, "loaded")."""

    def model_loads(self) -> int:
        """Models loaded by the workers so far (one per worker, plus one per restart)."""

    def stop(self) -> None:
        """Stop every worker (running lines are abandoned)."""


class Dispatch:
    """Which line each worker takes next (see the module docstring, "Dispatch")."""

    def __init__(self, jobs: list[LineJob]):
        self.groups: dict[str, deque[LineJob]] = {}
        for job in jobs:
            self.groups.setdefault(job.group, deque()).append(job)
        self.waiting = deque(self.groups)  # groups no worker has taken yet, in file order
        self.current: dict[int, str] = {}

    def put_back(self, job: LineJob) -> None:
        self.groups.setdefault(job.group, deque()).appendleft(job)
        if job.group not in self.waiting and job.group not in self.current.values():
            self.waiting.appendleft(job.group)

    def next_for(self, worker: int) -> LineJob | None:
        group = self.current.get(worker)
        if group is not None and self.groups.get(group):
            return self.groups[group].popleft()
        while self.waiting:
            group = self.waiting.popleft()
            if self.groups.get(group):
                self.current[worker] = group
                return self.groups[group].popleft()
        # no group is left for this worker: help with the largest group still waiting, leaving its worker the
        # next line (which starts after the shots that worker made); a lone waiting line stays with its group
        largest = max(self.groups.values(), key=len, default=None)
        if largest and (len(largest) > 1 or self.stealable(largest)):
            return largest.pop()
        return None

    def stealable(self, queue: deque[LineJob]) -> bool:
        """A lone waiting line may go to another worker only when no worker holds its group."""
        return bool(queue) and queue[0].group not in self.current.values()

    def __len__(self) -> int:
        return sum(len(q) for q in self.groups.values())


def group_of(script: str) -> str:
    """The dispatch group of a script: its first shot (prompt, duration, how it is entered, label)."""
    first = parse_scene_script(script)[0]
    return repr((first.prompt, first.duration, first.entry, first.label))


class _Signalled(BaseException):
    """SIGTERM, raised where the driver is (a BaseException, as KeyboardInterrupt: no line's error handler takes
    it for the line's own failure)."""

    def __init__(self, signum: int):
        self.signum = signum


@dataclass
class _Run:
    plan: Plan
    manifest: Manifest
    recipe: RenderRecipe
    recipe_hash: str
    log: Log
    progress: BatchProgress

    def mark(self, job: LineJob, status: str, **fields) -> None:
        self.manifest.update(job.name, job.line, self.recipe_hash, status, **fields)


def run_batch(prompts: str | os.PathLike, out: str | os.PathLike, recipe: RenderRecipe, pool_factory:
              Callable[[], Pool], *, log: Log = print, bars: bool | None = None,
              on_event: Callable[[str, BlockDone | str], None] | None = None) -> list[LineResult]:
    """Render every line of ``prompts`` into ``out`` with the workers ``pool_factory`` makes (after the plan, only
    when some line must run); one :class:`LineResult` per line. ``on_event`` hears every progress event (for
    tests and callers' own displays); ``bars``: tqdm bars (default: when stderr is a terminal).
    :class:`BatchUsageError` before any work for an unusable prompt file or output folder;
    :class:`BatchInterrupted` after Ctrl-C or SIGTERM, with the state saved."""
    recipe_hash = recipe.digest()
    plan, manifest, to_run = start_batch(prompts, out, recipe_hash, log)
    stem = plan.stem
    if to_run:
        jobs = [LineJob(job_name(stem, line.number), line, reason, group_of(line.text)) for line, reason in to_run]
        run = _Run(plan, manifest, recipe, recipe_hash, log, BatchProgress(len(jobs), bars))
        try:
            _render_all(run, jobs, pool_factory, on_event)
        finally:
            run.progress.close()
    return summarize(plan, manifest)


def _render_all(run: _Run, jobs: list[LineJob], pool_factory: Callable[[], Pool],
                on_event: Callable[[str, BlockDone | str], None] | None) -> None:
    """Start the workers, hand out the lines, write what comes back; stop cleanly on a signal."""
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum, _frame):
        raise _Signalled(signum)

    try:
        signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    dispatch, running, pool = Dispatch(jobs), {}, None

    def heard(name: str, event: BlockDone | str) -> None:
        run.progress.event(name, event)
        if on_event is not None:
            on_event(name, event)

    try:
        try:
            pool = pool_factory()
        except (OSError, ValueError) as err:  # the model cannot load: nothing ran, no line is marked
            raise BatchUsageError(f"the workers could not start: {err}") from None
        if hasattr(pool, "listen"):  # a pool that renders in this process reports its blocks as they come
            pool.listen(heard)
        idle = list(range(pool.size))
        while len(dispatch) or running:
            for worker in list(idle):
                job = dispatch.next_for(worker) if len(dispatch) else None
                if job is None:  # nothing for this worker (a lone line waits for the worker of its group)
                    continue
                idle.remove(worker)
                job.attempts += 1
                run.manifest.remove_outputs(job.name, run.log)
                run.mark(job, PENDING, prompt_id=None, server=None, attempts=job.attempts, error=None, files=[])
                run.progress.start(job)
                starting = object()  # the line counts as running while it starts (a local pool renders it here)
                running[starting] = (worker, job)
                handle = pool.submit(worker, job)
                running[handle] = running.pop(starting)
            for handle, outcome in pool.wait(list(running), POLL_SECONDS):
                worker, job = running.pop(handle)
                idle.append(worker)
                _finish(run, job, outcome)
            for name, event in pool.events():
                heard(name, event)
    except (KeyboardInterrupt, _Signalled) as stop:
        signum = stop.signum if isinstance(stop, _Signalled) else signal.SIGINT
        for _, job in running.values():
            run.mark(job, PENDING, error="stopped before it finished (interrupted)")
        raise BatchInterrupted(signum) from None
    finally:
        if pool is not None:
            run.log(f"model loads: {pool.model_loads()} (workers: {pool.size})")
            pool.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _finish(run: _Run, job: LineJob, outcome: Outcome) -> None:
    """Write a finished line's files and record it, or record why it failed."""
    tag = f"line {job.line.number} [{outcome.worker}]"
    run.progress.end(job, outcome.error is None)
    if outcome.error is not None:
        what = "the worker died" if outcome.lost else "failed"
        run.log(f"{tag}: FAILED ({what}): {outcome.error}")
        run.mark(job, FAILED, error=outcome.error, server=outcome.worker)
        return
    try:
        files = _write_outputs(run, job, outcome)
    except (OSError, ValueError) as err:  # an unsafe name or path (UnsafePathError), a full disk: this line only
        run.log(f"{tag}: FAILED: cannot write the outputs: {err}")
        run.mark(job, FAILED, error=f"cannot write the outputs: {err}", server=outcome.worker)
        return
    run.mark(job, DONE, files=files, error=None, server=outcome.worker)
    reused = f", shots 1-{outcome.reused_shots} reused" if outcome.reused_shots else ""
    run.log(f"{tag}: done in {outcome.seconds:.1f} s{reused}, {len(files)} files in {run.manifest.out_dir / job.name}")


def _write_outputs(run: _Run, job: LineJob, outcome: Outcome) -> list[str]:
    root = run.manifest.root
    folder = confined_folder(root, root / job.name)
    folder.mkdir(exist_ok=True)
    files = []
    for name, data in outcome.files.items():
        check_name(name, f"worker {outcome.worker} returned a file")
        if name.casefold() == JOB_FILE.casefold():
            raise ValueError(f"worker {outcome.worker} returned a file {JOB_FILE}, the name of the driver's own record")
        write_atomic(root, folder / name, data)
        files.append(f"{job.name}/{name}")
    record = {"line": job.line.number, "script": job.line.text, "worker": outcome.worker,
              "files": sorted(outcome.files), "recipe": asdict(run.recipe), "reused_shots": outcome.reused_shots,
              "seconds": round(outcome.seconds, 3), "summary": outcome.summary}
    write_atomic(root, folder / JOB_FILE, json_bytes(record))
    files.append(f"{job.name}/{JOB_FILE}")
    return files


class BatchProgress:
    """A bar for the whole batch and one per running line (tqdm, on stderr), when wanted."""

    def __init__(self, total: int, bars: bool | None):
        self.enabled = sys.stderr.isatty() if bars is None else bars
        self.lines: dict[str, object] = {}
        self.overall = None
        if self.enabled:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.overall = tqdm(total=total, desc="batch", unit="video", position=0)

    def start(self, job: LineJob) -> None:
        if self.enabled:
            self.lines[job.name] = self._tqdm(desc=f"line {job.line.number}", unit="block", leave=False,
                                              position=len(self.lines) + 1)

    def event(self, name: str, event: BlockDone | str) -> None:
        bar = self.lines.get(name)
        if bar is not None and isinstance(event, BlockDone):
            bar.total = event.total
            bar.n = event.index + 1
            bar.refresh()

    def end(self, job: LineJob, ok: bool) -> None:
        bar = self.lines.pop(job.name, None)
        if bar is not None:
            bar.close()
        if self.overall is not None:
            self.overall.update(1)

    def close(self) -> None:
        for bar in self.lines.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()


class LocalPool:
    """One worker in this process: the model loaded once, lines rendered one after another (the single-process
    ``batch``). A line is rendered inside :meth:`submit`; its blocks go to the driver's listener as they come."""

    size = 1

    def __init__(self, recipe: RenderRecipe, log: Log = print):
        from .headless import Renderer

        self.renderer = Renderer(recipe, log=log)
        self.name = f"local pid {os.getpid()}"
        self._events: list = [(self.name, "loaded")]
        self._done: dict[int, Outcome] = {}
        self._heard: Callable[[str, BlockDone], None] = lambda name, event: self._events.append((name, event))

    def listen(self, heard: Callable[[str, BlockDone], None]) -> None:
        """Report every block to ``heard`` as it is made (the driver waits inside :meth:`submit`)."""
        self._heard = heard

    def submit(self, worker: int, job: LineJob) -> object:
        handle = len(self._done) + 1
        self._done[handle] = render_line(self.renderer, self.name, job.name, job.line.text, self._heard)
        return handle

    def wait(self, handles: list, timeout: float) -> list[tuple[object, Outcome]]:
        return [(h, self._done.pop(h)) for h in handles if h in self._done]

    def events(self) -> list:
        out, self._events = self._events, []
        return out

    def model_loads(self) -> int:
        return 1

    def stop(self) -> None:
        pass


def render_line(renderer, worker: str, name: str, script: str,
                report: Callable[[str, BlockDone], None]) -> Outcome:
    """One line on one worker: its files, or the error that failed it (a failure inside the pipeline is the
    line's, not the worker's: it is returned, never raised, so no pool retries it)."""
    started = time.perf_counter()
    try:
        done = renderer.render(script, lambda event: report(name, event))
    except Exception as err:  # this line fails; the worker goes on with the next
        return Outcome(worker, error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)
    return Outcome(worker, done.files, done.summary, done.reused_shots, done.seconds)
