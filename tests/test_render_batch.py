"""``python -m echo_forcing batch`` in one process: the ``queue`` contract (manifest, folders, job.json, exit codes,
resume), prefix reuse between lines, a line that fails alone, Ctrl-C and SIGTERM, and the dispatch rules the Ray
pool uses (tests/test_ray_batch.py runs the same batch on Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from echo_forcing.__main__ import main
from echo_forcing.batch.headless import OUTPUT_FILES, RenderRecipe
from echo_forcing.batch.jobs import DONE, FAILED, JOB_FILE, MANIFEST_NAME, PENDING, BatchInterrupted, PromptLine
from echo_forcing.batch.render_batch import Dispatch, LineJob, LocalPool, Outcome, group_of, run_batch

PROMPTS = ("a red fox trots through snow [1s] | the fox sleeps by a fire [1s#] | the fox in the snow again [1s]\n"
           "# a comment\n"
           "a red fox trots through snow [1s] | a grey wolf howls at the moon [1s]\n"
           "a lighthouse at dusk [1s] | waves crash below [1s]\n"
           "bad line [\n"
           "a cat on a roof [1s] | a cat asleep [1s]; same | same\n")
"""Lines 1 and 3 share their first shot; line 6 parses but its plan refuses it (a label used twice); line 5 does
not parse."""
SIZE = ["--width", "64", "--height", "48", "--no-bars"]
RECIPE = RenderRecipe(width=64, height=48)


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "set.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def state(out):
    return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))["jobs"]


def test_every_line_gets_the_render_files_a_manifest_and_the_queue_exit_codes(prompts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--out", str(out), *SIZE]) == 1  # a line failed
    jobs = state(out)
    assert {n: j["status"] for n, j in jobs.items()} == {"set-0001": DONE, "set-0003": DONE, "set-0004": DONE,
                                                         "set-0005": FAILED, "set-0006": FAILED}
    assert "invalid scene script" in jobs["set-0005"]["error"]
    assert "label 'same' is already used" in jobs["set-0006"]["error"]  # failed in the worker, alone
    for name in ("set-0001", "set-0003", "set-0004"):
        assert sorted(jobs[name]["files"]) == sorted(f"{name}/{f}" for f in (*OUTPUT_FILES, JOB_FILE))
    record = json.loads((out / "set-0003" / JOB_FILE).read_text())
    assert record["line"] == 3 and record["reused_shots"] == 1  # after line 1's first shot, on the same worker
    assert record["recipe"]["width"] == 64
    text = capsys.readouterr().out
    assert "model loads: 1 (workers: 1)" in text and "3 done, 0 skipped (done earlier), 2 failed" in text

    # the same video as `render` gives, byte for byte
    script = PROMPTS.splitlines()[2]
    assert main(["render", script, "--out", str(tmp_path / "one"), "--width", "64", "--height", "48"]) == 0
    assert (tmp_path / "one" / "latents.safetensors").read_bytes() == (out / "set-0003" /
                                                                       "latents.safetensors").read_bytes()

    # a rerun skips what is done; a changed line and the failed ones run again
    before = (out / "set-0004" / "latents.safetensors").stat().st_mtime_ns
    prompts.write_text(PROMPTS.replace("waves crash below", "gulls circle above"), encoding="utf-8")
    assert main(["batch", str(prompts), "--out", str(out), *SIZE]) == 1
    text = capsys.readouterr().out
    assert "5 lines; 2 to run, 2 done earlier, 1 invalid" in text
    assert (out / "set-0004" / "latents.safetensors").stat().st_mtime_ns != before
    assert state(out)["set-0004"]["status"] == DONE
    # another recipe is another video: everything runs again
    assert main(["batch", str(prompts), "--out", str(out), *SIZE, "--seed", "5"]) == 1
    assert "4 to run, 0 done earlier" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"), *SIZE]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a fox [1s]\n")
    assert main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--workers", "2", *SIZE]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--threads", "0", *SIZE]) == 2
    assert "threads must be 1 or more" in capsys.readouterr().err
    missing = tmp_path / "missing.safetensors"
    assert main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--checkpoint", str(missing),
                 *SIZE]) == 2
    assert "the workers could not start: checkpoint file not found" in capsys.readouterr().err


def test_ctrl_c_records_the_running_line_and_the_rerun_goes_on(prompts, tmp_path):
    out = tmp_path / "out"

    class CtrlCDuringLine3(LocalPool):  # Ctrl-C arrives while line 3 renders
        def submit(self, worker, job):
            if job.name == "set-0003":
                raise KeyboardInterrupt
            return super().submit(worker, job)

    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(prompts, out, RECIPE, lambda: CtrlCDuringLine3(RECIPE, log=lambda text: None),
                  log=lambda text: None, bars=False)
    assert stopped.value.exit_code == 130
    jobs = state(out)
    assert jobs["set-0001"]["status"] == DONE
    assert jobs["set-0003"]["status"] == PENDING and "interrupted" in jobs["set-0003"]["error"]
    results = run_batch(prompts, out, RECIPE, lambda: LocalPool(RECIPE, log=lambda text: None),
                        log=lambda text: None, bars=False)
    assert [r.status for r in results] == ["skipped", DONE, DONE, FAILED, FAILED]
    assert load_file(str(out / "set-0003" / "latents.safetensors"))["samples"].shape[1] == 16


def _job(number: int, script: str) -> LineJob:
    return LineJob(f"s-{number:04d}", PromptLine(number, script), "new", group_of(script))


def test_lines_sharing_a_first_shot_stay_with_one_worker():
    a1, a2, a3 = (_job(i, f"a fox [1s] | shot {i} [1s]") for i in (1, 2, 3))
    b1, c1 = _job(4, "a wolf [1s]"), _job(5, "a cat [1s] | more [1s]")
    assert group_of("a fox [1s] | x [2s]") == group_of("a fox [1s]") != group_of("a fox [2s]")
    dispatch = Dispatch([a1, b1, a2, a3, c1])
    assert dispatch.next_for(0) is a1 and dispatch.next_for(1) is b1 and dispatch.next_for(2) is c1
    # worker 1 has no group left: it helps with group a, leaving worker 0 the next line of it ...
    assert dispatch.next_for(1) is a3
    # ... but never takes the lone line worker 0 will start after the shots it made
    assert dispatch.next_for(1) is None and dispatch.next_for(0) is a2 and len(dispatch) == 0


def test_sigterm_stops_the_running_line_saves_the_state_and_exits_143(tmp_path):
    prompts = tmp_path / "long.txt"
    prompts.write_text("a long walk through the snow [60s] | and back home [60s]\n", encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "echo_forcing", "batch", str(prompts), "--out", str(out), *SIZE]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / MANIFEST_NAME).is_file() and state(out).get("long-0001", {}).get("status") == PENDING:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "the state is saved" in err
    record = state(out)["long-0001"]
    assert record["status"] == PENDING and "interrupted" in record["error"]


class _HostilePool:
    """A pool whose worker returns file names that must never be written as they are."""

    size = 1

    def __init__(self, names):
        self.names, self.done = list(names), {}

    def submit(self, worker, job):
        self.done[job.name] = Outcome("hostile worker", files={self.names.pop(0): b"x"}, summary="")
        return job.name

    def wait(self, handles, timeout):
        return [(h, self.done.pop(h)) for h in handles if h in self.done]

    def events(self):
        return []

    def model_loads(self):
        return 1

    def stop(self):
        pass


def test_a_file_name_a_worker_returns_is_checked_and_fails_its_line_alone(tmp_path):
    prompts = tmp_path / "h.txt"
    prompts.write_text("a [1s]\nb [1s]\nc [1s]\nd [1s]\n", encoding="utf-8")
    names = ["../escape.bin", "ok.bin", "/abs.bin", JOB_FILE]
    results = run_batch(prompts, tmp_path / "out", RECIPE, lambda: _HostilePool(names), log=lambda t: None,
                        bars=False)
    assert [r.status for r in results] == [FAILED, DONE, FAILED, FAILED]
    assert "cannot write the outputs" in state(tmp_path / "out")["h-0001"]["error"]
    assert not (tmp_path / "escape.bin").exists() and not list(tmp_path.glob("**/abs.bin"))
    assert (tmp_path / "out" / "h-0002" / "ok.bin").read_bytes() == b"x"
    assert "the name of the driver's own record" in state(tmp_path / "out")["h-0004"]["error"]
