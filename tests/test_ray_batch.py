"""``batch --ray`` on a local Ray instance (2 CPUs, the tiny model): the same files as the single-process batch, bit
for bit; one model load per worker; prefix reuse on one worker; a killed worker restarted and its line retried to
the same result; a line that fails on its own not retried; a line whose worker dies every time failing after the
retries while the others finish; Ctrl-C, and a rerun that finishes only what was left. Skipped without Ray
(pip install -e '.[ray]')."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' runs these tests")

from echo_forcing.batch.headless import BlockDone, RenderRecipe  # noqa: E402
from echo_forcing.batch.jobs import DONE, FAILED, MANIFEST_NAME, PENDING, BatchInterrupted, BatchUsageError  # noqa: E402
from echo_forcing.batch.ray_pool import RayPool, connect  # noqa: E402
from echo_forcing.batch.render_batch import LocalPool, run_batch  # noqa: E402

PROMPTS = ("a red fox trots through snow [1s] | the fox sleeps by a fire [1s#] | the fox in the snow again [1s]\n"
           "a red fox trots through snow [1s] | a grey wolf howls at the moon [1s]\n"
           "a lighthouse at dusk [30s] | waves crash below [30s]\n"
           "a cat on a roof [1s] | a cat asleep [1s]; same | same\n"
           "a boat in a harbour [30s] | gulls over the water [30s]\n")
"""Lines 1 and 2 share their first shot; line 4 fails in its worker (a label used twice); lines 3 and 5 are long
enough (80 blocks, about 1.5 s on 2 cores) for a kill at their first block to land while they run."""
RECIPE = RenderRecipe(width=64, height=48, threads=1)
"""One torch thread everywhere, as each Ray CPU worker gets: the same bits need the same threads."""


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process batch of the same prompts: the reference."""
    root = tmp_path_factory.mktemp("single")
    prompts = root / "set.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    threads = torch.get_num_threads()
    try:
        run_batch(prompts, root / "out", RECIPE, lambda: LocalPool(RECIPE, log=lambda text: None),
                  log=lambda text: None, bars=False)
    finally:
        torch.set_num_threads(threads)  # the renderer set 1 for this process; the other tests keep theirs
    return root / "out"


def _prompts(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def _state(out):
    return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))["jobs"]


HOW_MADE = {"seconds_taken", "seconds_saved", "generation_seconds", "video_fps", "reuse", "state"}
"""Report entries about how the video was made (timings, shots reused from the worker's cache), not about it."""


def _same_files(out, reference, names):
    """The same video bytes, and the same report but for how it was made."""
    for name in names:
        video = "latents.safetensors"
        assert (out / name / video).read_bytes() == (reference / name / video).read_bytes(), name
        ours, theirs = (_untimed(json.loads((o / name / "report.json").read_text())) for o in (out, reference))
        assert ours == theirs, name


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in HOW_MADE}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def _run(tmp_path, retries=2, on_event=None):
    lines = []
    results = run_batch(_prompts(tmp_path), tmp_path / "out", RECIPE,
                        lambda: RayPool(RECIPE, workers=2, retries=retries, log=lines.append), log=lines.append,
                        bars=False, on_event=on_event)
    return results, lines


def test_ray_gives_the_single_process_files_with_one_model_load_per_worker(cluster, single, tmp_path):
    results, lines = _run(tmp_path)
    assert [r.status for r in results] == [DONE, DONE, DONE, FAILED, DONE]
    out = tmp_path / "out"
    _same_files(out, single, ["set-0001", "set-0002", "set-0003", "set-0005"])
    state = _state(out)
    assert "label 'same' is already used" in state["set-0004"]["error"] and state["set-0004"]["attempts"] == 1
    assert "model loads: 2 (workers: 2)" in lines
    first, second = (json.loads((out / n / "job.json").read_text()) for n in ("set-0001", "set-0002"))
    assert first["worker"] == second["worker"] and second["reused_shots"] == 1  # the shared first shot, once


def test_a_killed_worker_is_restarted_and_its_line_finishes_the_same(cluster, single, tmp_path):
    killed, blocks, totals = [], [], []

    def kill_once(name, event):
        if name == "set-0003" and isinstance(event, BlockDone):
            blocks.append(event.index)
            totals.append(event.total)
            if not killed:
                killed.append(event.pid)
                os.kill(event.pid, signal.SIGKILL)

    results, lines = _run(tmp_path, on_event=kill_once)
    assert killed and [r.status for r in results] == [DONE, DONE, DONE, FAILED, DONE]
    assert blocks.count(0) == 2 and blocks[-1] == totals[-1] - 1  # killed while it ran, then run again whole
    _same_files(tmp_path / "out", single, ["set-0003"])
    assert "model loads: 3 (workers: 2)" in lines  # the restarted worker loaded the model again


def test_a_line_whose_worker_dies_every_time_fails_after_the_retries_and_the_rest_finish(cluster, tmp_path):
    deaths = []

    def kill_always(name, event):
        if name == "set-0005" and isinstance(event, BlockDone) and event.pid not in deaths:
            deaths.append(event.pid)
            os.kill(event.pid, signal.SIGKILL)

    results, _ = _run(tmp_path, retries=1, on_event=kill_always)
    assert [r.status for r in results] == [DONE, DONE, DONE, FAILED, FAILED]
    assert len(deaths) == 2  # the first try and one retry, never more
    assert "the worker died and was restarted 1 time(s)" in _state(tmp_path / "out")["set-0005"]["error"]


def test_ctrl_c_stops_the_workers_and_a_rerun_finishes_only_what_was_left(cluster, single, tmp_path):
    def interrupt(name, event):
        if name == "set-0003" and isinstance(event, BlockDone):
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as stopped:
        _run(tmp_path, on_event=interrupt)
    assert stopped.value.exit_code == 130
    state = _state(tmp_path / "out")
    assert state["set-0003"]["status"] == PENDING and "interrupted" in state["set-0003"]["error"]
    done_before = {n for n, j in state.items() if j["status"] == DONE}
    results, _ = _run(tmp_path)
    assert [r.status for r in results][2] == DONE and "set-0003" not in done_before
    assert {r.name for r in results if r.status == "skipped"} == done_before
    _same_files(tmp_path / "out", single, ["set-0001", "set-0002", "set-0003", "set-0005"])


def test_on_a_cluster_with_gpus_each_worker_asks_for_one_and_there_is_one_worker_per_gpu(single, tmp_path):
    """A cluster that declares 2 GPUs (Ray schedules by declared resources; this machine has none, so the recipe
    computes on the CPU): 2 workers by default, each with num_gpus=1, and the same files."""
    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2, num_gpus=2)
    try:
        recipe = RenderRecipe(width=64, height=48, threads=1, device="cpu")
        lines = []
        pool = {}

        def make():
            pool["it"] = RayPool(recipe, log=lines.append)
            return pool["it"]

        results = run_batch(_prompts(tmp_path), tmp_path / "out", recipe, make, log=lines.append, bars=False)
    finally:
        ray.shutdown()
    assert pool["it"].size == 2 and pool["it"].options == {"num_gpus": 1}
    assert any("2 GPUs; 2 workers with 1 GPU each" in line for line in lines), lines
    assert [r.status for r in results] == [DONE, DONE, DONE, FAILED, DONE]
    _same_files(tmp_path / "out", single, ["set-0001", "set-0002", "set-0003", "set-0005"])


def test_workers_that_cannot_load_the_model_stop_the_batch_before_any_line(cluster, tmp_path):
    recipe = RenderRecipe(width=64, height=48, threads=1, checkpoint=str(tmp_path / "missing.safetensors"))
    with pytest.raises(BatchUsageError, match=r"the Ray workers could not start: .*checkpoint file not found"):
        run_batch(_prompts(tmp_path), tmp_path / "out", recipe, lambda: RayPool(recipe, workers=2, log=print),
                  log=print, bars=False)
    records = _state(tmp_path / "out") if (tmp_path / "out" / MANIFEST_NAME).exists() else {}
    assert not [n for n, j in records.items() if j["status"] != FAILED]  # no line was started
