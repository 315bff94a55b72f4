// The timeline's DOM: one element per sampler, rendered from a state (plan.js / run_state.js) with plain DOM
// calls (labels are user text: never innerHTML). It works the same in the classic canvas (the frontend lays
// the element over the node) and in Nodes 2.0 (the element sits inside the Vue node).

import { normaliseTransition, shotName, TRANSITIONS } from "./plan.js";
import { doneFraction, formatSeconds, sceneNote, shotStatus, statusText } from "./run_state.js";

export const HEIGHT = 131;
const NOTE_ROW = 13;
const STYLE_ID = "echo-forcing-timeline-style";

const STATUS_WORDS = {
    planned: "planned", reused: "reused (cached)", waiting: "waiting", generating: "generating", done: "done",
    stopping: "not made (stopping earlier)", stopped: "stopped: not made",
};

const CSS = `
.echo-timeline { box-sizing: border-box; height: ${HEIGHT}px; min-height: ${HEIGHT}px; width: 100%; padding: 2px 0;
  display: flex; flex-direction: column; gap: 3px; font: 11px sans-serif; color: #ccc; overflow: hidden;
  user-select: none; }
.echo-timeline * { box-sizing: border-box; }
.echo-tl-status { height: 15px; line-height: 15px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-timeline[data-phase="stopped"] .echo-tl-status { color: #e0584c; }
.echo-tl-bars { position: relative; display: flex; height: 52px; background: #1b1b1b; border: 1px solid #444;
  border-radius: 4px; overflow: hidden; }
.echo-tl-empty { margin: auto; color: #999; }
.echo-tl-shot { position: relative; min-width: 0; flex-basis: 0; border-right: 1px solid #111; cursor: pointer;
  overflow: hidden; padding: 3px 4px 0 10px; }
.echo-tl-shot:last-child { border-right: none; }
.echo-tl-shot:hover { outline: 1px solid #aaa; outline-offset: -1px; }
.echo-tl-shot[data-fill="0"] { background: #34495e; } .echo-tl-shot[data-fill="1"] { background: #3d5a4c; }
.echo-tl-shot[data-fill="2"] { background: #5a4a3d; } .echo-tl-shot[data-fill="3"] { background: #4a3d5a; }
.echo-tl-shot[data-status="stopped"], .echo-tl-shot[data-status="stopping"] { opacity: 0.45; }
.echo-tl-thumb { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: cover; opacity: 0.55;
  pointer-events: none; }
.echo-tl-fill { position: absolute; left: 0; top: 0; bottom: 0; background: rgba(120, 220, 140, 0.35);
  pointer-events: none; }
.echo-tl-marker { position: absolute; top: 0; bottom: 0; min-width: 2px; background: rgba(255, 255, 255, 0.3);
  border-left: 2px solid #fff; pointer-events: none; }
.echo-tl-shot[data-status="reused"] .echo-tl-fill { background: rgba(120, 180, 230, 0.35); }
.echo-tl-shot[data-status="generating"] { box-shadow: inset 0 -3px 0 #fff; }
.echo-tl-text { position: relative; pointer-events: none; }
.echo-tl-label, .echo-tl-detail { white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  text-shadow: 0 0 3px #000, 0 0 2px #000; }
.echo-tl-label { color: #eee; font-size: 11px; line-height: 14px; }
.echo-tl-detail { color: #bbb; font-size: 10px; line-height: 13px; }
.echo-tl-glyph { position: absolute; top: 50%; transform: translate(-50%, -50%); width: 15px;
  height: 15px; border-radius: 50%; color: #111; font: bold 10px/15px sans-serif; text-align: center; z-index: 2;
  pointer-events: none; }
.echo-tl-glyph[data-auto="true"] { outline: 2px dashed #e3a33a; outline-offset: 1px; }
.echo-tl-actions { position: absolute; right: 2px; bottom: 2px; display: flex; gap: 2px; z-index: 3; }
.echo-tl-actions button { font: 11px/14px sans-serif; min-width: 18px; height: 17px; padding: 0 3px; margin: 0;
  color: #eee; background: rgba(0, 0, 0, 0.6); border: 1px solid #777; border-radius: 3px; cursor: pointer; }
.echo-tl-actions button:hover { background: #555; }
.echo-tl-actions button[data-active="true"] { background: #8a2d25; border-color: #e0584c; }
.echo-tl-notes { position: relative; height: 26px; font-size: 10px; line-height: 13px; }
.echo-tl-note { position: absolute; top: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-tl-legend { height: 13px; font-size: 10px; color: #999; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.echo-tl-legend b { margin-left: 8px; margin-right: 2px; } .echo-tl-legend b:first-child { margin-left: 0; }
`;

function ensureStyle() {
    if (document.getElementById(STYLE_ID)) return;
    const style = document.createElement("style");
    style.id = STYLE_ID;
    style.textContent = CSS;
    document.head.append(style);
}

function el(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text != null) element.textContent = text;
    return element;
}

/** A new, empty timeline element. */
export function createTimelineElement() {
    ensureStyle();
    const root = el("div", "echo-timeline");
    root.dataset.echoTimeline = "true";
    return root;
}

/** The transition a shot's boundary shows: the mode actually used once known. */
function boundaryMode(scene) {
    return scene.mode && scene.mode !== "start" ? normaliseTransition(scene.mode) : scene.transition;
}

function shotTooltip(scene, status, scenes) {
    const lines = [`Shot ${scene.index + 1}${scene.label ? ` · ${scene.label}` : ""}`];
    const blocks = scene.blocks > 0 ? ` · ${scene.blocks} block${scene.blocks === 1 ? "" : "s"}` : "";
    lines.push(`${formatSeconds(scene.seconds)} s${blocks}`);
    if (scene.index > 0) {
        const mode = boundaryMode(scene);
        lines.push(`entered by: ${mode}${scene.transition === "auto" && mode !== "auto" ? " (auto)" : ""}`);
    }
    const note = sceneNote(scene, scenes);
    if (note) lines.push(note);
    const taken = Number.isFinite(Number(scene.seconds_taken)) && scene.seconds_taken != null
        ? ` (${formatSeconds(scene.seconds_taken)} s)` : "";
    lines.push(`status: ${STATUS_WORDS[status] ?? status}${taken}`);
    if (scene.node != null) lines.push("click: select its Scene Prompt node");
    return lines.join("\n");
}

/**
 * Renders `state` into `root`. `actions` says what the buttons may do: `canStop` (a run of a known prompt is going)
 * and `canReroll(scene)`; `notice` (optional) is put before the status, e.g. why a button's request failed.
 * Returns the full texts drawn (status and notes), which the browser tests read.
 */
export function renderTimeline(root, state, actions, notice = null) {
    const scenes = state.scenes;
    root.dataset.phase = state.run?.phase ?? "planned";
    root.dataset.source = state.source ?? "";
    const status = notice ? `${notice} · ${statusText(state)}` : statusText(state);
    const statusLine = el("div", "echo-tl-status", status);
    statusLine.title = status;

    const bars = el("div", "echo-tl-bars");
    const notesRow = el("div", "echo-tl-notes");
    const notes = [];
    const glyphs = [];
    const totalSeconds = scenes.reduce((sum, s) => sum + Math.max(Number(s.seconds) || 0, 0), 0);
    let left = 0;
    if (!scenes.length) bars.append(el("span", "echo-tl-empty", "no shots"));
    for (const [i, scene] of scenes.entries()) {
        const share = totalSeconds > 0 ? Math.max(Number(scene.seconds) || 0, 0) / totalSeconds : 1 / scenes.length;
        const status_ = shotStatus(state, scene);
        const bar = el("div", "echo-tl-shot");
        Object.assign(bar.dataset, { shot: String(i), status: status_, fill: String(i % 4) });
        bar.style.flexGrow = String(share);
        bar.title = shotTooltip(scene, status_, scenes);
        if (scene.thumbnail) {
            const picture = el("img", "echo-tl-thumb");
            picture.src = scene.thumbnail;
            picture.alt = "";
            bar.append(picture);
        }
        const fraction = state.run ? doneFraction(state, scene) : 0;
        if (fraction > 0) {
            const fill = el("div", "echo-tl-fill");
            fill.style.width = `${fraction * 100}%`;
            bar.append(fill);
        }
        if (status_ === "generating" && scene.blocks > 0) {  // the block being generated
            const marker = el("div", "echo-tl-marker");
            marker.style.left = `${fraction * 100}%`;
            marker.style.width = `${100 / scene.blocks}%`;
            bar.append(marker);
        }
        const text = el("div", "echo-tl-text");
        text.append(el("div", "echo-tl-label", shotName(scene)));
        const blocks = scene.blocks > 0 ? ` · ${scene.blocks} bl` : "";
        const how = status_ === "planned" || status_ === "waiting" ? "" : ` · ${status_}`;
        text.append(el("div", "echo-tl-detail", `${formatSeconds(scene.seconds)} s${blocks}${how}`));
        bar.append(text);
        if (i > 0) {  // on the boundary, over both bars (a bar clips what overflows it)
            const mode = boundaryMode(scene);
            const style = TRANSITIONS[mode] ?? TRANSITIONS.smooth;
            const glyph = el("span", "echo-tl-glyph", style.glyph);
            glyph.style.background = style.colour;
            glyph.style.left = `${left * 100}%`;
            glyph.dataset.transition = mode;
            glyph.dataset.shot = String(i);
            glyph.dataset.auto = String(scene.transition === "auto" && mode !== "auto");
            glyphs.push(glyph);
        }
        const buttons = el("div", "echo-tl-actions");
        if (actions.canStop && (status_ === "generating" || status_ === "waiting" || status_ === "stopping")) {
            const stop = el("button", "", "■");
            stop.dataset.action = "stop";
            stop.dataset.shot = String(i);
            stop.dataset.active = String(state.run.stop_after === i + 1);
            stop.title = `Stop after this shot: the run ends successfully once shot ${i + 1} is done, with shots 1-${i + 1}`;
            buttons.append(stop);
        }
        if (state.run && state.run.phase !== "running" && (status_ === "done" || status_ === "reused")) {
            if (actions.canReroll(scene)) {  // after a run, on the shots it made
                const reroll = el("button", "", "↻");
                reroll.dataset.action = "reroll";
                reroll.dataset.shot = String(i);
                reroll.title = `Re-roll shot ${i + 1}: give it a new shot seed and queue; shots 1-${i} are reused, ` +
                    `shots ${i + 1}-${scenes.length} are generated`;
                buttons.append(reroll);
            }
        }
        if (buttons.childElementCount) bar.append(buttons);
        bars.append(bar);

        const note = sceneNote(scene, scenes);
        if (note) {
            const mode = boundaryMode(scene);
            const span = el("span", "echo-tl-note", note);
            span.title = note;
            span.style.left = `${left * 100}%`;
            span.style.color = TRANSITIONS[normaliseTransition(mode)]?.colour ?? "#ccc";
            notes.push({ span, left, text: note });
        }
        left += share;
    }
    bars.append(...glyphs);
    for (const [k, note] of notes.entries()) {  // until laid out in pixels: each runs up to the next one
        const next = notes[k + 1]?.left ?? 1;
        note.span.style.maxWidth = `calc(${(next - note.left) * 100}% - 4px)`;
        notesRow.append(note.span);
    }

    const legend = el("div", "echo-tl-legend");
    for (const style of Object.values(TRANSITIONS)) {
        const glyph = el("b", "", style.glyph);
        glyph.style.color = style.colour;
        legend.append(glyph, document.createTextNode(style.name));
    }
    legend.title = "How each shot is entered: ~ smooth continuation, ✂ hard cut, ↩ recall of an earlier shot, "
        + "? auto (the memory decides). A block is 3 latent frames (0.75 s at 16 fps).";
    root.replaceChildren(statusLine, bars, notesRow, legend);
    packNotes(notesRow, notes);
    return { status, notes: notes.map((note) => note.text) };
}

/**
 * Lay the notes out on two rows, each at its shot's left edge, or further left when it would run past the end;
 * a note ends where the next one on its row begins ("…" and the tooltip beyond). Needs the row's width, so it
 * runs once the element is on the page (and again when it is resized); until then the notes keep their
 * percentage positions.
 */
function packNotes(row, notes) {
    const width = row.clientWidth;
    if (!(width > 0)) return;
    const GAP = 6;
    const ends = [0, 0];
    for (const note of notes) {
        const natural = note.span.scrollWidth;
        let x = note.left * width;
        const free = ends.map((end) => end <= x);
        note.row = free[0] ? 0 : free[1] ? 1 : ends[0] <= ends[1] ? 0 : 1;
        if (x + natural > width) x = Math.max(ends[note.row], width - natural, 0);
        note.x = x;
        ends[note.row] = x + natural + GAP;
    }
    for (const [k, note] of notes.entries()) {
        const next = notes.slice(k + 1).find((other) => other.row === note.row);
        Object.assign(note.span.style, {
            left: `${note.x}px`, top: `${note.row * NOTE_ROW}px`,
            maxWidth: `${Math.max((next ? next.x - GAP : width) - note.x, 0)}px`,
        });
    }
}
