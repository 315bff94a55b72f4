// Scene timeline on the Autoregressive Sampler node (EchoForcingSampler): a DOM widget (node.addDOMWidget), so
// it renders and updates the same way in the classic LiteGraph canvas and in Nodes 2.0 (Vue nodes).
//
// * Before a run it shows the shots planned from the graph upstream of the sampler's `scenes` input
//   (timeline/plan.js). It re-plans whenever the graph changes: on the frontend's `graphChanged` event where
//   there is one, and by comparing the plan's inputs twice a second (a few widget reads), which catches every
//   edit on every renderer and frontend version.
// * During a run it follows the sampler's websocket events (echo_forcing.plan / .reused / .block / .switch /
//   .shot, core progress and the end of the prompt; timeline/run_state.js); after it, the node's
//   `echo_timeline` result, with a thumbnail of each shot.
// * Blocks are planned at the model card's size (GET /echo_forcing/model_cards, Load Causal DiT's model_card).
// * Buttons: stop the run after a shot, re-roll a shot; clicking a bar selects its Scene Prompt node
//   (timeline/actions.js).
// The widget stores no value: it is left out of widgets_values and of the API prompt.

import { app } from "../../scripts/app.js";
import { focusNode, rerollShot, shotSeedWidget, stopAfterShot } from "./timeline/actions.js";
import { nodeByExecutionId, plannedTimeline, planSignature, SAMPLER, setModelCards } from "./timeline/plan.js";
import * as run from "./timeline/run_state.js";
import { createTimelineElement, HEIGHT, renderTimeline } from "./timeline/view.js";

const WIDGET_NAME = "echo_timeline";
const MIN_WIDTH = 460;  // a new sampler node is made at least this wide, so six shots stay readable
const POLL_MS = 500;
const CARDS_ROUTE = "/echo_forcing/model_cards";

/** One sampler's timeline: its element, the planned and the live state, and what it last rendered. */
class Timeline {
    constructor(node) {
        this.node = node;
        this.element = createTimelineElement();
        this.planned = { source: "none", scenes: [] };
        this.signature = null;
        this.live = null;
        this.renders = 0;
        this.text = null;
        this.notice = null;
        this.element.addEventListener("click", (event) => this.onClick(event));
        new ResizeObserver(() => this.render()).observe(this.element);  // notes are laid out in pixels
        this.element.addEventListener("pointerdown", (event) => {
            if (event.target.closest?.("button")) event.stopPropagation();  // a button press never drags the node
        });
    }

    get state() {
        return this.live ?? this.planned;
    }

    /** Re-plan from the graph; render when the plan changed (or when `force`). */
    refresh(force = false) {
        const planned = plannedTimeline(this.node);
        const signature = planSignature(planned, this.node);
        if (!force && signature === this.signature) return;
        this.planned = planned;
        this.signature = signature;
        if (this.live && this.live.run?.phase !== "running" && this.live.planSignature !== signature) {
            this.live = null;  // a finished run's result stays until the shots are edited
        }
        this.render();
    }

    render() {
        const state = this.state;
        const graph = this.node.graph;
        const actions = {
            canStop: state.run?.phase === "running" && !!state.prompt_id,
            canReroll: (scene) => state.source !== "script" && !!shotSeedWidget(graph, scene),
        };
        this.text = renderTimeline(this.element, state, actions, this.notice);
        this.renders += 1;
    }

    say(message) {
        this.notice = message;
        this.render();
    }

    async onClick(event) {
        const button = event.target.closest?.("button[data-action]");
        const bar = event.target.closest?.(".echo-tl-shot");
        if (!bar) return;
        event.stopPropagation();
        const scene = this.state.scenes[Number(bar.dataset.shot)];
        if (!scene) return;
        if (!button) {
            focusNode(app, this.node.graph, scene.node ?? this.state.source_node);
            return;
        }
        button.disabled = true;
        if (button.dataset.action === "stop") {
            const state = this.state;
            const answer = await stopAfterShot(app.api, state.prompt_id, scene.index + 1);
            if (answer.ok && state.run) state.run.stop_after = scene.index + 1;
            this.say(answer.ok ? null : answer.message);
        } else if (button.dataset.action === "reroll") {
            const answer = await rerollShot(app, this.node.graph, scene);
            this.refresh(true);
            this.say(answer.ok ? null : answer.message);
        }
    }
}

const timelines = new Map();  // sampler node -> Timeline

function timelineOf(detail) {
    const node = nodeByExecutionId(app.rootGraph ?? app.graph, detail?.node);
    return node?.type === SAMPLER ? timelines.get(node) ?? null : null;
}

/** Apply `change(timeline, state)` to the live state of the sampler an event names, then render. */
function onLive(change) {
    return ({ detail }) => {
        const timeline = timelineOf(detail);
        if (!timeline?.live?.run) return;
        change(timeline.live, detail, timeline);
        timeline.render();
    };
}

function onPlan({ detail }) {
    const timeline = timelineOf(detail);
    if (!timeline) return;
    timeline.refresh();
    timeline.notice = null;
    timeline.live = run.startRun(timeline.planned, timeline.signature, detail);
    timeline.render();
}

// Core progress: only used when no echo_forcing.plan arrived (e.g. an older server).
function onProgress({ detail }) {
    const timeline = timelineOf(detail);
    if (!timeline) return;
    const live = timeline.live;
    if (live?.source === "server" && live.run?.phase === "running") return;
    timeline.live = run.progressWithoutPlan(live, timeline.planned, timeline.signature, detail);
    timeline.render();
}

/** The prompt ended: a run still marked running stopped (error, Cancel) or finished without a result. */
function onEnded(phase, { detail }) {
    for (const timeline of timelines.values()) {
        const live = timeline.live;
        if (live?.run?.phase === "running" && (!detail?.prompt_id || live.prompt_id === detail.prompt_id)) {
            run.ended(live, phase);
            timeline.render();
        }
    }
}

function onExecuted({ detail }) {
    const timeline = timelineOf(detail);
    const result = detail?.output?.echo_timeline?.[0];
    if (!timeline || !result) return;
    timeline.refresh();
    timeline.live = run.fromResult(timeline.planned, timeline.signature, result,
                                   detail.prompt_id ?? timeline.live?.prompt_id);
    timeline.render();
}

/** The model cards' block sizes, for plans before a run (without them every plan uses 3-frame blocks). */
async function loadModelCards(api) {
    try {
        const response = await api.fetchApi(CARDS_ROUTE);
        if (response.ok) setModelCards(await response.json());
    } catch (error) {
        console.warn("echo_forcing: model cards unavailable; the timeline plans 3-frame blocks", error);
    }
    refreshAll();
}

function refreshAll() {
    for (const [node, timeline] of timelines) {
        const inGraph = node.graph?.getNodeById?.(node.id) === node;
        if (inGraph) timeline.inGraph = true;
        else if (timeline.inGraph) timelines.delete(node);  // removed, or its workflow was closed or replaced
        if (inGraph && timeline.element.isConnected) timeline.refresh();
    }
}

function addTimeline(node) {
    const timeline = new Timeline(node);
    const widget = node.addDOMWidget(WIDGET_NAME, WIDGET_NAME, timeline.element, {
        serialize: false,
        hideOnZoom: false,
        selectOn: [],  // a click on a bar selects that shot's node, not the sampler
        getValue: () => undefined,
        setValue: () => {},
        getMinHeight: () => HEIGHT,
        getMaxHeight: () => HEIGHT,
        getHeight: () => HEIGHT,
    });
    widget.serialize = false;  // not in widgets_values (which stay positional) nor in the API prompt
    widget.timeline = timeline;  // for the browser tests
    timelines.set(node, timeline);
    timeline.refresh(true);
    const size = node.computeSize?.();
    if (size) node.setSize?.([Math.max(node.size[0], MIN_WIDTH), Math.max(node.size[1], size[1])]);
}

app.registerExtension({
    name: "echo_forcing.timeline",
    async setup() {
        const api = app.api;
        api.addEventListener("echo_forcing.plan", onPlan);
        api.addEventListener("echo_forcing.reused", onLive(run.reused));
        api.addEventListener("echo_forcing.block", onLive(run.blockDone));
        api.addEventListener("echo_forcing.switch", onLive(run.switched));
        api.addEventListener("echo_forcing.shot", onLive(run.shotDone));
        api.addEventListener("progress", onProgress);
        api.addEventListener("executed", onExecuted);
        api.addEventListener("execution_error", (event) => onEnded("stopped", event));
        api.addEventListener("execution_interrupted", (event) => onEnded("stopped", event));
        api.addEventListener("execution_success", (event) => onEnded("done", event));
        api.addEventListener("graphChanged", refreshAll);
        loadModelCards(api);
        setInterval(refreshAll, POLL_MS);
    },
    nodeCreated(node) {
        if (node.comfyClass === SAMPLER || node.type === SAMPLER) addTimeline(node);
    },
    loadedGraphNode(node) {
        timelines.get(node)?.refresh(true);
    },
});
