"""A fake ComfyUI for the batch client's tests (aiohttp.web on 127.0.0.1, random ports).

The fake speaks the API as ComfyUI does: ``/system_stats``, ``POST /prompt`` (with the
HTTP 400 validation answer), ``/ws`` events, ``/history/<id>`` (stored just after ``execution_success``, as in
ComfyUI), ``/view``, ``GET``/``POST /queue`` and ``POST /interrupt``. It runs one prompt at a time in its own
thread's event loop; words in the prompt line choose what it does (CRASH, INVALID, HANG, FLAKY, SILENT,
VANISH, DIE, and CHATTER: endless websocket traffic about other prompts and none about this one; DROPWS: the
websocket is closed when the prompt starts and nothing is sent about it). A test can add output files per
prompt (``extra_outputs``), change what ``/view`` answers (``view_hook``), and read what the client asked
(``view_requests``, ``history_requests``).

The test modules load this file by its path (the tests folder is not a package): see ``_fake_comfy`` there.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

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
        # script -> {node id: [filename, ...]}: more output files of a prompt (content: b"file " + name)
        self.extra_outputs: Callable[[str], dict[str, list[str]]] | None = None
        # (request, (filename, subfolder, type), body) -> a response, or None for the usual one
        self.view_hook: Callable[[web.Request, tuple, bytes], Awaitable[web.StreamResponse | None]] | None = None
        self.view_requests: list[tuple[str, str, str]] = []
        self.history_requests: list[str] = []
        self.stall_history = False  # /history/<id> sends nothing until the server stops
        self.chatter: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.interrupt = asyncio.Event()
        self.released = asyncio.Event()  # set when the server stops: ends every stall()
        app = web.Application()
        app.router.add_get("/system_stats", self.system_stats)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/history", self.get_all_history)
        app.router.add_get("/history/{prompt_id}", self.get_history)
        app.router.add_get("/view", self.view)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.post_interrupt)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.worker = asyncio.ensure_future(self.execute_loop())

    async def stall(self, seconds: float = 30.0) -> None:
        """Wait (in a handler) until the server stops or ``seconds`` passed."""
        try:
            await asyncio.wait_for(self.released.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def stop(self) -> None:
        self.released.set()
        self.worker.cancel()
        for task in self.chatter:
            task.cancel()
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
        if "INVALID" in script:  # ComfyUI's "out of range" refusal
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

    async def get_all_history(self, request):
        self.history_requests.append("")  # the whole history: the client must never ask for it
        return web.json_response(self.history)

    async def get_history(self, request):
        prompt_id = request.match_info["prompt_id"]
        self.history_requests.append(prompt_id)
        if self.stall_history:
            await self.stall()
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        key = (request.query["filename"], request.query.get("subfolder", ""), request.query.get("type", "output"))
        self.view_requests.append(key)
        if key not in self.files:
            return web.Response(status=404)
        if self.view_hook is not None:
            answer = await self.view_hook(request, key, self.files[key])
            if answer is not None:
                return answer
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

    async def chatter_forever(self, client_id) -> None:
        """Events about other prompts and preview images, every few milliseconds, until the server stops."""
        other = str(uuid.uuid4())
        while True:
            ws = self.sockets.get(client_id)
            if ws is not None and not ws.closed:
                for kind, data in (("progress", {"value": 1, "max": 3, "node": "3"}),
                                   ("executing", {"node": None}), ("execution_success", {"timestamp": 1})):
                    await ws.send_json({"type": kind, "data": {**data, "prompt_id": other}})
                await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x01jpeg")
                await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}})
            await asyncio.sleep(0.002)

    async def execute(self, prompt_id, graph, client_id, script) -> None:
        self.executed.append(script)
        silent = any(word in script for word in ("SILENT", "CHATTER", "DROPWS"))
        await self.disrupt(script, client_id)
        messages = []

        async def event(kind, **data):
            data["prompt_id"] = prompt_id
            if kind.startswith("execution_"):
                messages.append([kind, data])
            if not silent:
                await self.send(client_id, kind, data)

        await event("execution_start", timestamp=1)
        if "DIE" in script and self.mortal:  # the machine goes away mid-job
            await self.die()
            return
        await self.run_nodes(event, client_id, silent)
        status, outputs = await self.finish(event, graph, script)
        await asyncio.sleep(0.01)  # ComfyUI stores the history only after execution_success
        self.history[prompt_id] = {"prompt": [0, prompt_id, graph, {}, ["4", "5"]], "outputs": outputs,
                                   "status": {"status_str": status, "completed": status == "success",
                                              "messages": messages}, "meta": {}}
        if not silent:
            await self.send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

    async def disrupt(self, script, client_id) -> None:
        """CHATTER: start events of another prompt, forever; DROPWS: close every websocket."""
        if "CHATTER" in script:
            task = asyncio.ensure_future(self.chatter_forever(client_id))
            self.chatter.add(task)
        if "DROPWS" in script:
            for ws in list(self.sockets.values()):
                await ws.close()

    async def die(self) -> None:
        """The machine goes away: close every websocket and stop answering."""
        self.dead = True
        for ws in list(self.sockets.values()):
            await ws.close()
        await self.runner.cleanup()

    async def run_nodes(self, event, client_id, silent) -> None:
        """The events of a job's nodes: one cached, two executing, three progress steps with previews."""
        await event("execution_cached", nodes=["1"], timestamp=1)
        for node in ("2", "3"):
            await event("executing", node=node, display_node=node)
        for value in (1, 2, 3):
            await event("progress", value=value, max=3, node="3")
            ws = self.sockets.get(client_id)
            if ws is not None and not silent:
                await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x01jpeg")  # PREVIEW_IMAGE

    async def finish(self, event, graph, script) -> tuple[str, dict]:
        """End the job as its script says: interrupted (HANG), an error (CRASH, the first FLAKY) or a success
        with its outputs; the status and the outputs for the history."""
        outputs = {}
        crash = "CRASH" in script or ("FLAKY" in script and script not in self.flaky_seen)
        self.flaky_seen.add(script)
        if "HANG" in script and self.hang:
            self.interrupt.clear()
            self.hanging.set()
            await self.interrupt.wait()
            await event("execution_interrupted", node_id="3", node_type="EchoForcingSampler", executed=["1", "2"],
                        timestamp=2)
            return "error", outputs
        if crash:  # ComfyUI's execution_error for an exception inside a node
            await event("execution_error", node_id="3", node_type="EchoForcingSampler", executed=["1", "2"],
                        exception_message="sampler: simulated failure at block 1\n", exception_type="RuntimeError",
                        traceback=["  File \"execution.py\", line 496, in execute\n"],
                        current_inputs={"seed": [7]}, current_outputs=["1", "2"], timestamp=2)
            return "error", outputs
        outputs["3"] = {"text": [f"report for {script}"]}
        await event("executed", node="3", display_node="3", output=outputs["3"])
        await self.save_outputs(event, graph, script, outputs)
        await event("execution_success", timestamp=3)
        return "success", outputs

    async def save_outputs(self, event, graph, script, outputs) -> None:
        """Store a file for every save node (EXTENSIONS) and the script's extra outputs, into ``outputs``."""
        for node, (key, ext) in EXTENSIONS.items():
            prefix = graph[node]["inputs"]["filename_prefix"]
            self.prefixes.append(prefix)
            subfolder, _, base = prefix.rpartition("/")
            item = {"filename": f"{base}_00001_.{ext}", "subfolder": subfolder, "type": "output"}
            self.files[(item["filename"], subfolder, "output")] = bytes(range(256)) * 40 + script.encode()
            outputs[node] = {key: [item], "animated": [True]} if key == "images" else {key: [item]}
            await event("executed", node=node, display_node=node, output=outputs[node])
        for node, names in (self.extra_outputs(script) if self.extra_outputs else {}).items():
            items = []
            for name in names:
                item = {"filename": name, "subfolder": "extra", "type": "output"}
                self.files[(name, "extra", "output")] = b"file " + name.encode("utf-8", "backslashreplace")
                items.append(item)
            outputs[node] = {"images": items}
            await event("executed", node=node, display_node=node, output=outputs[node])


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
