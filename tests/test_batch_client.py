"""The batch client against an in-process fake ComfyUI (``fake_comfy.py``: aiohttp.web on 127.0.0.1, random
ports); words in a prompt line choose what the fake does (CRASH, INVALID, HANG, FLAKY, SILENT, VANISH, DIE).
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from echo_forcing_tests.fake_comfy import FakeHosts, manifest, scene, write_inputs

from echo_forcing.__main__ import main
from echo_forcing.batch.client import run_queue


@pytest.fixture()
def hosts():
    fake = FakeHosts()
    yield fake
    fake.close()


def test_two_servers_share_the_lines_and_outputs_arrive_intact(hosts, tmp_path, capsys):
    lines = [scene(f"shot {i}") for i in range(1, 5)]
    prompts, workflow = write_inputs(tmp_path, ["# a comment", lines[0], "", *lines[1:]])
    fast = hosts.start()
    slow = hosts.start(hold=lambda: len(fast.history) >= 3)  # busy until the fast server did three lines
    out = tmp_path / "out"
    code = main(["queue", str(prompts), "--server", slow.url, "--server", fast.url.replace("http://", ""),
                 "--workflow", str(workflow), "--out", str(out), "--client-id", "cafe01"])
    assert code == 0
    # File line numbers: 2, 4, 5, 6. The slow server took the first line and kept it; the free one took the rest.
    assert slow.executed == [lines[0]]
    assert fast.executed == lines[1:]
    assert slow.client_ids == ["cafe01"] and fast.client_ids == ["cafe01"]
    assert sorted(fast.prefixes) == ["echo/latent/story_prompts-0004", "echo/latent/story_prompts-0005",
                                     "echo/latent/story_prompts-0006", "echo/video/story_prompts-0004",
                                     "echo/video/story_prompts-0005", "echo/video/story_prompts-0006"]
    jobs = manifest(out)
    assert sorted(jobs) == ["story_prompts-0002", "story_prompts-0004", "story_prompts-0005", "story_prompts-0006"]
    assert {name: (job["status"], job["server"]) for name, job in jobs.items()} == {
        "story_prompts-0002": ("done", slow.url), "story_prompts-0004": ("done", fast.url),
        "story_prompts-0005": ("done", fast.url), "story_prompts-0006": ("done", fast.url)}
    for number, line, server in ((2, lines[0], slow), (5, lines[2], fast)):
        name = f"story_prompts-{number:04d}"
        assert jobs[name]["files"] == [f"{name}/{name}_00001_.mp4", f"{name}/{name}_00001_.latent",
                                       f"{name}/job.json"]
        for ext, subfolder in (("mp4", "echo/video"), ("latent", "echo/latent")):
            local = out / name / f"{name}_00001_.{ext}"
            assert local.read_bytes() == server.files[(f"{name}_00001_.{ext}", subfolder, "output")]
        record = json.loads((out / name / "job.json").read_text(encoding="utf-8"))
        assert record["script"] == line and record["line"] == number and record["server"] == server.url
        assert record["prompt_id"] == jobs[name]["prompt_id"]
        assert record["outputs"]["3"] == {"text": [f"report for {line}"]}
    assert not list(out.rglob("*.partial"))
    printed = capsys.readouterr().out
    assert "4 done, 0 skipped (done earlier), 0 failed" in printed


def test_failures_carry_comfyui_error_text_and_other_lines_still_run(hosts, tmp_path, capsys):
    lines = [scene("ok one"), scene("CRASH"), scene("INVALID"), "a scene without any duration tag",
             scene("HANG"), scene("ok two")]
    prompts, workflow = write_inputs(tmp_path, lines)
    server = hosts.start()
    out = tmp_path / "out"

    async def interrupt_the_hang():  # someone presses Cancel in ComfyUI's own UI
        task = asyncio.ensure_future(run_queue(prompts, workflow, [server.url], out, log=lambda text: None))
        while not server.hanging.is_set():
            await asyncio.sleep(0.005)
        hosts.loop.call_soon_threadsafe(server.interrupt.set)
        return await task

    results = asyncio.run(interrupt_the_hang())
    assert [(r.number, r.status) for r in results] == [(1, "done"), (2, "failed"), (3, "failed"), (4, "failed"),
                                                       (5, "failed"), (6, "done")]
    jobs = manifest(out)
    assert jobs["story_prompts-0002"]["error"] == ("node 3 'Autoregressive Sampler' (EchoForcingSampler): "
                                                   "RuntimeError: sampler: simulated failure at block 1")
    assert jobs["story_prompts-0003"]["error"] == ("Prompt outputs failed validation: node 3 'Autoregressive "
                                                   "Sampler' (EchoForcingSampler): Value 99 bigger than max of 21: "
                                                   "frames_per_block")
    assert jobs["story_prompts-0004"]["error"].startswith("invalid scene script: scene 1: missing duration")
    assert jobs["story_prompts-0005"]["error"] == "interrupted at node 3 'Autoregressive Sampler' (EchoForcingSampler)"
    assert jobs["story_prompts-0004"]["server"] is None
    assert lines[3] not in server.submitted  # checked before anything was sent
    assert server.submitted == [lines[0], lines[1], lines[2], lines[4], lines[5]]
    assert (out / "story_prompts-0006" / "story_prompts-0006_00001_.mp4").is_file()
    assert not (out / "story_prompts-0002").exists()

    # The command line prints the same errors and exits with 1; failed lines run again, done ones do not.
    server.hang = False
    code = main(["queue", str(prompts), "--server", server.url, "--workflow", str(workflow), "--out", str(out)])
    assert code == 1
    printed = capsys.readouterr().out
    assert "RuntimeError: sampler: simulated failure at block 1" in printed
    assert "Value 99 bigger than max of 21: frames_per_block" in printed
    assert "1 done, 2 skipped (done earlier), 3 failed" in printed  # CRASH, INVALID, bad script; HANG now runs
    assert server.submitted[5:] == [lines[1], lines[2], lines[4]]


def test_resume_after_ctrl_c_skips_finished_lines(hosts, tmp_path):
    lines = [scene("first"), scene("second"), scene("third HANG"), scene("fourth")]
    prompts, workflow = write_inputs(tmp_path, lines)
    server = hosts.start()
    out = tmp_path / "out"

    async def stop_during_third_line():
        task = asyncio.ensure_future(run_queue(prompts, workflow, [server.url], out, log=lambda text: None))
        while not server.hanging.is_set():
            await asyncio.sleep(0.005)
        task.cancel()  # what Ctrl-C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_during_third_line())
    jobs = manifest(out)  # valid JSON after the interruption
    assert {name: job["status"] for name, job in jobs.items()} == {
        "story_prompts-0001": "done", "story_prompts-0002": "done", "story_prompts-0003": "pending"}
    hung = jobs["story_prompts-0003"]["prompt_id"]
    assert server.deleted == [hung] and server.interrupted == [hung]  # the server was told to drop the line
    done_file = out / "story_prompts-0001" / "story_prompts-0001_00001_.mp4"
    before = done_file.stat().st_mtime_ns

    server.hang = False
    code = main(["queue", str(prompts), "--server", server.url, "--workflow", str(workflow), "--out", str(out)])
    assert code == 0
    assert server.submitted == [lines[0], lines[1], lines[2], lines[2], lines[3]]
    jobs = manifest(out)
    assert all(job["status"] == "done" for job in jobs.values()) and len(jobs) == 4
    assert jobs["story_prompts-0003"]["prompt_id"] != hung
    assert done_file.stat().st_mtime_ns == before

    # A missing output makes its line run again; nothing else does.
    (out / "story_prompts-0002" / "story_prompts-0002_00001_.latent").unlink()
    assert main(["queue", str(prompts), "--server", server.url, "--workflow", str(workflow),
                 "--out", str(out)]) == 0
    assert server.submitted[5:] == [lines[1]]


def test_retry_timeout_and_history_polling(hosts, tmp_path):
    lines = [scene("FLAKY"), scene("HANG"), scene("SILENT"), scene("VANISH")]
    prompts, workflow = write_inputs(tmp_path, lines)
    server = hosts.start()
    out = tmp_path / "out"
    results = asyncio.run(run_queue(prompts, workflow, [server.url], out, retries=1, timeout=1.0,
                                    poll_interval=0.05, log=lambda text: None))
    assert [(r.number, r.status) for r in results] == [(1, "done"), (2, "failed"), (3, "done"), (4, "failed")]
    jobs = manifest(out)
    assert jobs["story_prompts-0001"]["attempts"] == 2  # failed once, then succeeded on the retry
    assert jobs["story_prompts-0002"]["error"] == "timed out after 1 s"
    assert jobs["story_prompts-0002"]["attempts"] == 2
    assert server.submitted == [lines[0], lines[1], lines[2], lines[3], lines[0], lines[1], lines[3]]  # retries last
    assert jobs["story_prompts-0004"]["error"] == (f"{server.url} no longer has the prompt in its queue or history "
                                                   "(was the server restarted or its queue cleared?)")
    assert len(server.interrupted) == 2 and server.deleted == server.interrupted
    # SILENT sends no websocket events at all: the client found the result through /history.
    assert (out / "story_prompts-0003" / "story_prompts-0003_00001_.latent").read_bytes() == \
        server.files[("story_prompts-0003_00001_.latent", "echo/latent", "output")]


def test_a_server_that_dies_hands_its_line_to_the_others(hosts, tmp_path):
    lines = [scene("DIE"), scene("two"), scene("three")]
    prompts, workflow = write_inputs(tmp_path, lines)
    out = tmp_path / "out"

    def other_lines_done() -> bool:  # the mortal server dies only when the healthy one has nothing left to do
        jobs = manifest(out) if (out / "queue-state.json").exists() else {}
        return all(jobs.get(f"story_prompts-000{n}", {}).get("status") == "done" for n in (2, 3))

    healthy = hosts.start()
    mortal = hosts.start(mortal=True, hold=other_lines_done)
    log: list[str] = []
    results = asyncio.run(run_queue(prompts, workflow, [mortal.url, healthy.url], out, log=log.append))
    assert [(r.number, r.status) for r in results] == [(1, "done"), (2, "done"), (3, "done")]
    assert mortal.executed == [lines[0]]
    assert healthy.executed == [lines[1], lines[2], lines[0]]  # the line came back to the queue
    assert {job["server"] for job in manifest(out).values()} == {healthy.url}
    assert any(text.startswith(mortal.url) and text.endswith("takes no more lines") for text in log)


def test_unreachable_server_and_bad_workflow_are_usage_errors(hosts, tmp_path, capsys):
    prompts, workflow = write_inputs(tmp_path, [scene("one")])
    with socket.socket() as sock:  # a port with nothing listening on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    assert main(["queue", str(prompts), "--server", f"http://127.0.0.1:{port}", "--workflow", str(workflow),
                 "--out", str(out)]) == 2
    assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert not (out / "queue-state.json").exists()

    ui = tmp_path / "echo.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}), encoding="utf-8")
    server = hosts.start()
    assert main(["queue", str(prompts), "--server", server.url, "--workflow", str(ui), "--out", str(out)]) == 2
    assert "UI-format workflow" in capsys.readouterr().err
    assert server.submitted == []
