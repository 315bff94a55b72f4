"""The batch command against a tampered state file, a hostile or broken ComfyUI, signals and a machine
without torch (issue 14, classes 7 and 8). Everything goes through the command's public API (``run_queue``)
or its command line, against the fake ComfyUI in ``fake_comfy.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiohttp import web
from echo_forcing_tests.fake_comfy import FakeHosts, manifest, scene, write_inputs  # loaded by conftest

from echo_forcing.__main__ import main
from echo_forcing.batch.client import run_queue

POSIX = pytest.mark.skipif(os.name == "nt", reason="POSIX signals, modes and symbolic links")

# Short timeouts so that stalls and retries take a fraction of a second.
FAST = {"poll_interval": 0.05, "read_timeout": 0.3, "download_retries": 2, "retry_delay": 0.01}
JOB1, JOB2, JOB3 = "story_prompts-0001", "story_prompts-0002", "story_prompts-0003"
TEMP_GLOB = ".*.echo-tmp"
HOUR_AGO = time.time() - 3600


@pytest.fixture()
def hosts():
    fake = FakeHosts()
    yield fake
    fake.close()


def run(prompts: Path, workflow: Path, server, out: Path, **kwargs) -> tuple[dict[int, str], list[str]]:
    """Run the batch in this process; ({line: status}, log lines)."""
    log: list[str] = []
    results = asyncio.run(run_queue(prompts, workflow, [server.url], out, log=log.append, **{**FAST, **kwargs}))
    return {r.number: r.status for r in results}, log


def cli(prompts: Path, workflow: Path, server, out: Path, *extra: str) -> list[str]:
    return ["queue", str(prompts), "--server", server.url, "--workflow", str(workflow), "--out", str(out), *extra]


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(TEMP_GLOB))


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- class 7: paths from the state file


TAMPERED = {  # what a tampered queue-state.json lists for line 1; the victim is <tmp>/victim.txt
    "parent": "../victim.txt",
    "absolute": "{victim}",
    "through the line folder": f"{JOB1}/../../victim.txt",
    "symlink in the line folder": f"{JOB1}/link.txt",
    "backslashes": f"{JOB1}\\..\\..\\victim.txt",
    "another folder in out": "keep/victim.txt",
}


@POSIX
@pytest.mark.parametrize("status", ["failed", "done"])
@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_a_tampered_state_file_never_removes_a_file_outside_the_line_folder(hosts, tmp_path, kind, status):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    server, out = hosts.start(), tmp_path / "out"
    assert run(prompts, workflow, server, out)[0] == {1: "done"}
    victim = tmp_path / "victim.txt"
    if kind == "another folder in out":
        victim = out / "keep" / "victim.txt"
        victim.parent.mkdir()
    victim.write_text("keep me", encoding="utf-8")
    (out / JOB1 / "link.txt").symlink_to(victim)
    entry = TAMPERED[kind].format(victim=victim)
    state = json.loads((out / "queue-state.json").read_text(encoding="utf-8"))
    state["jobs"][JOB1]["files"].append(entry)
    state["jobs"][JOB1]["status"] = status
    (out / "queue-state.json").write_text(json.dumps(state), encoding="utf-8")

    statuses, log = run(prompts, workflow, server, out)
    assert statuses == {1: "done"}
    assert len(server.submitted) == 2  # a listed file outside its folder makes even a done line run again
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert (out / JOB1 / "link.txt").is_symlink()
    assert any(f"queue-state.json lists {entry!r}: " in text and "left alone" in text for text in log), log
    assert manifest(out)[JOB1]["files"] == [f"{JOB1}/{JOB1}_00001_.mp4", f"{JOB1}/{JOB1}_00001_.latent",
                                            f"{JOB1}/job.json"]


@POSIX
@pytest.mark.parametrize("target", ["outside", "dangling", "inside"])
def test_a_line_folder_that_leads_out_of_out_fails_that_line_only(hosts, tmp_path, target):
    prompts, workflow = write_inputs(tmp_path, [scene("one"), scene("two"), scene("three")])
    server, out = hosts.start(), tmp_path / "out"
    out.mkdir()
    elsewhere = {"outside": tmp_path / "elsewhere", "dangling": tmp_path / "missing", "inside": out / "mine"}[target]
    if target != "dangling":
        elsewhere.mkdir()
    (out / JOB2).symlink_to(elsewhere, target_is_directory=True)

    statuses, _ = run(prompts, workflow, server, out)
    if target == "inside":  # a link that stays inside the output folder is a folder like any other
        assert statuses == {1: "done", 2: "done", 3: "done"}
        assert (out / "mine" / f"{JOB2}_00001_.mp4").is_file()
        return
    assert statuses == {1: "done", 2: "failed", 3: "done"}
    error = manifest(out)[JOB2]["error"]
    assert f"leads to {elsewhere}, outside the output folder" in error and "refusing to write" in error
    assert scene("two") not in server.submitted  # refused before any work
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []


@POSIX
@pytest.mark.parametrize("case", ["state file out", "output file out", "output file in"])
def test_a_symlink_out_of_out_is_never_written_through(hosts, tmp_path, capsys, case):
    prompts, workflow = write_inputs(tmp_path, [scene("one"), scene("two")])
    server, out = hosts.start(), tmp_path / "out"
    (out / JOB1).mkdir(parents=True)
    victim = tmp_path / "victim.txt" if case.endswith("out") else out / "inside.txt"
    victim.write_text("keep me", encoding="utf-8")
    link = out / "queue-state.json" if case == "state file out" else out / JOB1 / f"{JOB1}_00001_.mp4"
    link.symlink_to(victim)

    code = main(cli(prompts, workflow, server, out))
    printed = capsys.readouterr()
    assert victim.read_text(encoding="utf-8") == "keep me"
    if case == "state file out":
        assert code == 2 and server.submitted == []
        assert f"is a symbolic link to {victim}, outside the output folder" in printed.err
        assert link.is_symlink()
    elif case == "output file out":
        assert code == 1
        jobs = manifest(out)
        assert jobs[JOB1]["status"] == "failed" and jobs[JOB2]["status"] == "done"
        assert f"is a symbolic link to {victim}, outside the output folder" in jobs[JOB1]["error"]
        assert link.is_symlink()
    else:  # a link to a file inside the output folder is replaced by the download; its target is untouched
        assert code == 0
        assert not link.is_symlink() and link.read_bytes() == server.files[(link.name, "echo/video", "output")]


# ---------------------------------------------------------------------------- class 7: names from the server

BAD_NAMES = {
    "NUL": ("clip\x00.mp4", "contains a NUL character"),
    "parent": ("../../escape.mp4", "contains a path separator"),
    "dot dot": ("..", "which is '..'"),
    "folder": ("sub/clip.mp4", "contains a path separator"),
    "absolute": ("/abs.mp4", "contains a path separator"),
    "long": ("x" * 300 + ".mp4", "is 304 bytes long (at most 255)"),
    "drive": ("C:clip.mp4", "starts with a drive letter"),
    "newline": ("clip\n.mp4", "contains the control character '\\n'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
def test_an_unsafe_output_name_fails_its_line_and_the_others_finish(hosts, tmp_path, kind):
    name, problem = BAD_NAMES[kind]
    prompts, workflow = write_inputs(tmp_path, [scene("one"), scene("BADNAME"), scene("three")])
    server, out = hosts.start(), tmp_path / "out"
    server.extra_outputs = lambda script: {"9": ["fine.png", name]} if "BADNAME" in script else {}
    before = tree(tmp_path)

    statuses, _ = run(prompts, workflow, server, out, retries=2)
    assert statuses == {1: "done", 2: "failed", 3: "done"}
    error = manifest(out)[JOB2]["error"]
    assert "ComfyUI's history (node 9, images) names an output file" in error and problem in error, error
    assert error.endswith("the line's outputs are not downloaded")
    assert server.submitted.count(scene("BADNAME")) == 1  # not retried: the same names would come back
    assert not (out / JOB2).exists()
    assert not [key for key in server.view_requests if key[0] in (name, "fine.png")]
    assert {path for path in tree(tmp_path) - before if path.split(os.sep)[0] != "out"} == set()  # nothing outside
    assert (out / JOB3 / f"{JOB3}_00001_.mp4").is_file()


# ------------------------------------------------------------------------------- class 7: hangs and timeouts


@pytest.mark.parametrize("word", ["SILENT", "CHATTER", "DROPWS"])
def test_a_completion_the_websocket_never_brings_is_found_in_the_prompts_history(hosts, tmp_path, word):
    prompts, workflow = write_inputs(tmp_path, [scene(word), scene("after")])
    server, out = hosts.start(), tmp_path / "out"
    start = time.monotonic()
    statuses, _ = run(prompts, workflow, server, out, timeout=8)
    assert statuses == {1: "done", 2: "done"}
    assert time.monotonic() - start < 5
    assert (out / JOB1 / f"{JOB1}_00001_.latent").read_bytes() == \
        server.files[(f"{JOB1}_00001_.latent", "echo/latent", "output")]
    ids = {job["prompt_id"] for job in manifest(out).values()}
    assert server.history_requests and set(server.history_requests) <= ids  # never the whole /history


@pytest.mark.parametrize("timeout", [0.4, 0.8, 1.2])
def test_a_prompt_that_never_ends_fails_after_the_line_timeout(hosts, tmp_path, timeout):
    prompts, workflow = write_inputs(tmp_path, [scene("HANG"), scene("after")])
    server, out = hosts.start(), tmp_path / "out"
    start = time.monotonic()
    statuses, _ = run(prompts, workflow, server, out, timeout=timeout)
    assert statuses == {1: "failed", 2: "done"}
    assert time.monotonic() - start < timeout + 3
    jobs = manifest(out)
    assert jobs[JOB1]["error"] == f"timed out after {timeout:g} s"
    assert server.deleted == [jobs[JOB1]["prompt_id"]] == server.interrupted  # removed from the server


def test_a_history_that_never_answers_is_bounded(hosts, tmp_path):
    prompts, workflow = write_inputs(tmp_path, [scene("SILENT")])
    server, out = hosts.start(), tmp_path / "out"
    server.stall_history = True
    start = time.monotonic()
    statuses, _ = run(prompts, workflow, server, out, timeout=30)
    assert statuses == {1: "failed"}
    assert time.monotonic() - start < 10
    error = manifest(out)[JOB1]["error"]
    assert error.startswith("lost the connection 3 times; last: GET /history/") and "Timeout" in error, error


# ------------------------------------------------------------------------------ class 7: stalled downloads


def _view_hook(server, mode: str, times: int, job: str = JOB1):
    """/view of the line's video misbehaves ``times`` times (``mode``), then answers normally."""
    seen = []

    async def hook(request, key, body):
        if key[0] != f"{job}_00001_.mp4" or len(seen) >= times:
            return None
        seen.append(key)
        if mode == "midway":  # the headers and half the body, then nothing
            resp = web.StreamResponse()
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await server.stall()
            return resp
        if mode == "no headers":
            await server.stall()
            return web.Response(body=body)
        return web.Response(status=503, text="busy")

    return hook


@pytest.mark.parametrize("mode", ["midway", "no headers", "HTTP 503"])
def test_a_stalled_download_is_tried_again(hosts, tmp_path, mode):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    server, out = hosts.start(), tmp_path / "out"
    server.view_hook = _view_hook(server, mode, times=1)
    statuses, log = run(prompts, workflow, server, out)
    assert statuses == {1: "done"}
    video = f"{JOB1}_00001_.mp4"
    assert (out / JOB1 / video).read_bytes() == server.files[(video, "echo/video", "output")]
    assert [key[0] for key in server.view_requests].count(video) == 2
    reason = "/view answered HTTP 503 busy" if mode == "HTTP 503" else "no data for 0.3 s"
    assert any(f"download of {video!r}" in text and f"{reason}; trying again in 0.01 s (1/2)" in text
               for text in log), log
    assert temps(tmp_path) == []


@pytest.mark.parametrize("mode", ["midway", "no headers", "HTTP 503"])
def test_a_download_that_keeps_failing_fails_its_line_with_the_reason(hosts, tmp_path, mode):
    prompts, workflow = write_inputs(tmp_path, [scene("one"), scene("two")])
    server, out = hosts.start(), tmp_path / "out"
    server.view_hook = _view_hook(server, mode, times=99)
    statuses, _ = run(prompts, workflow, server, out)
    assert statuses == {1: "failed", 2: "done"}
    video = f"{JOB1}_00001_.mp4"
    reason = "/view answered HTTP 503 busy" if mode == "HTTP 503" else "no data for 0.3 s"
    assert manifest(out)[JOB1]["error"] == (f"cannot download {video!r} (subfolder 'echo/video', type output): "
                                            f"{reason}; gave up after 3 tries (the file is still on the server)")
    assert [key[0] for key in server.view_requests].count(video) == 3
    assert temps(tmp_path) == [] and not (out / JOB1 / video).exists()


# -------------------------------------------------------------------------------- class 7: download size


def _big_file_hook(size: int, chunked: bool):
    async def hook(request, key, body):
        if key[0] != "big.bin":
            return None
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        if not chunked:
            return web.Response(body=data)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, size, 4096):
            await resp.write(data[start:start + 4096])
        await resp.write_eof()
        return resp

    return hook


@pytest.mark.parametrize(("size", "chunked", "error"), [
    (50_000, False, "'big.bin' (subfolder 'extra', type output) is 50000 bytes, more than the download limit of "
                    "20000 bytes (--max-download-gb); not downloaded"),
    (50_000, True, "'big.bin' (subfolder 'extra', type output) is larger than the download limit of 20000 bytes "
                   "(--max-download-gb); download stopped"),
    (20_001, True, "is larger than the download limit of 20000 bytes"),
    (20_000, True, None),
    (20_000, False, None),
])
def test_downloads_over_the_size_limit_are_refused(hosts, tmp_path, size, chunked, error):
    prompts, workflow = write_inputs(tmp_path, [scene("BIG"), scene("two")])
    server, out = hosts.start(), tmp_path / "out"
    server.extra_outputs = lambda script: {"9": ["big.bin"]} if "BIG" in script else {}
    server.view_hook = _big_file_hook(size, chunked)
    statuses, _ = run(prompts, workflow, server, out, max_download_bytes=20_000, retries=1)
    assert temps(tmp_path) == []
    if error is None:
        assert statuses == {1: "done", 2: "done"}
        assert (out / JOB1 / "big.bin").stat().st_size == size
        return
    assert statuses == {1: "failed", 2: "done"}
    assert error in manifest(out)[JOB1]["error"]
    assert not (out / JOB1 / "big.bin").exists()
    assert server.submitted.count(scene("BIG")) == 1  # not retried: the file would be as large again


def test_the_size_limit_option_of_the_command(hosts, tmp_path, capsys):
    prompts, workflow = write_inputs(tmp_path, [scene("BIG")])
    server, out = hosts.start(), tmp_path / "out"
    server.extra_outputs = lambda script: {"9": ["big.bin"]}
    server.view_hook = _big_file_hook(50_000, True)
    assert main(cli(prompts, workflow, server, out, "--max-download-gb", "0.00002")) == 1  # 21474 bytes
    assert "larger than the download limit of 21474 bytes" in capsys.readouterr().out
    assert main(cli(prompts, workflow, server, out, "--max-download-gb", "-1")) == 2
    assert main(cli(prompts, workflow, server, out, "--max-download-gb", "0")) == 0  # 0: no limit
    assert (out / JOB1 / "big.bin").stat().st_size == 50_000


# ------------------------------------------------------------------ class 8: names kept, temporary files, modes


def test_output_names_like_temporary_or_bookkeeping_files_are_downloaded_and_kept(hosts, tmp_path):
    names = {"a.partial": "a.partial", "b.job.json": "b.job.json", "job.json": "9-job.json",
             "queue-state.json": "queue-state.json", ".c.0123456789ab.echo-partial": "_.c.0123456789ab.echo-partial",
             "d.echo-tmp": "d.echo-tmp", ".e.mp4.partial": "_.e.mp4.partial",
             ".f.0123456789abcdef.echo-tmp": "_.f.0123456789abcdef.echo-tmp", "é" * 120 + ".mp4": "é" * 120 + ".mp4"}
    prompts, workflow = write_inputs(tmp_path, [scene("NAMES"), scene("two")])
    server, out = hosts.start(), tmp_path / "out"
    server.extra_outputs = lambda script: {"9": list(names)} if "NAMES" in script else {}
    assert run(prompts, workflow, server, out)[0] == {1: "done", 2: "done"}
    for name, local in names.items():
        assert (out / JOB1 / local).read_bytes() == b"file " + name.encode()
    record = json.loads((out / JOB1 / "job.json").read_text(encoding="utf-8"))
    assert {local: record["files"][local]["filename"] for local in names.values()} == \
        {local: name for name, local in names.items()}
    assert json.loads((out / "queue-state.json").read_text(encoding="utf-8"))["version"] == 1  # ours, not the server's

    for path in (out / JOB1).iterdir():
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert run(prompts, workflow, server, out)[0] == {1: "skipped", 2: "skipped"}
    for name, local in names.items():
        assert (out / JOB1 / local).read_bytes() == b"file " + name.encode()


@POSIX
def test_only_stale_temporary_files_of_the_packs_own_pattern_are_removed(hosts, tmp_path):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    server, out = hosts.start(), tmp_path / "out"
    line, other = out / JOB1, out / "not-a-line"
    line.mkdir(parents=True)
    other.mkdir()
    hex16 = "0123456789abcdef"
    stale = [out / f".queue-state.json.{hex16}.echo-tmp", line / f".{JOB1}_00001_.mp4.{hex16}.echo-tmp"]
    kept = [line / f".x.mp4.{'f' * 16}.echo-tmp",  # fresh: another run may be writing it
            *(line / name for name in (".clip.mp4.partial", "clip.mp4.partial", "x.partial", ".x.echo-tmp",
                                       f".x.{hex16.upper()}.echo-tmp", f".x.{hex16[:-1]}.echo-tmp",
                                       f".x.{hex16}.echo-tmp.bak", f"x.{hex16}.echo-tmp", f".x.{hex16}.echo-partial",
                                       f"..{hex16}.echo-tmp")),
            other / f".w.{hex16}.echo-tmp"]  # not a folder of this prompt file
    for path in stale + kept:
        path.write_bytes(b"data")
    for path in stale + kept[1:]:
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    link = out / f".y.{hex16}.echo-tmp"
    link.symlink_to(victim)
    os.utime(link, (HOUR_AGO, HOUR_AGO), follow_symlinks=False)
    folder = out / f".z.{hex16}.echo-tmp"
    folder.mkdir()
    os.utime(folder, (HOUR_AGO, HOUR_AGO))

    statuses, log = run(prompts, workflow, server, out)
    assert statuses == {1: "done"}
    assert [path for path in stale if path.exists()] == []
    assert [path for path in kept if not path.exists()] == []
    assert link.is_symlink() and victim.read_text(encoding="utf-8") == "keep me" and folder.is_dir()
    assert sum("a temporary file an interrupted run left" in text for text in log) == 2


@POSIX
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_users_umask(hosts, tmp_path, umask, mode):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    server, out = hosts.start(), tmp_path / "out"
    old = os.umask(umask)
    try:
        assert run(prompts, workflow, server, out)[0] == {1: "done"}
    finally:
        os.umask(old)
    written = [out / "queue-state.json", out / JOB1 / "job.json", out / JOB1 / f"{JOB1}_00001_.mp4",
               out / JOB1 / f"{JOB1}_00001_.latent"]
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written} == \
        {path.name: oct(mode) for path in written}


# --------------------------------------------------------------------------------- class 7: signals, exit codes


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the batch ended (code {proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _command(args: list[str], standalone: bool) -> list[str]:
    module = ["-m", "echo_forcing.cli.queue"] if standalone else ["-m", "echo_forcing", "queue"]
    return [sys.executable, *module, *args[1:]]


@POSIX
@pytest.mark.parametrize(("when", "signum", "code", "standalone"), [
    ("running", signal.SIGINT, 130, False),
    ("queued", signal.SIGINT, 130, True),
    ("downloading", signal.SIGINT, 130, True),
    ("running", signal.SIGTERM, 143, True),
])
def test_a_signal_cancels_the_prompt_on_the_server_and_saves_the_state(hosts, tmp_path, when, signum, code,
                                                                        standalone):
    lines = [scene("first"), scene("second HANG")] if when == "running" else [scene("first"), scene("second")]
    prompts, workflow = write_inputs(tmp_path, lines)
    out = tmp_path / "out"
    if when == "queued":
        server = hosts.start(hold=lambda: False)  # never starts a prompt
        target, ready = JOB1, (lambda: bool(server.pending))
    else:
        server = hosts.start()
        target = JOB2
        if when == "running":
            ready = server.hanging.is_set
        else:
            server.view_hook = _view_hook(server, "midway", times=99, job=JOB2)

            def ready() -> bool:
                return (out / JOB2).exists() and bool(temps(out / JOB2))
    proc = subprocess.Popen(_command(cli(prompts, workflow, server, out), standalone), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc, f"the second line was {when}")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stdout[-2000:] + stderr[-2000:]
    assert "interrupted: the running prompts were cancelled on their servers and the state is saved in" in stderr
    jobs = manifest(out)
    assert jobs[target]["status"] == "pending"
    assert jobs[target]["error"] == "stopped before it finished (interrupted)"
    assert jobs[target]["prompt_id"] in server.deleted and jobs[target]["prompt_id"] in server.interrupted
    if when != "queued":
        assert jobs[JOB1]["status"] == "done"
    assert temps(out) == []


@POSIX
def test_a_temporary_file_left_by_kill_9_is_removed_by_a_later_run(hosts, tmp_path):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    server, out = hosts.start(), tmp_path / "out"
    server.view_hook = _view_hook(server, "midway", times=1)
    proc = subprocess.Popen(_command(cli(prompts, workflow, server, out), True), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (out / JOB1).exists() and bool(temps(out / JOB1)), proc, "the download started")
    finally:
        proc.kill()
        proc.communicate()
    [left] = temps(out / JOB1)
    assert left.name.startswith(f".{JOB1}_00001_.mp4.")

    assert run(prompts, workflow, server, out)[0] == {1: "done"}  # the line was unfinished: it runs again
    assert left.exists()  # written a moment ago: it could belong to a live run
    os.utime(left, (HOUR_AGO, HOUR_AGO))
    assert run(prompts, workflow, server, out)[0] == {1: "skipped"}
    assert not left.exists() and temps(out) == []


# -------------------------------------------------------------------------------- class 7: no torch needed


@pytest.fixture()
def no_torch(tmp_path) -> dict[str, str]:
    """An environment in which ``import torch`` raises ImportError (a fake package first on the path)."""
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n", encoding="utf-8")
    path = [str(blocker.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def test_the_batch_command_runs_without_torch(hosts, tmp_path, no_torch):
    check = textwrap.dedent("""
        try:
            import torch
        except ImportError as err:
            assert "blocked" in str(err), err
        else:
            raise SystemExit("torch is importable")
        import echo_forcing.batch.client
        from echo_forcing.batch import run_queue
        from echo_forcing.pipeline import SceneScriptError, parse_scene_script
        parse_scene_script("a fox [5s] | a lake [5s#]")
        try:
            from echo_forcing.pipeline import rollout
        except ImportError as err:
            assert "blocked" in str(err), err
        else:
            raise SystemExit("the rollout imported without torch")
        print("imports ok")
    """)
    done = subprocess.run([sys.executable, "-c", check], env=no_torch, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "imports ok" in done.stdout, done.stderr[-3000:]

    helped = subprocess.run([sys.executable, "-m", "echo_forcing.cli.queue", "--help"], env=no_torch,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--max-download-gb" in helped.stdout, helped.stderr[-3000:]

    prompts, workflow = write_inputs(tmp_path, [scene("one"), scene("two")])
    server, out = hosts.start(), tmp_path / "out"
    batch = subprocess.run(_command(cli(prompts, workflow, server, out), True), env=no_torch, capture_output=True,
                           text=True, timeout=60)
    assert batch.returncode == 0, batch.stdout[-3000:] + batch.stderr[-3000:]
    assert "2 done, 0 skipped (done earlier), 0 failed" in batch.stdout
    assert (out / JOB2 / f"{JOB2}_00001_.mp4").read_bytes() == \
        server.files[(f"{JOB2}_00001_.mp4", "echo/video", "output")]


def test_python_m_echo_forcing_queue_runs_without_torch(no_torch):
    helped = subprocess.run([sys.executable, "-m", "echo_forcing", "queue", "--help"], env=no_torch,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--max-download-gb" in helped.stdout, helped.stderr[-3000:]


def test_the_pipeline_package_resolves_every_exported_name_lazily():
    check = textwrap.dedent("""
        import importlib, sys, types
        import echo_forcing.pipeline as pipeline
        assert "torch" not in sys.modules, "importing the package imported torch"
        assert "echo_forcing.pipeline.rollout" not in sys.modules
        import echo_forcing.pipeline.scene_list  # imports the submodule `rollout` before the name is asked for
        from echo_forcing.pipeline import rollout
        assert isinstance(rollout, types.FunctionType), rollout
        assert sorted(pipeline.__all__) == sorted(pipeline._EXPORTS)
        for name in pipeline.__all__:
            module = importlib.import_module("echo_forcing.pipeline." + pipeline._EXPORTS[name])
            assert getattr(pipeline, name) is getattr(module, name), name
        assert set(pipeline.__all__) <= set(dir(pipeline))
        try:
            pipeline.no_such_name
        except AttributeError:
            pass
        else:
            raise SystemExit("no AttributeError")
        print("exports ok")
    """)
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "exports ok" in done.stdout, done.stderr[-3000:]
