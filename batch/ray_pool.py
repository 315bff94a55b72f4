"""The ``batch`` workers on a Ray cluster (``--ray [ADDRESS]``; Ray is the optional extra ``pip install -e '.[ray]'``).

One Ray actor per worker, each holding one ``batch.headless.Renderer``: the model is loaded once per worker (and
once more after a restart), never once per line, and the worker's shot cache serves every line it gets. A line is
one actor call: an autoregressive rollout is sequential, so one video never spans GPUs.

* **Resources.** On a cluster with GPUs each actor asks for ``num_gpus=1`` (Ray sets its ``CUDA_VISIBLE_DEVICES``;
  the renderer computes on ``cuda``), else for ``num_cpus`` = the recipe's ``threads`` (default 1), and torch
  uses that many threads. ``workers`` defaults to the cluster's GPUs, or 1
  on a CPU cluster.
* **Faults.** Actors restart up to ``retries`` times and a call interrupted by a worker's death is retried as
  often (Ray's ``max_restarts`` / ``max_task_retries``). After that the call fails with the actor's error, the
  line fails, and a fresh actor takes the worker's place. A line that fails inside the pipeline is returned as a
  failure (``render_batch.render_line``), so Ray never retries it.
* **Progress** travels from the actors to a small named actor the driver empties (block by block, and each
  model load).
* **Code and files on the nodes.** Every node needs the pack installed (the same version) and the model files at
  the same paths; the driver writes every output (docs/SCALING.md).

Ray is imported only here, and only when ``--ray`` is given.
"""

from __future__ import annotations

import os
import platform
import uuid
from dataclasses import asdict
from pathlib import Path

from .headless import BlockDone, RenderRecipe
from .jobs import BatchUsageError
from .render_batch import LineJob, Log, Outcome, render_line

DEFAULT_RETRIES = 2
LOCAL = "local"
"""``--ray`` without an address: a Ray instance started on this machine for the batch (stopped after it)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise BatchUsageError("--ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.40')") from None
    return ray


def connect(address: str = LOCAL, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local instance (:data:`LOCAL`; ``num_cpus`` and ``num_gpus``
    set its resources, default what the machine has). A local instance's workers find this pack where this
    process found it."""
    ray = import_ray()
    local = address == LOCAL
    env = {}
    if local:
        here = str(Path(__file__).resolve().parents[2])  # the folder the pack's package is found in
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}}
    try:
        ray.init(address=None if local else address, num_cpus=num_cpus if local else None,
                 num_gpus=num_gpus if local else None, runtime_env=env or None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BatchUsageError(f"cannot reach the Ray cluster at {address}: {err}") from None


class _Events:
    """The actor the workers send their progress to (named, so a restarted worker finds it again)."""

    def __init__(self):
        self.items: list = []

    def put(self, item) -> None:
        self.items.append(item)

    def take(self) -> list:
        items, self.items = self.items, []
        return items


class _Worker:
    """The actor: a renderer (the model loaded once) that renders lines one at a time. Its arguments are plain
    values (the recipe, the events actor's name), so Ray can restart it from them at any time."""

    def __init__(self, recipe: dict, events: str, slot: int):
        import ray

        from .headless import Renderer

        self.events = ray.get_actor(events)
        self.name = f"worker {slot} ({platform.node()} pid {os.getpid()})"
        self.renderer = Renderer(RenderRecipe(**recipe), log=lambda text: None)
        self.events.put.remote((self.name, "loaded"))

    def ready(self) -> str:
        return self.name

    def render(self, name: str, script: str) -> Outcome:
        return render_line(self.renderer, self.name, name, script,
                           lambda line, event: self.events.put.remote((line, event)))


def _cause(err: Exception) -> str:
    """The Python error inside a Ray error (its last line that names an exception), else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if ("Error:" in line or "Exception:" in line) and not line.startswith("ray")]
    return (named[-1] if named else lines[0] if lines else type(err).__name__)[:500]


class RayPool:
    """``size`` actors on the Ray cluster at ``address`` (:data:`LOCAL`: a local instance started here)."""

    def __init__(self, recipe: RenderRecipe, address: str = LOCAL, workers: int | None = None,
                 retries: int = DEFAULT_RETRIES, log: Log = print, num_cpus: int | None = None):
        ray = self.ray = import_ray()
        if retries < 0:
            raise BatchUsageError(f"--retries must be 0 or more, got {retries}")
        self.started_here = not ray.is_initialized()
        if self.started_here:
            connect(address, num_cpus)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.size = workers if workers is not None else max(1, gpus)
        if self.size < 1:
            raise BatchUsageError(f"--workers must be 1 or more, got {self.size}")
        cpus = recipe.threads or 1
        self.options = {"num_gpus": 1} if gpus else {"num_cpus": cpus}
        log(f"Ray: {int(resources.get('CPU', 0))} CPUs, {gpus} GPUs; {self.size} workers with "
            f"{'1 GPU' if gpus else f'{cpus} CPU(s)'} each, up to {retries} restarts")
        recipe_data = asdict(recipe)
        if gpus and recipe.device is None:
            recipe_data["device"] = "cuda"
        if recipe.threads is None and not gpus:
            recipe_data["threads"] = cpus  # torch's threads as Ray's share of the CPUs
        self.recipe, self.retries = recipe_data, retries
        self.events_name = f"echo_forcing_batch_events_{uuid.uuid4().hex}"
        self.events_actor = ray.remote(_Events).options(name=self.events_name, num_cpus=0).remote()
        self.actor_class = ray.remote(max_restarts=retries, max_task_retries=retries)(_Worker)
        self.actors = [self._actor(slot) for slot in range(self.size)]
        self._loads = 0
        self._calls: dict = {}
        try:  # a model that cannot load (a path missing on a node, a bad file) stops the batch before any line
            ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayError as err:
            self.stop()
            raise BatchUsageError(f"the Ray workers could not start: {_cause(err)}") from None

    def _actor(self, slot: int):
        return self.actor_class.options(**self.options).remote(self.recipe, self.events_name, slot)

    def submit(self, worker: int, job: LineJob) -> object:
        ref = self.actors[worker].render.remote(job.name, job.line.text)
        self._calls[ref] = worker
        return ref

    def wait(self, handles: list, timeout: float) -> list[tuple[object, Outcome]]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout)
        done = []
        for ref in ready:
            worker = self._calls.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:  # the actor died more often than it may restart
                outcome = Outcome(f"worker {worker}", lost=True,
                                  error=f"the worker died and was restarted {self.retries} time(s), the line with "
                                        f"it: {type(err).__name__}: {_cause(err)[:300]}")
                self.ray.kill(self.actors[worker], no_restart=True)
                self.actors[worker] = self._actor(worker)  # a fresh worker for the lines still to come
            done.append((ref, outcome))
        return done

    def events(self) -> list[tuple[str, BlockDone | str]]:
        out = self.ray.get(self.events_actor.take.remote())
        self._loads += sum(1 for _, event in out if event == "loaded")
        return out

    def model_loads(self) -> int:
        self.events()  # count loads that arrived since the last look
        return self._loads

    def stop(self) -> None:
        for actor in [*self.actors, self.events_actor]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        if self.started_here:
            self.ray.shutdown()
