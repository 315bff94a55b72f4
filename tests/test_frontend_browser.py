"""The pack in the real ComfyUI frontend, driven by headless Chromium (selenium), once per renderer: the
classic LiteGraph canvas and Nodes 2.0 (setting ``Comfy.VueNodes.Enabled``). Run it on each frontend a
supported ComfyUI pins and on the newest one (``COMFYUI_FRONTEND_ROOT``, see conftest).

* Every UI-format workflow in ``example_workflows/*.json`` loads with no missing node types and no schema
  alert, ``app.graphToPrompt()`` turns it into exactly its API twin ``workflows/api/<same name>`` (class types
  and inputs; seeds and ``_meta`` ignored), which proves the UI file's positional ``widgets_values``; the scene
  timeline on every Autoregressive Sampler shows, in its DOM, the shots, blocks and transitions that the
  Python side (``pipeline/scene_script.py``) computes for the same inputs (inside the node with Nodes 2.0).
  The template browser's listing serves every workflow once, with its thumbnail. Screenshots of every case,
  named by renderer, into ``comfy_server.screenshot_dir``.
* The timeline's own logic: the script parser and block plan against the Python parser, the live updates
  from the sampler's websocket events (``echo_forcing.plan`` / ``.block`` / ``.switch``, core ``progress``,
  ``execution_interrupted``, ``executed``) dispatched by hand, also for a sampler inside a subgraph; a
  duration typed in the browser redraws it; long labels end in an ellipsis with the whole text in a tooltip.
* Real runs queued from the browser with the ``tiny_models`` files: a three-shot script followed event by
  event; and a Scene Prompt chain directed from the timeline: ■ on shot 1 ends the run successfully with
  shot 1, the next queue reuses it, ↻ on shot 2 regenerates shots 2-3 only, a click on a bar selects its node.

Needs the ``comfy_server`` fixture (a running ComfyUI with the pack), selenium, chromium and chromedriver;
skips with the reason when one is missing. ``CHROMIUM`` / ``CHROMEDRIVER`` may name the binaries.
``ECHO_TEMPLATE_THUMBNAILS=1`` rewrites ``example_workflows/*.jpg`` from the classic canvas.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from echo_forcing.pipeline.scene_script import Scene, Transition, parse_scene_script, scene_block_counts

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "example_workflows"
API_WORKFLOWS = ROOT / "workflows" / "api"
SAMPLER = "EchoForcingSampler"
SEED_INPUTS = {"seed", "noise_seed"}
PAGE_READY_S = 60


def _is_ui_workflow(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # let the test report the broken file
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if _is_ui_workflow(p))


# ------------------------------------------------------------------------------------------- browser


def _find_binary(env: str, names: tuple[str, ...]) -> str | None:
    """The binary named by the environment variable ``env`` (None if that file is missing), else on PATH."""
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    return next((shutil.which(name) for name in names if shutil.which(name)), None)


class Page:
    """The ComfyUI frontend in one headless Chromium tab."""

    def __init__(self, driver, server, renderer: str = "classic"):
        self.driver = driver
        self.server = server  # the comfy_server fixture's object (url, screenshot_dir, ...)
        self.url = server.url
        self.renderer = renderer
        self.version = None

    def nodes2(self) -> dict:
        """What Nodes 2.0 does here: whether a node renders as a DOM element with a data-node-id (the setting is
        on and known) and whether the sampler's timeline element sits inside it."""
        return self.run("""
            app.graph.clear();
            const node = LiteGraph.createNode("EchoForcingSampler"); app.graph.add(node);
            const find = () => document.querySelector(`[data-node-id="${node.id}"]`);
            for (let i = 0; i < 40 && !find()?.querySelector(".echo-timeline"); i++) {
                await new Promise((resolve) => setTimeout(resolve, 100));
            }
            const answer = { nodes: !!find(), timeline: !!find()?.querySelector(".echo-timeline") };
            app.graph.clear();
            return answer;""")

    def shot(self, name: str) -> Path:
        """The screenshot path for ``name`` in this renderer."""
        return Path(self.server.screenshot_dir) / f"{self.renderer}_{name}.png"

    def open(self) -> None:
        """(Re)load the frontend and wait until ``window.app`` has a graph and a canvas."""
        self.driver.get(self.url)
        deadline = time.monotonic() + PAGE_READY_S
        while time.monotonic() < deadline:
            if self.driver.execute_script(
                    "return !!(window.app && app.graph && app.canvas && window.LiteGraph && app.api)"):
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"the ComfyUI frontend at {self.url} did not come up within {PAGE_READY_S} s")
        self.run("await new Promise((resolve) => setTimeout(resolve, 500));")  # extensions' setup()

    def run(self, body: str, *args):
        """Run ``body`` as an async JS function body (``args`` as ``args[i]``); return its JSON result."""
        script = (
            "const done = arguments[arguments.length - 1];"
            "const args = Array.from(arguments).slice(0, -1);"
            f"(async () => {{ {body} }})().then("
            "  (value) => done({ ok: JSON.stringify(value === undefined ? null : value) }),"
            "  (error) => done({ error: String((error && error.stack) || error) }));"
        )
        answer = self.driver.execute_async_script(script, *args)
        if "error" in answer:
            raise AssertionError(f"JavaScript failed: {answer['error']}")
        return json.loads(answer["ok"])

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path)), f"screenshot {path} failed"


RENDERERS = ("classic", "nodes2")
"""The classic LiteGraph canvas, and Nodes 2.0 (the Vue node renderer, setting ``Comfy.VueNodes.Enabled``)."""


@pytest.fixture(scope="module", params=RENDERERS)
def page(request):
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    chromium = _find_binary("CHROMIUM", ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
    chromedriver = _find_binary("CHROMEDRIVER", ("chromedriver",))
    if not chromium or not chromedriver:
        pytest.skip("browser test: chromium and chromedriver are needed (apt-get install chromium chromium-driver, "
                    "or set CHROMIUM / CHROMEDRIVER)")
    server = request.getfixturevalue("comfy_server")
    # Nothing over the canvas: no "Get started" templates, no missing-model downloads (the test has no real
    # model files; missing node types are checked on their own), no minimap; and no workflow restored from the
    # previous page (each test starts clean). Stored per user on the server.
    renderer = request.param
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
                "Comfy.Minimap.Visible": False, "Comfy.Workflow.Persist": False,
                "Comfy.VueNodes.Enabled": renderer == "nodes2", "Comfy.VueNodes.AutoScaleLayout": False}
    urllib.request.urlopen(urllib.request.Request(server.url + "/settings", data=json.dumps(settings).encode(),
                                                  method="POST"), timeout=30).read()
    profile = request.getfixturevalue("tmp_path_factory").mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_script_timeout(60)
        page = Page(driver, server, renderer)
        page.open()
        page.version = page.run("return window.__COMFYUI_FRONTEND_VERSION__ ?? null;")
        if renderer == "nodes2":
            found = page.nodes2()
            assert found["nodes"], f"frontend {page.version}: Comfy.VueNodes.Enabled on, but no node is a DOM element"
            if not found["timeline"] and _version(page.version) < (1, 45):
                pytest.skip(f"frontend {page.version}: its Nodes 2.0 is an experimental setting that renders only "
                            "the core widget types, so no pack's own widget shows in it (1.45 and newer host them)")
            assert found["timeline"], f"frontend {page.version}: Nodes 2.0 does not show the timeline in the node"
        yield page
    finally:
        driver.quit()


def _version(text) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:2])
    except ValueError:
        return (0,)


# --------------------------------------------------------------------------------- JavaScript helpers

# Fit the canvas to all nodes (or to the given node ids), draw one frame, let the timelines re-plan, and return
# what the timeline widget of every sampler shows: its state, the texts it rendered and what its DOM holds.
DRAW_AND_READ = """
const [ids, zoom] = args;
const nodes = ids ? ids.map((id) => app.graph.getNodeById(id)) : app.graph.nodes;
let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
for (const node of nodes) {
    x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
}
if (nodes.length) app.canvas.ds.fitToBounds([x0 - 20, y0 - 20, x1 - x0 + 40, y1 - y0 + 40], { zoom });
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
for (const node of app.graph.nodes) node.widgets?.find((w) => w.name === "echo_timeline")?.timeline?.refresh();
await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
await new Promise((resolve) => setTimeout(resolve, 100));
return app.graph.nodes.filter((node) => node.type === "EchoForcingSampler").map((node) => {
    const widget = node.widgets?.find((w) => w.name === "echo_timeline");
    const timeline = widget?.timeline;
    const root = timeline?.element;
    const box = root?.getBoundingClientRect();
    const bars = root ? [...root.querySelectorAll(".echo-tl-shot")].map((bar) => {
        const label = bar.querySelector(".echo-tl-label");
        return { label: label.textContent, detail: bar.querySelector(".echo-tl-detail").textContent,
                 status: bar.dataset.status, title: bar.title, thumbnail: !!bar.querySelector(".echo-tl-thumb"),
                 glyph: root.querySelector(`.echo-tl-glyph[data-shot="${bar.dataset.shot}"]`)?.dataset.transition
                     ?? null,
                 buttons: [...bar.querySelectorAll("button")].map((b) => b.dataset.action),
                 overflows: label.scrollWidth > label.clientWidth + 1,
                 ellipsis: getComputedStyle(label).textOverflow === "ellipsis",
                 width: bar.getBoundingClientRect().width };
    }) : [];
    return { id: node.id, hasWidget: !!widget, drawCount: timeline?.renders ?? 0,
             state: timeline?.state ?? null, text: timeline?.text ?? null,
             dom: root ? { connected: root.isConnected, shown: !!box && box.width > 0 && box.height > 0,
                           inNode: !!root.closest("[data-node-id]"),
                           status: root.querySelector(".echo-tl-status")?.textContent ?? null, bars } : null };
});
"""

DISPATCH = """
const [type, detail] = args;
if (app.api.dispatchCustomEvent) app.api.dispatchCustomEvent(type, detail);
else app.api.dispatchEvent(new CustomEvent(type, { detail }));
"""


def _executed(page: Page, node_id, output: dict, prompt_id: str = "p-result") -> None:
    """The sampler's ui result, as core "executed" sends it."""
    page.run(DISPATCH, "executed", {"node": str(node_id), "display_node": str(node_id), "prompt_id": prompt_id,
                                    "output": output})


def _sampler(page: Page, node_id: int, zoom: float = 0.9) -> dict:
    samplers = {str(s["id"]): s for s in page.run(DRAW_AND_READ, [node_id], zoom)}  # ids are strings in 1.58
    return samplers[str(node_id)]


def _shots(state: dict) -> list[tuple]:
    return [((s["label"] or "").strip(), s["seconds"], s["blocks"], s["transition"]) for s in state["scenes"]]


# --------------------------------------------------------------------------- expectations from Python


def _entry_name(scene: Scene, index: int) -> str:
    if index == 0:
        return "start"
    return "hard cut" if scene.entry is Transition.HARD_CUT else scene.entry.value


def _script_shots(script: str, fps: float) -> list[tuple]:
    scenes = parse_scene_script(script)
    counts = scene_block_counts(scenes, fps)
    return [((s.label or ""), s.duration, n, _entry_name(s, i))
            for i, (s, n) in enumerate(zip(scenes, counts, strict=True))]


def _expected_shots(api: dict, sampler_id: str) -> list[tuple] | None:
    """(label, seconds, blocks, transition) per shot the sampler will generate; None when not knowable here."""
    inputs = api[sampler_id]["inputs"]
    fps = float(inputs.get("fps", 16))
    link = inputs.get("scenes")
    if not isinstance(link, list):
        return []
    head = api[str(link[0])]
    if head["class_type"] == "EchoForcingSceneScript":
        script = head["inputs"].get("script")
        return _script_shots(script, fps) if isinstance(script, str) else None
    if head["class_type"] != "EchoForcingScenePrompt":
        return None
    chain = []
    node = head
    while node is not None and node["class_type"] == "EchoForcingScenePrompt":
        chain.insert(0, node["inputs"])
        previous = node["inputs"].get("previous")
        node = api[str(previous[0])] if isinstance(previous, list) else None
    scenes = [Scene(prompt="shot", duration=float(p["duration"]), entry=None if i == 0 else Transition.SMOOTH)
              for i, p in enumerate(chain)]
    counts = scene_block_counts(scenes, fps)
    return [((p.get("label") or "").strip(), float(p["duration"]), n, "start" if i == 0 else p["transition"])
            for i, (p, n) in enumerate(zip(chain, counts, strict=True))]


def _comparable(prompt: dict) -> dict:
    """API prompt without ``_meta`` and seed values: {node id: (class_type, inputs)}."""
    return {str(node_id): (node["class_type"], {k: v for k, v in node.get("inputs", {}).items()
                                                if k not in SEED_INPUTS})
            for node_id, node in prompt.items()}


def _node_types(ui: dict) -> set[str]:
    subgraphs = (ui.get("definitions") or {}).get("subgraphs") or []
    subgraph_ids = {s.get("id") for s in subgraphs}
    nodes = list(ui["nodes"]) + [n for s in subgraphs for n in s.get("nodes", [])]
    return {n["type"] for n in nodes if n.get("type") not in subgraph_ids}


# ---------------------------------------------------------------------------------------- workflows


@pytest.mark.parametrize("workflow", UI_WORKFLOWS or [None], ids=[p.name for p in UI_WORKFLOWS] or ["none"])
def test_workflow_loads_converts_and_draws_timeline(workflow, page):
    if workflow is None:
        pytest.fail(f"no UI-format workflow (a JSON object with a 'nodes' list) in {WORKFLOWS}")
    ui_text = workflow.read_text(encoding="utf-8")
    ui = json.loads(ui_text)
    api_path = API_WORKFLOWS / workflow.name
    assert api_path.is_file(), f"{workflow.name}: its API-format twin {api_path.relative_to(ROOT)} is missing"
    api = json.loads(api_path.read_text(encoding="utf-8"))

    page.open()
    _assert_loads_with_every_node_type_and_no_schema_alert(page, workflow, ui, ui_text)
    _assert_only_the_sampler_rerolls_its_seed(page, workflow)
    _assert_graph_to_prompt_gives_the_api_file(page, workflow, api, api_path)
    _assert_sampler_widgets_round_trip(page, workflow, ui)
    samplers = _assert_every_sampler_draws_its_timeline(page, workflow, api)
    page.screenshot(page.shot(workflow.stem))
    if os.environ.get("ECHO_TEMPLATE_THUMBNAILS") == "1" and page.renderer == "classic":
        _write_template_thumbnail(page, workflow.with_suffix(".jpg"))
    for node_id in samplers:  # a close-up where the timeline is readable
        _sampler(page, node_id, zoom=0.6)
        page.screenshot(page.shot(f"{workflow.stem}_sampler{node_id}"))


def _write_template_thumbnail(page: Page, path: Path) -> None:
    """The template browser's picture of a workflow: its sampler with the scene timeline, as a JPEG (Chromium
    encodes it)."""
    import base64

    sampler = next(node for node in page.run("return app.graph.nodes.map((n) => [n.id, n.type]);")
                   if node[1] == SAMPLER)[0]
    page.run(DRAW_AND_READ, [sampler], 1.0)
    box = page.run("""
        for (const toast of document.querySelectorAll(".p-toast")) toast.style.visibility = "hidden";
        const node = app.graph.getNodeById(args[0]);
        const rect = app.canvas.canvas.getBoundingClientRect();
        const [ox, oy] = app.canvas.ds.offset; const scale = app.canvas.ds.scale;
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        return { x: rect.left + (node.pos[0] + ox) * scale - 16, y: rect.top + (node.pos[1] - title + oy) * scale - 16,
                 width: node.size[0] * scale + 32, height: (node.size[1] + title) * scale + 32 };""", sampler)
    shot = page.driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "jpeg", "quality": 80, "clip": {**box, "scale": min(1.0, 420 / box["width"])}})
    page.run('for (const toast of document.querySelectorAll(".p-toast")) toast.style.visibility = "";')
    path.write_bytes(base64.b64decode(shot["data"]))


def _assert_loads_with_every_node_type_and_no_schema_alert(page: Page, workflow: Path, ui: dict,
                                                          ui_text: str) -> None:
    """Every node type of the workflow is registered, and loading it raises no schema alert."""
    registered = set(page.run("return Object.keys(LiteGraph.registered_node_types);"))
    missing = sorted(_node_types(ui) - registered)
    assert not missing, f"{workflow.name}: node types not registered in the frontend: {missing}"

    alert = "Invalid workflow against zod schema"
    before = page.run("return document.body.innerText;").count(alert)
    page.run("await app.loadGraphData(JSON.parse(args[0]), true, true, args[1]);", ui_text, workflow.name)
    text = page.run("await new Promise((resolve) => setTimeout(resolve, 300)); return document.body.innerText;")
    rejected = text.count(alert) > before
    assert not rejected, f"{workflow.name}: the frontend's schema check rejects it: {text[text.rfind(alert):][:400]}"


def _assert_only_the_sampler_rerolls_its_seed(page: Page, workflow: Path) -> None:
    """Only the sampler's seed is re-rolled after a queue: no other node gets a "control after generate" (a
    Scene Prompt's shot seed must stay as set, or every queue would re-roll its shot and reuse nothing)."""
    controls = page.run("return app.graph.nodes.filter((n) => n.type.startsWith('EchoForcing') && n.type !== "
                        "args[0] && (n.widgets ?? []).some((w) => w.name === 'control_after_generate'))"
                        ".map((n) => n.type);", SAMPLER)
    assert controls == [], f"{workflow.name}: nodes with a control_after_generate widget: {controls}"


def _assert_graph_to_prompt_gives_the_api_file(page: Page, workflow: Path, api: dict, api_path: Path) -> None:
    """``app.graphToPrompt()`` of the loaded graph is the API file, node by node (seeds and ``_meta`` aside)."""
    output = page.run("return (await app.graphToPrompt()).output;")
    got, want = _comparable(output), _comparable(api)
    _drop_newer_optional_defaults(got, want, page.server.url)
    assert got.keys() == want.keys(), f"{workflow.name}: node ids differ from {api_path.name}: UI gives " \
        f"{sorted(got)}, API file has {sorted(want)}"
    for node_id in sorted(want, key=lambda k: (len(k), k)):
        assert got[node_id] == want[node_id], (
            f"{workflow.name}: node {node_id} differs from {api_path.name} (the UI widgets_values are "
            f"probably out of order)\n  UI  gives {got[node_id]}\n  API has   {want[node_id]}")


def _drop_newer_optional_defaults(got: dict, want: dict, url: str) -> None:
    """Remove from ``got`` the optional inputs a newer ComfyUI added (v0.28.0: CreateVideo.bit_depth) that the
    API file lacks, where they are at their defaults, and the values of widgets the frontend adds that are no
    input of the node (Load Video's "video-preview"; the server ignores them)."""
    with urllib.request.urlopen(url + "/object_info") as r:
        info = json.loads(r.read())
    for node_id, (class_type, inputs) in got.items():
        declared = info[class_type]["input"]
        optional = declared.get("optional", {})
        for name in [n for n in inputs if node_id in want and n not in want[node_id][1]]:
            if name in optional and inputs[name] == optional[name][1].get("default"):
                del inputs[name]
            elif not any(name in declared.get(group, {}) for group in ("required", "optional", "hidden")):
                del inputs[name]


def _assert_sampler_widgets_round_trip(page: Page, workflow: Path, ui: dict) -> None:
    """The timeline widget is not serialized: the samplers' widgets_values round-trip unchanged."""
    saved = {str(n["id"]): n.get("widgets_values") for n in page.run("return app.graph.serialize().nodes;")}
    for node in ui["nodes"]:
        if node["type"] == SAMPLER:
            assert saved[str(node["id"])] == node.get("widgets_values"), f"{workflow.name}: sampler {node['id']}"


def _assert_every_sampler_draws_its_timeline(page: Page, workflow: Path, api: dict) -> dict:
    """Every sampler of the API file has a drawn timeline showing the shots Python plans (where knowable);
    what each sampler's widget drew, by node id."""
    samplers = {str(s["id"]): s for s in page.run(DRAW_AND_READ, None, 0.9)}
    assert set(samplers) == {k for k, v in api.items() if v["class_type"] == SAMPLER}
    for node_id, sampler in samplers.items():
        assert sampler["hasWidget"], f"{workflow.name}: sampler {node_id} has no echo_timeline widget"
        assert sampler["drawCount"] > 0, f"{workflow.name}: the timeline of sampler {node_id} was never drawn"
        expected = _expected_shots(api, node_id)
        if expected is not None:
            assert _shots(sampler["state"]) == expected, f"{workflow.name}: sampler {node_id} timeline"
        _assert_the_dom_shows_the_state(page, sampler, f"{workflow.name}: sampler {node_id}")
    return samplers


def _assert_the_dom_shows_the_state(page: Page, sampler: dict, where: str) -> None:
    """The timeline element is on the page, inside the node with Nodes 2.0, with one bar per shot that carries
    the shot's name, seconds and blocks, and the transition glyph of its boundary."""
    dom = sampler["dom"]
    assert dom and dom["connected"] and dom["shown"], f"{where}: the timeline element is not shown ({dom})"
    if page.renderer == "nodes2":
        assert dom["inNode"], f"{where}: with Nodes 2.0 the timeline is not inside its node"
    assert dom["status"] == sampler["text"]["status"]
    scenes = sampler["state"]["scenes"]
    assert len(dom["bars"]) == len(scenes), where
    for scene, bar in zip(scenes, dom["bars"], strict=True):
        name = (scene["label"] or "").strip() or f"shot {scene['index'] + 1}"
        assert bar["label"] == name, where
        assert bar["detail"].startswith(f"{scene['seconds']:g} s"), (where, bar)
        assert bar["title"].startswith(f"Shot {scene['index'] + 1}"), (where, bar)
        assert bar["ellipsis"], f"{where}: a long label would be clipped instead of ellipsized"
        assert bar["glyph"] == (None if scene["index"] == 0 else scene["transition"]), (where, bar)
        if sampler["state"].get("run") is None:  # no run yet: nothing to stop, nothing to re-roll
            assert bar["buttons"] == [], (where, bar)


# ------------------------------------------------------------------------------------ timeline logic

BUILD_CHAIN = """
const [durations, transitions, labels] = args;
app.graph.clear();
const add = (type, x, y) => { const node = LiteGraph.createNode(type); node.pos = [x, y]; app.graph.add(node);
                              return node; };
const set = (node, name, value) => { node.widgets.find((w) => w.name === name).value = value; };
let previous = null;
const prompts = durations.map((duration, i) => {
    const node = add("EchoForcingScenePrompt", 20 + 360 * i, 20);
    set(node, "text", `scene ${i + 1}`); set(node, "duration", duration);
    set(node, "transition", transitions[i]); set(node, "label", labels[i]);
    if (previous) previous.connect(0, node, node.findInputSlot("previous"));
    previous = node;
    return node.id;
});
const sampler = add("EchoForcingSampler", 20, 420);
if (previous) previous.connect(0, sampler, sampler.findInputSlot("scenes"));
return { prompts, sampler: sampler.id };
"""

BUILD_SCRIPT = """
app.graph.clear();
const script = LiteGraph.createNode("EchoForcingSceneScript"); script.pos = [20, 20]; app.graph.add(script);
const sampler = LiteGraph.createNode("EchoForcingSampler"); sampler.pos = [420, 20]; app.graph.add(sampler);
script.connect(0, sampler, sampler.findInputSlot("scenes"));
return { script: script.id, sampler: sampler.id };
"""

SET_WIDGET = "app.graph.getNodeById(args[0]).widgets.find((w) => w.name === args[1]).value = args[2];"


def test_timeline_follows_live_events_and_result(page):
    page.open()
    ids = page.run(BUILD_CHAIN, [10, 10, 10], ["smooth", "hard cut", "auto"], ["Lighthouse", "", "Sea"])
    node = ids["sampler"]
    _assert_the_local_plan_is_drawn(page, node)
    plan = _assert_the_server_plan_and_live_events_are_followed(page, node)
    result = _assert_the_result_ends_the_run(page, node, plan)
    _assert_core_progress_drives_a_run_without_plan_until_interrupted(page, node)

    # Editing a shot upstream replaces the finished run by the new plan at once.
    _executed(page, node, result)
    page.run(SET_WIDGET, ids["prompts"][1], "duration", 5)
    state = _sampler(page, node)["state"]
    assert state["source"] == "prompts"
    assert _shots(state) == [("Lighthouse", 10, 13, "start"), ("", 5, 6, "hard cut"), ("Sea", 10, 15, "auto")]


def _assert_the_local_plan_is_drawn(page: Page, node: int) -> None:
    """Before any run the timeline shows the shots planned from the chained Scene Prompts."""
    planned = _sampler(page, node)
    assert planned["drawCount"] > 0
    assert planned["state"]["source"] == "prompts"
    assert _shots(planned["state"]) == [("Lighthouse", 10, 13, "start"), ("", 10, 13, "hard cut"),
                                        ("Sea", 10, 14, "auto")]
    assert planned["text"]["status"] == "planned: 3 shots · 30 s · 40 blocks"


def _assert_the_server_plan_and_live_events_are_followed(page: Page, node: int) -> dict:
    """The server's plan, block, progress and switch events of this node update the timeline; the plan sent."""
    # The server's plan wins over the local estimate (deliberately different numbers here).
    plan = {"node": str(node), "prompt_id": "p1", "total_blocks": 40, "scenes": [
        {"index": 0, "label": "Lighthouse", "seconds": 10, "blocks": 12, "first_block": 0, "transition": "start"},
        {"index": 1, "label": "shot 2", "seconds": 10, "blocks": 14, "first_block": 12, "transition": "hard cut"},
        {"index": 2, "label": "Sea", "seconds": 10, "blocks": 14, "first_block": 26, "transition": "auto"}]}
    page.run(DISPATCH, "echo_forcing.plan", plan)
    page.run(DISPATCH, "echo_forcing.plan", {**plan, "node": str(int(node) + 100), "total_blocks": 7})  # other node
    state = _sampler(page, node)["state"]
    assert state["source"] == "server"
    assert [(s["blocks"], s["first_block"]) for s in state["scenes"]] == [(12, 0), (14, 12), (14, 26)]
    assert state["run"]["phase"] == "running" and state["run"]["block"] == -1

    page.run(DISPATCH, "echo_forcing.block", {"node": str(node), "prompt_id": "p1", "block": 20, "total": 40,
                                              "scene": 1, "seconds": 12.5})
    page.run(DISPATCH, "progress", {"node": str(node), "prompt_id": "p1", "value": 3, "max": 40})  # plan wins
    drawn = _sampler(page, node)
    assert drawn["state"]["run"] == {"phase": "running", "block": 20, "total": 40, "scene": 1, "seconds": 12.5,
                                     "elapsed": 12.5, "timed": 1, "reused_shots": 0, "stop_after": None}
    assert drawn["text"]["status"] == "21/40 blocks · shot 2 · 12.5 s/block · ~238 s left"

    page.run(DISPATCH, "echo_forcing.switch", {"node": str(node), "prompt_id": "p1", "scene": 2, "mode": "recall",
                                               "recalled": "Lighthouse", "similarity": 0.5912})
    drawn = _sampler(page, node)
    assert drawn["state"]["scenes"][2]["mode"] == "recall"
    assert drawn["text"]["notes"] == ["auto ↩ Lighthouse (0.59)"]
    page.screenshot(page.shot("timeline_live_running"))
    return plan


def _assert_the_result_ends_the_run(page: Page, node: int, plan: dict) -> dict:
    """The sampler's ``onExecuted`` result replaces the live state and ends the run; the result sent."""
    result = {"echo_timeline": [{"total_blocks": 40, "scenes": [
        {**plan["scenes"][0], "mode": "start", "recalled": None, "similarity": None, "seconds_taken": 30.0},
        {**plan["scenes"][1], "mode": "hard cut", "recalled": None, "similarity": None, "seconds_taken": 35.0},
        {**plan["scenes"][2], "mode": "hard cut", "recalled": None, "similarity": None, "seconds_taken": 35.5}]}],
        "text": ["40 blocks"]}
    _executed(page, node, result)
    done = _sampler(page, node)
    assert done["state"]["source"] == "result"
    assert done["state"]["run"]["phase"] == "done"
    assert done["text"]["status"] == "done: 40 blocks in 100.5 s"
    assert done["text"]["notes"] == ["auto→hard cut"]
    page.screenshot(page.shot("timeline_live_done"))
    return result


def _assert_core_progress_drives_a_run_without_plan_until_interrupted(page: Page, node: int) -> None:
    """A run of another prompt without a plan event (an older server): core progress drives the marker;
    an interrupt stops it."""
    page.run(DISPATCH, "progress", {"node": str(node), "prompt_id": "p2", "value": 5, "max": 40})
    state = _sampler(page, node)["state"]
    assert state["source"] == "prompts" and state["run"]["phase"] == "running" and state["run"]["block"] == 4
    page.run(DISPATCH, "execution_interrupted", {"prompt_id": "p2", "node_id": str(node)})
    drawn = _sampler(page, node)
    assert drawn["state"]["run"]["phase"] == "stopped"
    assert drawn["text"]["status"] == "stopped: 5/40 blocks done"


def test_timeline_shows_reused_and_stopped_shots(page):
    page.open()
    ids = page.run(BUILD_CHAIN, [10, 10, 10], ["smooth", "hard cut", "smooth"], ["A", "B", "C"])
    node = ids["sampler"]
    plan = {"node": str(node), "prompt_id": "r1", "total_blocks": 40, "scenes": [
        {"index": 0, "label": "A", "seconds": 10, "blocks": 13, "first_block": 0, "transition": "start"},
        {"index": 1, "label": "B", "seconds": 10, "blocks": 13, "first_block": 13, "transition": "hard cut"},
        {"index": 2, "label": "C", "seconds": 10, "blocks": 14, "first_block": 26, "transition": "smooth"}]}
    page.run(DISPATCH, "echo_forcing.plan", plan)
    page.run(DISPATCH, "echo_forcing.reused", {"node": str(node), "prompt_id": "r1", "shots": 2, "blocks": 26,
                                               "seconds_saved": 61.0})
    state = _sampler(page, node)["state"]
    assert state["run"]["block"] == 25 and [s["state"] for s in state["scenes"]] == ["reused", "reused", None]
    result = {"echo_timeline": [{"total_blocks": 40, "scenes": [
        {**plan["scenes"][0], "mode": "start", "recalled": None, "similarity": None, "seconds_taken": 30.0,
         "state": "reused"},
        {**plan["scenes"][1], "mode": "hard cut", "recalled": None, "similarity": None, "seconds_taken": 31.0,
         "state": "reused"},
        {**plan["scenes"][2], "mode": "smooth", "recalled": None, "similarity": None, "seconds_taken": 33.0,
         "state": "generated"}]}], "text": ["40 blocks"]}
    _executed(page, node, result)
    assert _sampler(page, node)["text"]["status"] == "done: 40 blocks in 33 s · reused shots 1-2 (61 s saved)"
    page.screenshot(page.shot("timeline_reused"))
    stopped = json.loads(json.dumps(result))
    stopped["echo_timeline"][0]["scenes"][2].update(state="not generated", mode=None, seconds_taken=None)
    stopped["echo_timeline"][0]["scenes"][1]["state"] = "generated"
    _executed(page, node, stopped)
    assert _sampler(page, node)["text"]["status"] == "stopped after 2 shots in 31 s · reused shots 1-1 (30 s saved)"


SCRIPTS = [
    "A keeper climbs a lighthouse [10s#] | A night market [10s@] | Back in the lighthouse, the keeper lights "
    "the lamp [10s]",
    "fox in snow [4.5s] | city at night [7 s#] | fox again [6s@] | coda [2s]; Fox | City",
    "one long take [60s]",
    "a [10s@] | b [3s#] |",
    "first [1s] | second [1s] | third [1s] | fourth [1s] ; one | two | three | four | five",
]


@pytest.mark.parametrize("fps", [16, 24])
def test_script_parser_and_block_plan_match_python(page, fps):
    page.open()
    ids = page.run(BUILD_SCRIPT)
    page.run(SET_WIDGET, ids["sampler"], "fps", fps)
    for script in SCRIPTS:
        page.run(SET_WIDGET, ids["script"], "script", script)
        state = _sampler(page, ids["sampler"])["state"]
        assert state["source"] == "script"
        assert _shots(state) == _script_shots(script, fps), script


def test_the_plan_follows_the_model_card_on_load_causal_dit(page):
    """The timeline plans blocks of the model card's size (GET /echo_forcing/model_cards): the card chosen on the
    Load Causal DiT behind the sampler, through a core LoRA node; with auto, the card of the file's registry name."""
    page.open()
    ids = page.run(BUILD_SCRIPT)
    ids.update(page.run("""
        const dit = LiteGraph.createNode("EchoForcingLoadCausalDiT"); dit.pos = [20, 300]; app.graph.add(dit);
        const lora = LiteGraph.createNode("LoraLoaderModelOnly"); lora.pos = [300, 300]; app.graph.add(lora);
        const sampler = app.graph.getNodeById(args[0]);
        dit.connect(0, lora, 0); lora.connect(0, sampler, sampler.findInputSlot("model"));
        return { dit: dit.id };""", ids["sampler"]))
    script = "a fox in the snow [2s] | a city at night [1s#] | the fox again [1.5s]"
    page.run(SET_WIDGET, ids["script"], "script", script)
    scenes = parse_scene_script(script)
    for card, ckpt, block in (("causal-forcing-framewise", "any.safetensors", 1), ("auto", "any.safetensors", 3),
                              ("auto", "causal_forcing_pp_2step.safetensors", 1), ("self-forcing", "x.pt", 3)):
        page.run(SET_WIDGET, ids["dit"], "model_card", card)
        page.run(SET_WIDGET, ids["dit"], "ckpt_name", ckpt)
        deadline = time.monotonic() + 10
        while True:  # the card table arrives once, asynchronously, after the page loads
            state = _sampler(page, ids["sampler"])["state"]
            if state.get("frames_per_block") == block or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state["frames_per_block"] == block, (card, ckpt, state)
        assert [s["blocks"] for s in state["scenes"]] == scene_block_counts(scenes, 16, frames_per_block=block)


def test_timeline_without_scenes_with_a_broken_script_and_through_a_reroute(page):
    page.open()
    lone = page.run("""app.graph.clear(); const node = LiteGraph.createNode("EchoForcingSampler");
                       app.graph.add(node); return node.id;""")
    drawn = _sampler(page, lone)
    assert drawn["drawCount"] > 0 and drawn["state"]["scenes"] == []
    assert drawn["text"]["status"] == "connect a Scene Prompt or Scene Script to scenes"

    ids = page.run(BUILD_SCRIPT)
    page.run(SET_WIDGET, ids["script"], "script", "a fox [10s#] | a city without a tag | end [5s]")
    drawn = _sampler(page, ids["sampler"])
    assert drawn["state"]["scenes"] == []
    assert drawn["text"]["status"] == "script: 3 shots? (shot 2 has no [Ns] tag)"

    reroute = page.run("""const reroute = LiteGraph.createNode("Reroute"); reroute.pos = [300, 300];
                          app.graph.add(reroute); return reroute.id;""")
    page.run("""const [script, reroute, sampler] = args.map((id) => app.graph.getNodeById(id));
                script.connect(0, reroute, 0); reroute.connect(0, sampler, sampler.findInputSlot("scenes"));""",
             ids["script"], reroute, ids["sampler"])
    page.run(SET_WIDGET, ids["script"], "script", "a fox [10s#] | a city [5s]")
    assert _shots(_sampler(page, ids["sampler"])["state"]) == _script_shots("a fox [10s#] | a city [5s]", 16)


# A new graph with the tiny model loaders (`models`: the tiny_models fixture), and `add` / `link` for the rest.
TINY_LOADERS = """
app.graph.clear();
const add = (type, x, y, values = {}) => {
    const node = LiteGraph.createNode(type); node.pos = [x, y]; app.graph.add(node);
    for (const [name, value] of Object.entries(values)) node.widgets.find((w) => w.name === name).value = value;
    return node;
};
const link = (from, slot, to, name) => from.connect(slot, to, to.findInputSlot(name));
const dit = add("EchoForcingLoadCausalDiT", 20, 20, { ckpt_name: models.dit });
const clip = add("CLIPLoader", 20, 260, { clip_name: models.clip, type: "sd3" });
"""

REAL_RUN = """
const [models, script] = args;
""" + TINY_LOADERS + """
const shots = add("EchoForcingSceneScript", 20, 420, { script });
// A fresh seed: an unchanged prompt would come from ComfyUI's cache and send no events at all.
const sampler = add("EchoForcingSampler", 420, 20, { width: 32, height: 32, seed: Math.floor(Math.random() * 1e9) });
const preview = add("PreviewAny", 900, 20);
link(clip, 0, shots, "clip"); link(dit, 0, sampler, "model"); link(shots, 0, sampler, "scenes");
link(sampler, 2, preview, "source");
// Listeners added after the extension's run after them: they see the widget's state after each event.
const widget = sampler.widgets.find((w) => w.name === "echo_timeline");
window.__echoSeen = [];
window.__echoEnd = null;
for (const type of ["echo_forcing.plan", "echo_forcing.block", "echo_forcing.switch"]) {
    app.api.addEventListener(type, ({ detail }) => window.__echoSeen.push(
        [type, detail.node, widget.timeline.live?.source ?? null, widget.timeline.live?.run?.block ?? null]));
}
for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
    app.api.addEventListener(type, ({ detail }) => { window.__echoEnd = [type, detail]; });
}
await app.queuePrompt(0, 1);
return sampler.id;
"""


def test_timeline_follows_a_real_run(page, request):
    """Queue a tiny three-shot script from the browser: the widget follows the sampler's real events."""
    models = request.getfixturevalue("tiny_models")
    script = "a lighthouse [1s#] | a market [1s@] | the lighthouse again [1.5s] ; Lighthouse | Market | Back"
    page.open()
    node = page.run(REAL_RUN, models, script)
    deadline = time.monotonic() + 300
    while (end := page.run("return window.__echoEnd;")) is None:
        assert time.monotonic() < deadline, "the run did not end within 300 s"
        time.sleep(0.5)
    assert end[0] == "execution_success", end
    seen = page.run("return window.__echoSeen;")
    drawn = _sampler(page, node)
    page.screenshot(page.shot("timeline_real_run"))

    expected = _script_shots(script, 16)
    total = sum(shot[2] for shot in expected)
    assert seen[0] == ["echo_forcing.plan", str(node), "server", -1]
    blocks = [entry[3] for entry in seen if entry[0] == "echo_forcing.block"]
    assert blocks == list(range(total)), seen
    assert all(entry[1] == str(node) and entry[2] == "server" for entry in seen)
    assert [entry[0] for entry in seen].count("echo_forcing.switch") == len(expected) - 1

    state = drawn["state"]
    assert state["source"] == "result" and state["run"]["phase"] == "done"
    assert [(s["label"], s["seconds"], s["blocks"], s["transition"]) for s in state["scenes"]] == expected
    assert [s["mode"] for s in state["scenes"]] == ["start", "hard cut", "recall"]
    recall = state["scenes"][2]
    assert recall["recalled"] in ("Lighthouse", "Market") and 0 < recall["similarity"] <= 1.0001
    assert drawn["text"]["status"].startswith(f"done: {total} blocks")
    assert drawn["text"]["notes"] == [f"↩ {recall['recalled']} ({recall['similarity']:.2f})"]


# ------------------------------------------------------------------------- directing the run from the canvas

REAL_CHAIN = """
const [models, shots] = args;
""" + TINY_LOADERS + """
let previous = null;
const prompts = shots.map(([text, duration, transition, label], i) => {
    const node = add("EchoForcingScenePrompt", 20 + 330 * i, 420, { text, duration, transition, label });
    link(clip, 0, node, "clip");
    if (previous) link(previous, 0, node, "previous");
    previous = node;
    return node;
});
// A fresh seed, kept fixed: every queue of this test must plan the same shots (so the shot cache can serve them).
const sampler = add("EchoForcingSampler", 420, 20, { width: 32, height: 32, seed: Math.floor(Math.random() * 1e9),
                                                     control_after_generate: "fixed" });
const preview = add("PreviewAny", 900, 20);
link(dit, 0, sampler, "model"); link(previous, 0, sampler, "scenes"); link(sampler, 2, preview, "source");
window.__echoRuns = [];
for (const type of ["echo_forcing.plan", "echo_forcing.reused", "echo_forcing.block", "execution_success",
                    "execution_error", "execution_interrupted"]) {
    app.api.addEventListener(type, ({ detail }) => window.__echoRuns.push([type, detail]));
}
return { sampler: sampler.id, prompts: prompts.map((node) => node.id) };
"""

# Click a shot's "stop after this shot" button the moment the run shows it (the run is too fast for a round trip).
CLICK_STOP_WHEN_SHOWN = """
const [id, shot] = args;
const root = app.graph.getNodeById(id).widgets.find((w) => w.name === "echo_timeline").timeline.element;
const selector = `button[data-action="stop"][data-shot="${shot}"]`;
window.__echoStopClicked = false;
const observer = new MutationObserver(() => {
    const button = root.querySelector(selector);
    if (button && !window.__echoStopClicked) { window.__echoStopClicked = true; observer.disconnect(); button.click(); }
});
observer.observe(root, { childList: true, subtree: true });
"""


def _wait_for_run(page: Page, start: int, timeout: float = 300) -> list:
    """The events of the run that ends after index ``start`` of ``window.__echoRuns``."""
    deadline = time.monotonic() + timeout
    while True:
        events = page.run("return window.__echoRuns.slice(args[0]);", start)
        if any(kind.startswith("execution_") for kind, _ in events):
            return events
        assert time.monotonic() < deadline, f"the run did not end within {timeout} s: {events[-3:]}"
        time.sleep(0.3)


def _click(page: Page, selector: str) -> None:
    """A real mouse click on the element (through the WebDriver), scrolled into view."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By

    element = page.driver.find_element(By.CSS_SELECTOR, selector)
    try:
        element.click()
    except ElementClickInterceptedException:  # a toast over the canvas: the click still goes to the element
        page.driver.execute_script("arguments[0].click();", element)


def test_stop_after_a_shot_and_reroll_from_the_timeline(page, request):
    """A real run from the browser: "stop after this shot" on shot 1 ends it successfully with shot 1 only; the
    next queue reuses shot 1; re-roll on shot 2 regenerates shots 2-3 only; clicking a bar selects its node."""
    models = request.getfixturevalue("tiny_models")
    shots = [["a lighthouse on a cliff", 12, "smooth", "Lighthouse"], ["a night market", 1, "hard cut", "Market"],
             ["the lighthouse again", 1.5, "recall", "Back"]]
    page.open()
    ids = page.run(REAL_CHAIN, models, shots)
    node = ids["sampler"]
    _sampler(page, node, zoom=0.8)
    blocks = [shot[2] for shot in _script_shots(" | ".join(f"{t} [{d}s]" for t, d, *_ in shots), 16)]

    # 1. Stop after shot 1, clicked while shot 1 is generated.
    page.run(CLICK_STOP_WHEN_SHOWN, node, 0)
    page.run("await app.queuePrompt(0, 1);")
    events = _wait_for_run(page, 0)
    assert events[-1][0] == "execution_success", events[-1]
    assert page.run("return window.__echoStopClicked;")
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == list(range(blocks[0]))
    drawn = _sampler(page, node, zoom=0.8)
    assert [s["state"] for s in drawn["state"]["scenes"]] == ["generated", "not generated", "not generated"]
    assert [b["status"] for b in drawn["dom"]["bars"]] == ["done", "stopped", "stopped"]
    assert [b["thumbnail"] for b in drawn["dom"]["bars"]] == [True, False, False]
    assert drawn["text"]["status"].startswith("stopped after 1 shot")
    page.screenshot(page.shot("timeline_stopped_after_shot_1"))

    # 2. Queue again: shot 1 comes from the shot cache, shots 2-3 are generated.
    start = len(page.run("return window.__echoRuns;"))
    page.run("await app.queuePrompt(0, 1);")
    events = _wait_for_run(page, start)
    assert events[-1][0] == "execution_success", events[-1]
    assert [d["shots"] for k, d in events if k == "echo_forcing.reused"] == [1]
    drawn = _sampler(page, node, zoom=0.8)
    assert [s["state"] for s in drawn["state"]["scenes"]] == ["reused", "generated", "generated"]
    assert all(b["thumbnail"] for b in drawn["dom"]["bars"])

    # 3. Re-roll shot 2 with its button: a new shot seed on its Scene Prompt, and only shots 2-3 are generated.
    seed_before = page.run("return app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'shot_seed')"
                           ".value;", ids["prompts"][1])
    start = len(page.run("return window.__echoRuns;"))
    assert drawn["dom"]["bars"][1]["buttons"] == ["reroll"]
    _click(page, f'[data-node-id="{node}"] .echo-tl-shot[data-shot="1"] button[data-action="reroll"]'
           if page.renderer == "nodes2" else '.echo-tl-shot[data-shot="1"] button[data-action="reroll"]')
    events = _wait_for_run(page, start)
    assert events[-1][0] == "execution_success", events[-1]
    seed_after = page.run("return app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'shot_seed')"
                          ".value;", ids["prompts"][1])
    assert seed_after != seed_before and seed_after >= 0
    assert [d["shots"] for k, d in events if k == "echo_forcing.reused"] == [1]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == list(range(blocks[0], sum(blocks)))
    executed = page.run("return app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'echo_timeline')"
                        ".timeline.state.scenes.map((s) => s.state);", node)
    assert executed == ["reused", "generated", "generated"]
    rerolled = _sampler(page, node, zoom=0.8)
    assert "reused shots 1-1" in rerolled["dom"]["status"], rerolled["dom"]["status"]  # the report says which
    page.screenshot(page.shot("timeline_rerolled_shot_2"))

    # 4. Clicking a bar selects (and centres) its Scene Prompt node.
    _click(page, '.echo-tl-shot[data-shot="2"]' if page.renderer == "classic"
           else f'[data-node-id="{node}"] .echo-tl-shot[data-shot="2"]')
    selected = page.run("return Object.keys(app.canvas.selected_nodes ?? {});")
    assert selected == [str(ids["prompts"][2])]
    offset = page.run("""  // how far the node's centre is from the canvas's centre, in fractions of its size
        for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 100));  // any animation
        const node = app.graph.getNodeById(args[0]);
        const rect = app.canvas.canvas.getBoundingClientRect();
        const [ox, oy] = app.canvas.ds.offset; const scale = app.canvas.ds.scale;
        const x = (node.pos[0] + node.size[0] / 2 + ox) * scale, y = (node.pos[1] + node.size[1] / 2 + oy) * scale;
        return [Math.abs(x - rect.width / 2) / rect.width, Math.abs(y - rect.height / 2) / rect.height];""",
                     ids["prompts"][2])
    assert max(offset) < 0.1, f"the canvas is not centred on the selected Scene Prompt: {offset}"


# The input element of a widget in a Nodes 2.0 node: the row whose label is the widget's name.
VUE_WIDGET_INPUT = """
const [id, name] = args;
const root = document.querySelector(`[data-node-id="${id}"]`);
if (!root) return null;
const labelled = root.querySelector(`[aria-label="${name}"] input`);
if (labelled) { labelled.dataset.echoTestTarget = `${id}-${name}`; return `${id}-${name}`; }
const label = [...root.querySelectorAll("*")].find((el) => el.children.length === 0 && el.textContent.trim() === name);
let row = label;
while (row && row !== root && !row.querySelector("input")) row = row.parentElement;
const input = row?.querySelector("input");
if (input) input.dataset.echoTestTarget = `${id}-${name}`;
return input ? `${id}-${name}` : null;
"""


def _type_into_widget(page: Page, node_id: int, name: str, value: str) -> None:
    """Change a widget the way a person does: Nodes 2.0 by typing into its input, the classic canvas by the
    value the canvas widget sets (LiteGraph's prompt dialog writes ``widget.value``), with no call into the pack."""
    if page.renderer == "classic":
        page.run("const w = app.graph.getNodeById(args[0]).widgets.find((w) => w.name === args[1]); "
                 "w.value = Number(args[2]); w.callback?.(w.value);", node_id, name, value)
        return
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page.run(DRAW_AND_READ, [node_id], 1.0)  # the node in view: a person types into what they see
    target = page.run(VUE_WIDGET_INPUT, node_id, name)
    assert target, f"no input for widget {name} of node {node_id} in its Nodes 2.0 element"
    from selenium.webdriver.common.action_chains import ActionChains

    element = page.driver.find_element(By.CSS_SELECTOR, f'input[data-echo-test-target="{target}"]')
    ActionChains(page.driver).move_to_element(element).click().perform()  # on the scrub layer over the input
    focused = page.run("return document.activeElement?.dataset?.echoTestTarget ?? null;")
    assert focused == target, f"a click on widget {name} of node {node_id} did not focus its input ({focused})"
    ActionChains(page.driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL) \
        .send_keys(value).send_keys(Keys.ENTER).perform()


def test_changing_a_duration_in_the_browser_redraws_the_timeline(page):
    page.open()
    ids = page.run(BUILD_CHAIN, [10, 10, 10], ["smooth", "hard cut", "smooth"], ["Harbour", "Market", "Harbour again"])
    node = ids["sampler"]
    before = _sampler(page, node)
    assert before["dom"]["bars"][1]["detail"] == "10 s · 13 bl"
    _type_into_widget(page, ids["prompts"][1], "duration", "5")
    deadline = time.monotonic() + 5
    while True:  # no explicit refresh: the timeline must notice the edit itself
        shown = page.run("""const t = app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'echo_timeline')
                            .timeline; return [t.renders, t.element.querySelectorAll('.echo-tl-detail')[1]
                            ?.textContent];""", node)
        if shown[1] == "5 s · 6 bl":
            break
        assert time.monotonic() < deadline, f"the timeline did not redraw after the edit: {shown}"
        time.sleep(0.2)
    assert shown[0] > before["drawCount"]
    assert page.run("return app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'duration').value;",
                    ids["prompts"][1]) == 5
    page.screenshot(page.shot("timeline_after_duration_edit"))


def test_labels_are_ellipsized_with_the_whole_text_in_a_tooltip(page):
    page.open()
    long = "a very long label that cannot fit in a bar of a default-width node"
    ids = page.run(BUILD_CHAIN, [10] * 6, ["smooth"] * 6, [f"{long} {i + 1}" for i in range(6)])
    drawn = _sampler(page, ids["sampler"])
    width = page.run("return app.graph.getNodeById(args[0]).size[0];", ids["sampler"])
    assert width <= 520, f"the test wants a default-width sampler, got {width}"
    for i, bar in enumerate(drawn["dom"]["bars"]):
        assert bar["overflows"] and bar["ellipsis"], bar
        assert f"{long} {i + 1}" in bar["title"]
    assert drawn["dom"]["status"] == "planned: 6 shots · 60 s · 80 blocks"
    page.screenshot(page.shot("timeline_long_labels"))


def test_duration_steps_by_a_quarter_second(page):
    page.open()
    ids = page.run(BUILD_CHAIN, [10], ["smooth"], ["one"])
    options = page.run("const o = app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'duration').options;"
                       "return { step: o.step, step2: o.step2, min: o.min, round: o.round };", ids["prompts"][0])
    step = options["step2"] if options.get("step2") is not None else options["step"] / 10
    assert step == 0.25 and options["min"] == 0.25, options
    assert options["round"] in (None, False) or options["round"] <= 0.25, options


def test_the_template_browser_lists_every_example_workflow_with_its_thumbnail(comfy_server):
    """ComfyUI serves example_workflows/ to the frontend's template browser: every workflow once, with its .jpg."""
    with urllib.request.urlopen(comfy_server.url + "/api/workflow_templates", timeout=30) as answer:
        templates = json.loads(answer.read())
    packs = [name for name, flows in templates.items() if "six_shot_smooth" in flows]
    assert len(packs) == 1, templates
    assert sorted(templates[packs[0]]) == sorted(p.stem for p in UI_WORKFLOWS)  # each once: no second folder
    for workflow in UI_WORKFLOWS:
        url = f"{comfy_server.url}/api/workflow_templates/{packs[0]}/{workflow.stem}.jpg"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.headers.get_content_type() == "image/jpeg"
            assert answer.read() == workflow.with_suffix(".jpg").read_bytes()


SUBGRAPH = """
app.graph.clear();
const script = LiteGraph.createNode("EchoForcingSceneScript"); script.pos = [20, 20]; app.graph.add(script);
const sampler = LiteGraph.createNode("EchoForcingSampler"); sampler.pos = [420, 20]; app.graph.add(sampler);
script.connect(0, sampler, sampler.findInputSlot("scenes"));
script.widgets.find((w) => w.name === "script").value = "a harbour [10s] | a market [5s#]";
if (!app.graph.convertToSubgraph) return null;
const { node } = app.graph.convertToSubgraph(new Set([script, sampler]));
const inner = node.subgraph.nodes.find((n) => n.type === "EchoForcingSampler");
return { outer: node.id, inner: inner.id };
"""

READ_INNER = """
const [outer, inner] = args;
const timeline = app.graph.getNodeById(outer).subgraph.getNodeById(inner).widgets
    .find((w) => w.name === "echo_timeline").timeline;
timeline.refresh();
return { state: timeline.state, text: timeline.text };
"""


def test_a_sampler_inside_a_subgraph_follows_its_events(page):
    """Events name a node inside a subgraph by its execution id ("outer:inner"); they reach that sampler."""
    page.open()
    ids = page.run(SUBGRAPH)
    if ids is None:
        pytest.skip(f"frontend {page.version} has no subgraphs")
    execution_id = f"{ids['outer']}:{ids['inner']}"
    planned = page.run(READ_INNER, ids["outer"], ids["inner"])
    assert planned["state"]["source"] == "script" and len(planned["state"]["scenes"]) == 2
    plan = {"node": execution_id, "prompt_id": "sg1", "total_blocks": 20, "scenes": [
        {"index": 0, "label": "", "seconds": 10, "blocks": 13, "first_block": 0, "transition": "start"},
        {"index": 1, "label": "", "seconds": 5, "blocks": 7, "first_block": 13, "transition": "hard cut"}]}
    page.run(DISPATCH, "echo_forcing.plan", plan)
    page.run(DISPATCH, "echo_forcing.block", {"node": execution_id, "prompt_id": "sg1", "block": 3, "total": 20,
                                              "scene": 0, "seconds": 1.0})
    live = page.run(READ_INNER, ids["outer"], ids["inner"])
    assert live["state"]["source"] == "server" and live["state"]["run"]["block"] == 3
    assert live["text"]["status"].startswith("4/20 blocks")
    _executed(page, execution_id, {"echo_timeline": [{"total_blocks": 20, "scenes": [
        {**plan["scenes"][0], "mode": "start", "state": "generated", "seconds_taken": 2.0},
        {**plan["scenes"][1], "mode": "hard cut", "state": "generated", "seconds_taken": 1.0}]}]}, "sg1")
    done = page.run(READ_INNER, ids["outer"], ids["inner"])
    assert done["state"]["source"] == "result" and done["text"]["status"] == "done: 20 blocks in 3 s"
