"""The batch client against an in-process fake ComfyUI (aiohttp.web on 127.0.0.1, random ports).

The fake speaks the API as COMFYUI.md §3.1-3.5 records it: ``/system_stats``, ``POST /prompt`` (with the
HTTP 400 validation answer), ``/ws`` events, ``/history/<id>`` (stored just after ``execution_success``, as in
ComfyUI), ``/view``, ``POST /queue`` and ``POST /interrupt``. It runs one prompt at a time in its own thread's
event loop; words in the prompt line choose what it does (CRASH, INVALID, HANG, FLAKY, SILENT,
VANISH, DIE).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from echo_forcing.__main__ import main
from echo_forcing.batch.client import run_queue

WORKFLOW = {
    "1": {"class_type": "EchoForcingLoadCausalDiT", "inputs": {"model": "tiny.safetensors"}},
    "2": {"class_type": "EchoForcingSceneScript", "inputs": {"script": "placeholder [5s]"},
          "_meta": {"title": "Scene Script"}},
    "3": {"class_type": "EchoForcingSampler", "inputs": {"model": ["1", 0], "scenes": ["2", 0], "seed": 7},
          "_meta": {"title": "Autoregressive Sampler"}},
    "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 1], "filename_prefix": "echo/video",
                                                "format": "auto", "codec": "auto"}},
    "5": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "echo/latent"}},
}
EXTENSIONS = {"4": ("images", "mp4"), "5": ("latents", "latent")}


class FakeComfy:
    """One fake ComfyUI server; ``executed`` lists the scripts it ran, in order."""

    def __init__(self, hold: Callable[[], bool] | None = None, mortal: bool = False):
        self.hold = hold
        self.mortal = mortal
        self.dead = False
        self.hang = True
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.history: dict[str, dict] = {}
        self.submitted: list[str] = []
        self.executed: list[str] = []
        self.prefixes: list[str] = []
        self.client_ids: list[str] = []
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.flaky_seen: set[str] = set()
        self.pending: list[str] = []
        self.running: str | None = None
        self.hanging = threading.Event()
        self.url = ""

    async def start(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.interrupt = asyncio.Event()
        app = web.Application()
        app.router.add_get("/system_stats", self.system_stats)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/history/{prompt_id}", self.get_history)
        app.router.add_get("/view", self.view)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.post_interrupt)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.worker = asyncio.ensure_future(self.execute_loop())

    async def stop(self) -> None:
        self.worker.cancel()
        if not self.dead:
            self.dead = True
            for ws in list(self.sockets.values()):
                await ws.close()
            await self.runner.cleanup()

    async def system_stats(self, request):
        return web.json_response({"system": {"os": "posix", "comfyui_version": "0.3.64"},
                                  "devices": [{"name": "cpu", "type": "cpu"}]})

    async def websocket(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        self.client_ids.append(sid)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        async for _ in ws:
            pass
        return ws

    async def post_prompt(self, request):
        body = await request.json()
        graph, client_id = body["prompt"], body.get("client_id")
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        script = next(n for n in graph.values() if n["class_type"] == "EchoForcingSceneScript")["inputs"]["script"]
        self.submitted.append(script)
        if "INVALID" in script:  # COMFYUI.md §3.5, "out of range"
            return web.json_response({
                "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "", "extra_info": {}},
                "node_errors": {"3": {"errors": [{"type": "value_bigger_than_max",
                                                  "message": "Value 99 bigger than max of 21",
                                                  "details": "frames_per_block",
                                                  "extra_info": {"input_name": "frames_per_block",
                                                                 "received_value": 99}}],
                                      "dependent_outputs": ["4", "5"], "class_type": "EchoForcingSampler"}}},
                status=400)
        self.queue.put_nowait((prompt_id, graph, client_id, script))
        self.pending.append(prompt_id)
        return web.json_response({"prompt_id": prompt_id, "number": len(self.submitted), "node_errors": {}})

    async def get_history(self, request):
        prompt_id = request.match_info["prompt_id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        key = (request.query["filename"], request.query.get("subfolder", ""), request.query.get("type", "output"))
        if key not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[key], content_type="application/octet-stream")

    async def get_queue(self, request):
        running = [[0, self.running, {}, {}, []]] if self.running else []
        return web.json_response({"queue_running": running,
                                  "queue_pending": [[0, prompt_id, {}, {}, []] for prompt_id in self.pending]})

    async def post_queue(self, request):
        self.deleted.extend((await request.json()).get("delete", []))
        return web.Response()

    async def post_interrupt(self, request):
        self.interrupted.append((await request.json()).get("prompt_id"))
        self.interrupt.set()
        return web.Response()

    async def send(self, client_id, kind, data) -> None:
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    async def execute_loop(self) -> None:
        while True:
            job = await self.queue.get()
            while self.hold is not None and not self.hold():
                await asyncio.sleep(0.005)
            self.pending.remove(job[0])
            if "VANISH" in job[3]:  # dropped without a trace, as by a restart or a cleared queue
                continue
            self.running = job[0]
            await self.execute(*job)
            self.running = None

    async def execute(self, prompt_id, graph, client_id, script) -> None:
        self.executed.append(script)
        silent = "SILENT" in script
        messages = []

        async def event(kind, **data):
            data["prompt_id"] = prompt_id
            if kind.startswith("execution_"):
                messages.append([kind, data])
            if not silent:
                await self.send(client_id, kind, data)

        await event("execution_start", timestamp=1)
        if "DIE" in script and self.mortal:  # the machine goes away mid-job
            self.dead = True
            for ws in list(self.sockets.values()):
                await ws.close()
            await self.runner.cleanup()
            return
        await event("execution_cached", nodes=["1"], timestamp=1)
        for node in ("2", "3"):
            await event("executing", node=node, display_node=node)
        status, outputs = "success", {}
        for value in (1, 2, 3):
            await event("progress", value=value, max=3, node="3")
            ws = self.sockets.get(client_id)
            if ws is not None and not silent:
                await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x01jpeg")  # PREVIEW_IMAGE
        crash = "CRASH" in script or ("FLAKY" in script and script not in self.flaky_seen)
        self.flaky_seen.add(script)
        if "HANG" in script and self.hang:
            self.interrupt.clear()
            self.hanging.set()
            await self.interrupt.wait()
            await event("execution_interrupted", node_id="3", node_type="EchoForcingSampler", executed=["1", "2"],
                        timestamp=2)
            status = "error"
        elif crash:  # COMFYUI.md §3.5, exception inside a node
            await event("execution_error", node_id="3", node_type="EchoForcingSampler", executed=["1", "2"],
                        exception_message="sampler: simulated failure at block 1\n", exception_type="RuntimeError",
                        traceback=["  File \"execution.py\", line 496, in execute\n"],
                        current_inputs={"seed": [7]}, current_outputs=["1", "2"], timestamp=2)
            status = "error"
        else:
            outputs["3"] = {"text": [f"report for {script}"]}
            await event("executed", node="3", display_node="3", output=outputs["3"])
            for node, (key, ext) in EXTENSIONS.items():
                prefix = graph[node]["inputs"]["filename_prefix"]
                self.prefixes.append(prefix)
                subfolder, _, base = prefix.rpartition("/")
                item = {"filename": f"{base}_00001_.{ext}", "subfolder": subfolder, "type": "output"}
                self.files[(item["filename"], subfolder, "output")] = bytes(range(256)) * 40 + script.encode()
                outputs[node] = {key: [item], "animated": [True]} if key == "images" else {key: [item]}
                await event("executed", node=node, display_node=node, output=outputs[node])
            await event("execution_success", timestamp=3)
        await asyncio.sleep(0.01)  # ComfyUI stores the history only after execution_success
        self.history[prompt_id] = {"prompt": [0, prompt_id, graph, {}, ["4", "5"]], "outputs": outputs,
                                   "status": {"status_str": status, "completed": status == "success",
                                              "messages": messages}, "meta": {}}
        if not silent:
            await self.send(client_id, "executing", {"node": None, "prompt_id": prompt_id})


class FakeHosts:
    """Fake servers in a background event loop (the client under test runs its own loop in the test)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[FakeComfy] = []

    def start(self, **kwargs) -> FakeComfy:
        server = FakeComfy(**kwargs)
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(5)
        self.servers.append(server)
        return server

    def close(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture()
def hosts():
    fake = FakeHosts()
    yield fake
    fake.close()


def scene(text: str) -> str:
    return f"{text}, a lighthouse keeper climbs the stairs [5s#] | a night market [5s]"


def write_inputs(tmp_path: Path, lines: list[str]) -> tuple[Path, Path]:
    prompts = tmp_path / "story prompts.txt"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    workflow = tmp_path / "echo_api.json"
    workflow.write_text(json.dumps(WORKFLOW), encoding="utf-8")
    return prompts, workflow


def manifest(out: Path) -> dict:
    return json.loads((out / "queue-state.json").read_text(encoding="utf-8"))["jobs"]


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
