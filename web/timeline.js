// Scene timeline widget on the Autoregressive Sampler node (EchoForcingSampler).
//
// Before a run it shows the planned shots, read from the graph upstream of the sampler's `scenes` input
// (a chain of Scene Prompt nodes, or a Scene Script parsed here). While the sampler runs it follows the
// server's custom websocket events (echo_forcing.plan / .block / .switch, plus core "progress"), and when the
// sampler finishes it shows the node's ui result (`echo_timeline`): which earlier shot each recall used and
// which mode "auto" chose. The widget never serializes a value, so widgets_values stay positional.
//
// Block counts follow pipeline/scene_script.py (scene_block_counts); once the server has sent its plan,
// the server's numbers are used instead.

import { app } from "../../scripts/app.js";

const SAMPLER = "EchoForcingSampler";
const SCENE_PROMPT = "EchoForcingScenePrompt";
const SCENE_SCRIPT = "EchoForcingSceneScript";
const LOAD_STORY = "EchoForcingLoadStory";
const WIDGET_NAME = "echo_timeline";

const FRAMES_PER_BLOCK = 3;
const TIME_STRIDE = 4;
const DEFAULT_FPS = 16;

// Transition of a boundary: how the shot to its right is entered.
const TRANSITIONS = {
    smooth: { glyph: "~", colour: "#4da3e0", name: "smooth" },
    "hard cut": { glyph: "✂", colour: "#e0584c", name: "hard cut" },
    recall: { glyph: "↩", colour: "#b67ee6", name: "recall" },
    auto: { glyph: "?", colour: "#e3a33a", name: "auto" },
};
const SHOT_FILLS = ["#34495e", "#3d5a4c", "#5a4a3d", "#4a3d5a"];
const DONE_FILL = "rgba(120, 220, 140, 0.35)";
const MARKER_COLOUR = "#ffffff";

const BAR_HEIGHT = 30;
const ROW_HEIGHT = 14;
const PAD = 4;
const MARGIN = 15;
// Rows: status, bars, two rows of notes, legend.
const WIDGET_HEIGHT = 2 * PAD + BAR_HEIGHT + 4 * ROW_HEIGHT + 4;
const MIN_WIDTH = 420; // a new sampler node is made at least this wide, so six shots stay readable

function normaliseTransition(value) {
    const text = String(value ?? "").trim().toLowerCase();
    if (text === "hardcut" || text === "hard_cut" || text === "hard-cut" || text === "cut") return "hard cut";
    if (Object.hasOwn(TRANSITIONS, text) || text === "start") return text;
    return "smooth";
}

function formatSeconds(seconds) {
    const value = Number(seconds);
    if (!Number.isFinite(value)) return "?";
    return `${Math.round(value * 100) / 100}`;
}

function shots(count) {
    return `${count} shot${count === 1 ? "" : "s"}`;
}

function shotName(scene) {
    const label = String(scene.label ?? "").trim();
    return label || `shot ${scene.index + 1}`;
}

// ------------------------------------------------------------------------------------------ block plan

/** Blocks per scene as in pipeline/scene_script.py: nominal for all but the last; the last takes the rest. */
function sceneBlockCounts(seconds, fps = DEFAULT_FPS) {
    if (!seconds.length || !(fps > 0)) return null;
    const perBlock = TIME_STRIDE * FRAMES_PER_BLOCK;
    const total = seconds.reduce((sum, s) => sum + s, 0);
    const base = Math.floor(Math.trunc(total * fps) / TIME_STRIDE);
    const frames = Math.max(Math.ceil(base / FRAMES_PER_BLOCK) * FRAMES_PER_BLOCK, FRAMES_PER_BLOCK);
    const counts = seconds.slice(0, -1).map((s) => Math.max(1, Math.trunc((s * fps) / perBlock)));
    const rest = frames / FRAMES_PER_BLOCK - counts.reduce((sum, c) => sum + c, 0);
    return rest >= 1 ? [...counts, rest] : null;
}

/** Scenes ({label, seconds, transition, recall_target}) -> a drawable plan with blocks and first blocks. */
function planFromScenes(scenes, fps, source) {
    const counts = sceneBlockCounts(scenes.map((s) => s.seconds), fps);
    let first = 0;
    const planned = scenes.map((scene, index) => {
        const blocks = counts ? counts[index] : null;
        const entry = { ...scene, index, blocks, first_block: first };
        entry.transition = index === 0 ? "start" : normaliseTransition(scene.transition);
        first += blocks ?? 0;
        return entry;
    });
    const state = { source, scenes: planned, total_blocks: counts ? first : null };
    if (!counts) state.warning = "too short: the last shot gets no block";
    return state;
}

// -------------------------------------------------------------------------------------- script parsing

const DURATION_TAG = /\[(\d+\.?\d*)\s*s([#@])?\]/;
const MARKER_TRANSITION = { "": "smooth", "#": "hard cut", "@": "recall" };
// A recall target naming a shot by number, as the Scene Prompt node reads it ("2", "#2", "shot 2").
const SHOT_NUMBER = /^\s*(?:shot\s*|#)?(\d+)\s*$/i;

/**
 * A forgiving reading of the official one-line format (the server's parser is the strict one):
 * "text [10s#] | text [10s@] | text [10s] ; title | title | title". Returns {scenes} or {error, count}.
 */
function parseSceneScript(text) {
    const source = String(text ?? "");
    const cut = source.indexOf(";");
    let body = (cut >= 0 ? source.slice(0, cut) : source).trim();
    const titles = cut >= 0 ? source.slice(cut + 1).split("|").map((t) => t.trim()) : [];
    if (body.endsWith("|")) body = body.slice(0, -1).trim();
    if (!body) return { error: "empty script", count: 0 };
    const parts = body.split("|").map((p) => p.trim());
    const scenes = [];
    for (const [i, part] of parts.entries()) {
        const tag = DURATION_TAG.exec(part);
        if (!part) return { error: `shot ${i + 1} is empty`, count: parts.length };
        if (!tag) return { error: `shot ${i + 1} has no [Ns] tag`, count: parts.length };
        const seconds = parseFloat(tag[1]);
        if (!(seconds > 0)) return { error: `shot ${i + 1} has zero duration`, count: parts.length };
        scenes.push({ label: titles[i] ?? "", seconds, marker: tag[2] ?? "" });
    }
    return {
        scenes: scenes.map((scene, i) => ({
            label: scene.label,
            seconds: scene.seconds,
            transition: i === 0 ? "start" : MARKER_TRANSITION[scenes[i - 1].marker],
            recall_target: null,
        })),
    };
}

// ------------------------------------------------------------------------------------------ graph walk

function widgetValue(node, name) {
    return node.widgets?.find((w) => w.name === name)?.value;
}

function inputSlot(node, name) {
    return node.inputs?.findIndex((input) => input.name === name) ?? -1;
}

/** The node feeding `name` on `node`, looking through frontend Reroute nodes; null when unconnected. */
function upstream(node, name) {
    let slot = inputSlot(node, name);
    let current = node;
    for (let hops = 0; slot >= 0 && hops < 64; hops++) {
        const source = current.getInputNode?.(slot);
        if (!source) return null;
        if (source.type !== "Reroute") return source;
        current = source;
        slot = 0;
    }
    return null;
}

/** The planned timeline for a sampler node, from the graph as it is now. Never throws. */
function plannedTimeline(sampler) {
    try {
        const fps = Number(widgetValue(sampler, "fps") ?? DEFAULT_FPS);
        const head = upstream(sampler, "scenes");
        if (!head) return { source: "none", scenes: [], message: "connect a Scene Prompt or Scene Script to scenes" };
        if (head.type === SCENE_SCRIPT) {
            const script = widgetValue(head, "script");
            if (typeof script !== "string") return { source: "script", scenes: [], message: "script: shots unknown" };
            const parsed = parseSceneScript(script);
            if (parsed.error) {
                return { source: "script", scenes: [], message: `script: ${shots(parsed.count)}? (${parsed.error})` };
            }
            return planFromScenes(parsed.scenes, fps, "script");
        }
        if (head.type === SCENE_PROMPT) {
            const chain = [];
            const seen = new Set();
            for (let node = head; node && node.type === SCENE_PROMPT; node = upstream(node, "previous")) {
                if (seen.has(node.id)) break;
                seen.add(node.id);
                chain.unshift(node);
            }
            const scenes = chain.map((node) => ({
                label: String(widgetValue(node, "label") ?? ""),
                seconds: Number(widgetValue(node, "duration")),
                transition: widgetValue(node, "transition"),
                recall_target: widgetValue(node, "recall_target"),
            }));
            if (scenes.some((s) => !(s.seconds > 0))) {
                return { source: "prompts", scenes: [], message: `${shots(scenes.length)}? (a duration is not set)` };
            }
            const plan = planFromScenes(scenes, fps, "prompts");
            const before = upstream(chain[0], "previous");
            if (before?.type === LOAD_STORY) plan.after = String(widgetValue(before, "story") ?? "a story");
            return plan;
        }
        return { source: "other", scenes: [], message: `scenes from ${head.title || head.type}: shown when it runs` };
    } catch (error) {
        return { source: "error", scenes: [], message: `timeline: ${error?.message ?? error}` };
    }
}

function planSignature(state, sampler) {
    return JSON.stringify([widgetValue(sampler, "fps"), state.message ?? null,
        state.scenes.map((s) => [s.label, s.seconds, s.transition, s.recall_target])]);
}

// --------------------------------------------------------------------------------------------- drawing

function fitText(ctx, text, width) {
    if (width <= 0) return "";
    if (ctx.measureText(text).width <= width) return text;
    let cut = text.length;
    while (cut > 0 && ctx.measureText(text.slice(0, cut) + "…").width > width) cut--;
    return cut > 0 ? text.slice(0, cut) + "…" : "";
}

/** x-extent of each shot, proportional to its duration, inside [left, left + width]. */
function layoutShots(scenes, left, width) {
    const total = scenes.reduce((sum, s) => sum + Math.max(Number(s.seconds) || 0, 0), 0);
    let x = left;
    return scenes.map((scene) => {
        const share = total > 0 ? Math.max(Number(scene.seconds) || 0, 0) / total : 1 / scenes.length;
        const box = { x, w: share * width };
        x += box.w;
        return box;
    });
}

/** x of the end of block `block` (0-based, inclusive), or of its start when `atStart`. */
function blockX(scenes, boxes, block, atStart = false) {
    for (const [i, scene] of scenes.entries()) {
        const blocks = scene.blocks;
        if (!(blocks > 0) || block < scene.first_block || block >= scene.first_block + blocks) continue;
        const within = block - scene.first_block + (atStart ? 0 : 1);
        return boxes[i].x + (boxes[i].w * within) / blocks;
    }
    return null;
}

function drawGlyph(ctx, x, y, transition, dashed) {
    const style = TRANSITIONS[transition];
    if (!style) return;
    ctx.beginPath();
    ctx.arc(x, y, 7, 0, Math.PI * 2);
    ctx.fillStyle = style.colour;
    ctx.fill();
    if (dashed) {
        ctx.setLineDash([2, 2]);
        ctx.strokeStyle = TRANSITIONS.auto.colour;
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.arc(x, y, 9, 0, Math.PI * 2);
        ctx.stroke();
        ctx.setLineDash([]);
    }
    ctx.fillStyle = "#111";
    ctx.font = "bold 10px sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(style.glyph, x, y + 0.5);
}

function statusText(state) {
    const run = state.run;
    const total = state.total_blocks;
    if (run?.phase === "running") {
        const done = run.block + 1;
        const of = run.total ?? total;
        // The shot of the block being generated (the one after the last finished block).
        const shot = state.scenes.find((s) => done >= s.first_block && done < s.first_block + s.blocks)
            ?? state.scenes[run.scene];
        let text = `${done}/${of ?? "?"} blocks${shot ? ` · ${shotName(shot)}` : ""}`;
        if (Number.isFinite(run.seconds)) text += ` · ${formatSeconds(run.seconds)} s/block`;
        if (run.timed > 0 && of > done) text += ` · ~${Math.round(((of - done) * run.elapsed) / run.timed)} s left`;
        return text;
    }
    if (run?.phase === "done") {
        const reused = state.scenes.filter((s) => s.state === "reused");
        const missing = state.scenes.filter((s) => s.state === "not generated").length;
        const made = state.scenes.filter((s) => s.state !== "reused" && s.state !== "not generated");
        const taken = made.reduce((sum, s) => sum + (Number(s.seconds_taken) || 0), 0);
        let text = missing ? `stopped after ${shots(state.scenes.length - missing)}` : `done: ${total} blocks`;
        if (taken > 0) text += ` in ${formatSeconds(taken)} s`;
        if (reused.length) {
            const saved = reused.reduce((sum, s) => sum + (Number(s.seconds_taken) || 0), 0);
            text += ` · reused shots 1-${reused.length}${saved > 0 ? ` (${formatSeconds(saved)} s saved)` : ""}`;
        }
        return text;
    }
    if (run?.phase === "stopped") return `stopped: ${run.block + 1}/${run.total ?? total ?? "?"} blocks done`;
    if (state.message) return state.message;
    const seconds = state.scenes.reduce((sum, s) => sum + (Number(s.seconds) || 0), 0);
    const blocks = total ? `${total} blocks` : state.warning ?? "";
    const after = state.after ? `after story ${state.after}: ` : "";
    return `planned: ${after}${shots(state.scenes.length)} · ${formatSeconds(seconds)} s · ${blocks}`;
}

/** Draws the timeline; returns the full (untruncated) status and note texts, which tests read. */
function drawTimeline(ctx, width, y, state) {
    const left = MARGIN;
    const inner = Math.max(width - 2 * MARGIN, 10);
    const top = y + PAD + ROW_HEIGHT;
    ctx.save();

    // Status above the bars.
    ctx.font = "11px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillStyle = state.run?.phase === "stopped" ? TRANSITIONS["hard cut"].colour : "#ccc";
    const status = statusText(state);
    ctx.fillText(fitText(ctx, status, inner), left, y + PAD + ROW_HEIGHT / 2 - 1);

    ctx.fillStyle = "#1b1b1b";
    ctx.strokeStyle = "#444";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.roundRect(left, top, inner, BAR_HEIGHT, 4);
    ctx.fill();
    ctx.stroke();

    const scenes = state.scenes;
    const boxes = layoutShots(scenes, left, inner);
    ctx.textBaseline = "middle";
    for (const [i, scene] of scenes.entries()) {
        const box = boxes[i];
        ctx.fillStyle = SHOT_FILLS[i % SHOT_FILLS.length];
        ctx.fillRect(box.x + 1, top + 1, Math.max(box.w - 2, 1), BAR_HEIGHT - 2);
        ctx.save();
        ctx.beginPath();
        ctx.rect(box.x + 2, top, Math.max(box.w - 4, 0), BAR_HEIGHT);
        ctx.clip();
        ctx.fillStyle = "#eee";
        ctx.font = "11px sans-serif";
        ctx.textAlign = "left";
        const pad = i > 0 ? 10 : 4;
        ctx.fillText(fitText(ctx, shotName(scene), box.w - pad - 4), box.x + pad, top + 10);
        ctx.fillStyle = "#aaa";
        ctx.font = "10px sans-serif";
        const blocks = scene.blocks > 0 ? ` · ${scene.blocks} bl` : "";
        const how = scene.state === "reused" ? " · reused" : scene.state === "not generated" ? " · not made" : "";
        const detail = `${formatSeconds(scene.seconds)} s${blocks}${how}`;
        ctx.fillText(fitText(ctx, detail, box.w - pad - 4), box.x + pad, top + 22);
        ctx.restore();
    }

    // Progress: blocks done are filled, the block being generated gets a marker; shots not generated (a stop)
    // are left unfilled.
    const run = state.run;
    if (run && scenes.length) {
        const made = scenes.filter((s) => s.state !== "not generated");
        const lastMade = made.length < scenes.length && made.length
            ? made[made.length - 1].first_block + made[made.length - 1].blocks - 1 : run.block;
        const doneX = run.block >= 0 ? blockX(scenes, boxes, Math.min(run.block, lastMade)) : left;
        if (doneX != null) {
            ctx.fillStyle = DONE_FILL;
            ctx.fillRect(left, top, doneX - left, BAR_HEIGHT);
        }
        if (run.phase === "running") {
            const next = run.block + 1;
            const startX = blockX(scenes, boxes, next, true) ?? doneX;
            const endX = blockX(scenes, boxes, next) ?? startX;
            if (startX != null) {
                ctx.fillStyle = "rgba(255, 255, 255, 0.25)";
                ctx.fillRect(startX, top, Math.max(endX - startX, 2), BAR_HEIGHT);
                ctx.fillStyle = MARKER_COLOUR;
                ctx.fillRect(startX - 1, top - 3, 2, BAR_HEIGHT + 6);
                ctx.beginPath();
                ctx.moveTo(startX - 5, top - 4);
                ctx.lineTo(startX + 5, top - 4);
                ctx.lineTo(startX, top + 2);
                ctx.closePath();
                ctx.fill();
            }
        }
    } else if (!scenes.length) {
        ctx.fillStyle = "#999";
        ctx.font = "11px sans-serif";
        ctx.textAlign = "center";
        ctx.fillText("no shots", left + inner / 2, top + BAR_HEIGHT / 2);
    }

    // Boundaries: the transition into each shot after the first (the actual mode once known).
    for (const [i, scene] of scenes.entries()) {
        if (i === 0) continue;
        const mode = scene.mode && scene.mode !== "start" ? normaliseTransition(scene.mode) : scene.transition;
        drawGlyph(ctx, boxes[i].x, top + BAR_HEIGHT / 2, mode, scene.transition === "auto" && mode !== "auto");
    }

    // Notes under the bars (which shot a recall used, what "auto" chose), on two rows when they crowd.
    const notesY = top + BAR_HEIGHT + ROW_HEIGHT / 2 + 2;
    ctx.font = "10px sans-serif";
    ctx.textAlign = "left";
    const notes = [];
    const rowEnd = [left, left];
    for (const [i, scene] of scenes.entries()) {
        const text = sceneNote(scene, scenes);
        if (!text) continue;
        const x = boxes[i].x + 2;
        const row = x >= rowEnd[0] ? 0 : x >= rowEnd[1] ? 1 : rowEnd[0] <= rowEnd[1] ? 0 : 1;
        rowEnd[row] = x + ctx.measureText(text).width + 8;
        notes.push({ x, row, text, scene });
    }
    for (const [k, note] of notes.entries()) {
        const next = notes.slice(k + 1).find((other) => other.row === note.row);
        const limit = (next ? next.x - 6 : left + inner) - note.x;
        const mode = note.scene.mode && note.scene.mode !== "start" ? note.scene.mode : note.scene.transition;
        ctx.fillStyle = TRANSITIONS[normaliseTransition(mode)]?.colour ?? "#ccc";
        ctx.fillText(fitText(ctx, note.text, limit), note.x, notesY + note.row * ROW_HEIGHT);
    }

    // Legend.
    const legendY = notesY + 2 * ROW_HEIGHT;
    let x = left;
    for (const style of Object.values(TRANSITIONS)) {
        ctx.fillStyle = style.colour;
        ctx.font = "bold 10px sans-serif";
        ctx.fillText(style.glyph, x, legendY);
        x += ctx.measureText(style.glyph).width + 3;
        ctx.fillStyle = "#999";
        ctx.font = "10px sans-serif";
        ctx.fillText(style.name, x, legendY);
        x += ctx.measureText(style.name).width + 10;
    }
    ctx.restore();
    return { status, notes: notes.map((note) => note.text) };
}

/** The note under a shot: the recall it used (or is set to use) and what "auto" chose. */
function sceneNote(scene, scenes) {
    if (scene.index === 0) return "";
    const mode = scene.mode ? normaliseTransition(scene.mode) : null;
    const auto = scene.transition === "auto" && mode && mode !== "auto";
    if (scene.recalled != null) {
        const similarity = Number.isFinite(scene.similarity) ? ` (${scene.similarity.toFixed(2)})` : "";
        return `${auto ? "auto " : ""}↩ ${scene.recalled}${similarity}`;
    }
    if (auto) return `auto→${mode}`;
    const target = String(scene.recall_target ?? "").trim();
    if (!mode && (scene.transition === "recall" || scene.transition === "auto") && target
        && target.toLowerCase() !== "auto") {
        const number = SHOT_NUMBER.exec(target);
        const shot = number && scenes[Number(number[1]) - 1];
        return `↩ ${shot && shot.index < scene.index ? shotName(shot) : target}?`;
    }
    return "";
}

// ------------------------------------------------------------------------------------ the widget's model

/**
 * The state the widget draws. Without a run it is the planned timeline (recomputed on every draw, so edits
 * upstream show at once). A server plan or result replaces it until the planned shots change again.
 */
function currentState(widget, node) {
    const planned = plannedTimeline(node);
    const signature = planSignature(planned, node);
    const live = widget.liveState;
    if (live && (live.run?.phase === "running" || live.planSignature === signature)) return live;
    widget.liveState = null;
    return planned;
}

function serverScenes(scenes) {
    return (scenes ?? []).map((scene, i) => ({
        index: Number.isInteger(scene.index) ? scene.index : i,
        label: scene.label ?? "",
        seconds: Number(scene.seconds),
        blocks: Number(scene.blocks),
        first_block: Number(scene.first_block),
        transition: i === 0 ? "start" : normaliseTransition(scene.transition),
        mode: scene.mode ?? null,
        recalled: scene.recalled ?? null,
        similarity: scene.similarity ?? null,
        seconds_taken: scene.seconds_taken ?? null,
        state: scene.state ?? null,
    }));
}

function timelineWidget(node) {
    return node.widgets?.find((w) => w.name === WIDGET_NAME);
}

function startLiveState(widget, node, detail) {
    const planned = plannedTimeline(node);
    const scenes = serverScenes(detail.scenes);
    if (planned.scenes.length === scenes.length) {
        scenes.forEach((scene, i) => { scene.recall_target = planned.scenes[i].recall_target ?? null; });
    }
    widget.liveState = {
        source: "server",
        prompt_id: detail.prompt_id ?? null,
        total_blocks: Number(detail.total_blocks),
        scenes,
        run: { phase: "running", block: -1, total: Number(detail.total_blocks), scene: 0, seconds: NaN, elapsed: 0,
               timed: 0 },
        planSignature: planSignature(planned, node),
    };
}

function samplerFor(detail) {
    const id = detail?.node;
    if (id == null) return null;
    const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
    return node?.type === SAMPLER ? node : null;
}

function redraw(node) {
    node.setDirtyCanvas?.(true, true);
}

function onPlan({ detail }) {
    const node = samplerFor(detail);
    const widget = node && timelineWidget(node);
    if (!widget) return;
    startLiveState(widget, node, detail);
    redraw(node);
}

function onBlock({ detail }) {
    const node = samplerFor(detail);
    const widget = node && timelineWidget(node);
    const live = widget?.liveState;
    if (!live?.run) return;
    const seconds = Number(detail.seconds);
    Object.assign(live.run, {
        phase: "running",
        block: Number(detail.block),
        total: Number(detail.total ?? live.total_blocks),
        scene: Number(detail.scene),
        seconds,
    });
    if (Number.isFinite(seconds)) {  // seconds the block took: the average gives the time left
        live.run.elapsed += seconds;
        live.run.timed += 1;
    }
    redraw(node);
}

// The run starts after shots it already had (shot reuse or a loaded story): they count as done.
function onReused({ detail }) {
    const node = samplerFor(detail);
    const widget = node && timelineWidget(node);
    const live = widget?.liveState;
    if (!live?.run) return;
    const shots = Number(detail.shots);
    live.run.block = Number(detail.blocks) - 1;
    live.run.reused = { shots, blocks: Number(detail.blocks), seconds_saved: Number(detail.seconds_saved) };
    live.scenes.forEach((scene, i) => { if (i < shots) scene.state = "reused"; });
    redraw(node);
}

function onSwitch({ detail }) {
    const node = samplerFor(detail);
    const widget = node && timelineWidget(node);
    const scene = widget?.liveState?.scenes?.[Number(detail.scene)];
    if (!scene) return;
    Object.assign(scene, { mode: detail.mode ?? null, recalled: detail.recalled ?? null,
        similarity: detail.similarity ?? null });
    redraw(node);
}

// Core progress: only used when no echo_forcing.plan arrived (e.g. an older server).
function onProgress({ detail }) {
    const node = samplerFor(detail);
    const widget = node && timelineWidget(node);
    if (!widget) return;
    const live = widget.liveState;
    if (live?.source === "server" && live.run?.phase === "running") return;
    if (!live?.run || live.prompt_id !== detail.prompt_id) {
        const planned = plannedTimeline(node);
        widget.liveState = { ...planned, prompt_id: detail.prompt_id, planSignature: planSignature(planned, node) };
    }
    const state = widget.liveState;
    state.total_blocks = Number(detail.max);
    state.run = { phase: "running", block: Number(detail.value) - 1, total: Number(detail.max), scene: -1,
                  seconds: NaN };
    redraw(node);
}

/** The prompt ended: a run still marked running stopped (error, interrupt) or finished without a result. */
function onEnded(phase, { detail }) {
    for (const node of app.graph?.nodes ?? []) {
        if (node.type !== SAMPLER) continue;
        const live = timelineWidget(node)?.liveState;
        if (live?.run?.phase === "running" && (!detail?.prompt_id || live.prompt_id === detail.prompt_id)) {
            live.run.phase = phase;
            redraw(node);
        }
    }
}

function onExecuted(node, message) {
    const widget = timelineWidget(node);
    const result = message?.echo_timeline?.[0];
    if (!widget || !result) return;
    const planned = plannedTimeline(node);
    const scenes = serverScenes(result.scenes);
    const total = Number(result.total_blocks);
    widget.liveState = {
        source: "result",
        prompt_id: widget.liveState?.prompt_id ?? null,
        total_blocks: total,
        scenes,
        run: { phase: "done", block: total - 1, total, scene: scenes.length - 1, seconds: NaN },
        planSignature: planSignature(planned, node),
    };
    redraw(node);
}

/**
 * The widget: `serialize: false` keeps it out of widgets_values (which stay positional) and
 * `options.serialize: false` out of the API prompt. `drawCount`, `lastState` and `lastText` record what was
 * drawn last, for the browser test.
 */
function addTimelineWidget(node) {
    node.addCustomWidget({
        name: WIDGET_NAME,
        type: WIDGET_NAME,
        serialize: false,
        options: { serialize: false },
        drawCount: 0,
        lastState: null,
        lastText: null,
        liveState: null,
        draw(ctx, drawnNode, width, y) {
            const state = currentState(this, drawnNode);
            this.lastText = drawTimeline(ctx, width, y, state);
            this.lastState = state;
            this.drawCount += 1;
        },
        computeSize(width) {
            return [width, WIDGET_HEIGHT];
        },
    });
}

/** Grow the node so the timeline fits below the other widgets (never shrinks it). */
function ensureSize(node, minWidth = 0) {
    const size = node.computeSize?.();
    if (!size) return;
    const width = Math.max(node.size[0], minWidth);
    if (node.size[1] < size[1] || node.size[0] < width) node.setSize([width, Math.max(node.size[1], size[1])]);
}

app.registerExtension({
    name: "echo_forcing.timeline",
    async setup() {
        const api = app.api;
        api.addEventListener("echo_forcing.plan", onPlan);
        api.addEventListener("echo_forcing.block", onBlock);
        api.addEventListener("echo_forcing.switch", onSwitch);
        api.addEventListener("echo_forcing.reused", onReused);
        api.addEventListener("progress", onProgress);
        api.addEventListener("execution_error", (event) => onEnded("stopped", event));
        api.addEventListener("execution_interrupted", (event) => onEnded("stopped", event));
        api.addEventListener("execution_success", (event) => onEnded("done", event));
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== SAMPLER) return;
        const created = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            const result = created?.apply(this, arguments);
            addTimelineWidget(this);
            ensureSize(this, MIN_WIDTH);
            return result;
        };
        const configured = nodeType.prototype.onConfigure;
        nodeType.prototype.onConfigure = function () {
            const result = configured?.apply(this, arguments);
            ensureSize(this);
            return result;
        };
        const executed = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = executed?.apply(this, arguments);
            onExecuted(this, message);
            return result;
        };
    },
});
