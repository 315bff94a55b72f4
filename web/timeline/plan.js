// The planned timeline of an Autoregressive Sampler node, read from the graph as it is now: the chain of Scene
// Prompt nodes behind its `scenes` input (through their `previous` links), or a Scene Script read leniently
// (the server's parser is the strict one). Pure functions of the graph: no frontend imports, no drawing.
//
// Block counts follow pipeline/scene_script.py (scene_block_counts): a block is 3 latent frames (or the model
// card's block size: Load Causal DiT's model_card, read from GET /echo_forcing/model_cards), a latent frame
// 4 video frames, so at 16 fps a 3-frame block is 0.75 s; every shot but the last gets whole blocks (at least
// one), the last takes the rest of the video.

export const SAMPLER = "EchoForcingSampler";
export const SCENE_PROMPT = "EchoForcingScenePrompt";
export const SCENE_SCRIPT = "EchoForcingSceneScript";
export const LOAD_STORY = "EchoForcingLoadStory";
export const LOAD_CAUSAL_DIT = "EchoForcingLoadCausalDiT";

export const FRAMES_PER_BLOCK = 3;
export const TIME_STRIDE = 4;
export const DEFAULT_FPS = 16;

// How a shot is entered (memory/config.py Transition: label, marker); glyph and colour are the timeline's own.
export const TRANSITIONS = {
    smooth: { glyph: "~", colour: "#4da3e0", name: "smooth", marker: "" },
    "hard cut": { glyph: "✂", colour: "#e0584c", name: "hard cut", marker: "#" },
    recall: { glyph: "↩", colour: "#b67ee6", name: "recall", marker: "@" },
    auto: { glyph: "?", colour: "#e3a33a", name: "auto", marker: "" },
};

export function normaliseTransition(value) {
    const text = String(value ?? "").trim().toLowerCase().replace(/[_-]/g, " ");
    if (text === "hardcut" || text === "cut") return "hard cut";
    if (Object.hasOwn(TRANSITIONS, text) || text === "start") return text;
    return "smooth";
}

export function shotName(scene) {
    const label = String(scene.label ?? "").trim();
    return label || `shot ${scene.index + 1}`;
}

export function shots(count) {
    return `${count} shot${count === 1 ? "" : "s"}`;
}

// ------------------------------------------------------------------------------------------ block plan

/** Blocks per scene as in pipeline/scene_script.py: nominal for all but the last; the last takes the rest. */
export function sceneBlockCounts(seconds, fps = DEFAULT_FPS, framesPerBlock = FRAMES_PER_BLOCK) {
    if (!seconds.length || !(fps > 0)) return null;
    const perBlock = TIME_STRIDE * framesPerBlock;
    const total = seconds.reduce((sum, s) => sum + s, 0);
    const base = Math.floor(Math.trunc(total * fps) / TIME_STRIDE);
    const frames = Math.max(Math.ceil(base / framesPerBlock) * framesPerBlock, framesPerBlock);
    const counts = seconds.slice(0, -1).map((s) => Math.max(1, Math.trunc((s * fps) / perBlock)));
    const rest = frames / framesPerBlock - counts.reduce((sum, c) => sum + c, 0);
    return rest >= 1 ? [...counts, rest] : null;
}

// ------------------------------------------------------------------------------------------- model cards

let modelCards = null;

/** The model cards' table (GET /echo_forcing/model_cards: {cards: {name: {frames_per_block}}, files}). */
export function setModelCards(table) {
    modelCards = table && typeof table === "object" ? table : null;
}

/**
 * Frames per block of the sampler's model: the card chosen on the Load Causal DiT behind its `model` input
 * (through LoRA and other MODEL-to-MODEL nodes); with `auto`, the card of the file's registry name. Any other
 * loader, an unknown file or no table yet: 3 (the default card of every known architecture).
 */
export function framesPerBlock(sampler) {
    let node = upstream(sampler, "model");
    for (let hops = 0; node && hops < 64; hops++) {
        if (node.type === LOAD_CAUSAL_DIT) {
            let card = String(widgetValue(node, "model_card") ?? "auto");
            if (card === "auto") {
                const file = String(widgetValue(node, "ckpt_name") ?? "").split(/[\\/]/).pop();
                card = modelCards?.files?.[file];
            }
            const size = Number(modelCards?.cards?.[card]?.frames_per_block);
            return Number.isInteger(size) && size > 0 ? size : FRAMES_PER_BLOCK;
        }
        node = upstream(node, "model");
    }
    return FRAMES_PER_BLOCK;
}

/** Scenes ({label, seconds, transition, recall_target, node}) -> a plan with blocks and first blocks. */
export function planFromScenes(scenes, fps, source, framesPerBlock = FRAMES_PER_BLOCK) {
    const counts = sceneBlockCounts(scenes.map((s) => s.seconds), fps, framesPerBlock);
    let first = 0;
    const planned = scenes.map((scene, index) => {
        const blocks = counts ? counts[index] : null;
        const entry = { ...scene, index, blocks, first_block: first };
        entry.transition = index === 0 ? "start" : normaliseTransition(scene.transition);
        first += blocks ?? 0;
        return entry;
    });
    const state = { source, scenes: planned, total_blocks: counts ? first : null, frames_per_block: framesPerBlock };
    if (!counts) state.warning = "too short: the last shot gets no block";
    return state;
}

// -------------------------------------------------------------------------------------- script parsing

const DURATION_TAG = /\[(\d+\.?\d*)\s*s([#@])?\]/;
/** A script tag's marker -> the transition into the next shot ("auto" has no marker). */
const MARKER_TRANSITION = Object.fromEntries(Object.entries(TRANSITIONS)
    .filter(([name]) => name !== "auto").map(([name, style]) => [style.marker, name]));
/** A recall target naming a shot by number, as the Scene Prompt node reads it ("2", "#2", "shot 2"). */
export const SHOT_NUMBER = /^\s*(?:shot\s*|#)?(\d+)\s*$/i;

/**
 * A forgiving reading of the official one-line format: "text [10s#] | text [10s@] | text [10s] ; title | title".
 * Returns {scenes} or {error, count}.
 */
export function parseSceneScript(text) {
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

export function widgetValue(node, name) {
    return node?.widgets?.find((w) => w.name === name)?.value;
}

function inputSlot(node, name) {
    return node.inputs?.findIndex((input) => input.name === name) ?? -1;
}

/** The node feeding `name` on `node`, looking through frontend Reroute nodes; null when unconnected. */
export function upstream(node, name) {
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

/** The chain of Scene Prompt nodes ending at `head`, first shot first. */
export function scenePromptChain(head) {
    const chain = [];
    const seen = new Set();
    for (let node = head; node && node.type === SCENE_PROMPT; node = upstream(node, "previous")) {
        if (seen.has(node)) break;
        seen.add(node);
        chain.unshift(node);
    }
    return chain;
}

/**
 * The planned timeline for a sampler node, from the graph as it is now. Never throws. Each scene from a Scene
 * Prompt names its node (`node`: its id in the sampler's graph); a script's plan names the script node.
 */
export function plannedTimeline(sampler) {
    try {
        const fps = Number(widgetValue(sampler, "fps") ?? DEFAULT_FPS);
        const block = framesPerBlock(sampler);
        const head = upstream(sampler, "scenes");
        if (!head) return { source: "none", scenes: [], message: "connect a Scene Prompt or Scene Script to scenes" };
        if (head.type === SCENE_SCRIPT) {
            const script = widgetValue(head, "script");
            if (typeof script !== "string") {
                return { source: "script", source_node: head.id, scenes: [], message: "script: shots unknown" };
            }
            const parsed = parseSceneScript(script);
            if (parsed.error) {
                return { source: "script", source_node: head.id, scenes: [],
                         message: `script: ${shots(parsed.count)}? (${parsed.error})` };
            }
            return { ...planFromScenes(parsed.scenes, fps, "script", block), source_node: head.id };
        }
        if (head.type === SCENE_PROMPT) {
            const chain = scenePromptChain(head);
            const scenes = chain.map((node) => ({
                label: String(widgetValue(node, "label") ?? ""),
                seconds: Number(widgetValue(node, "duration")),
                transition: widgetValue(node, "transition"),
                recall_target: widgetValue(node, "recall_target") ?? null,
                node: node.id,
            }));
            if (scenes.some((s) => !(s.seconds > 0))) {
                return { source: "prompts", scenes: [], message: `${shots(scenes.length)}? (a duration is not set)` };
            }
            const plan = planFromScenes(scenes, fps, "prompts", block);
            const before = upstream(chain[0], "previous");
            if (before?.type === LOAD_STORY) plan.after = String(widgetValue(before, "story") ?? "a story");
            return plan;
        }
        return { source: "other", source_node: head.id, scenes: [],
                 message: `scenes from ${head.title || head.type}: shown when it runs` };
    } catch (error) {
        return { source: "error", scenes: [], message: `timeline: ${error?.message ?? error}` };
    }
}

/** What the plan depends on; the timeline redraws when it changes. */
export function planSignature(state, sampler) {
    return JSON.stringify([widgetValue(sampler, "fps"), state.frames_per_block ?? null, state.message ?? null,
        state.after ?? null,
        state.scenes.map((s) => [s.label, s.seconds, s.transition, s.recall_target, s.node ?? null])]);
}

/**
 * The node an execution id names: "12" in the root graph, "45:789" node 789 inside the subgraph of node 45
 * (ComfyUI's ids for nodes inside subgraphs). Null when it is not in the graph.
 */
export function nodeByExecutionId(root, id) {
    if (id == null || !root) return null;
    const parts = String(id).split(":");
    let graph = root;
    let node = null;
    for (const [i, part] of parts.entries()) {
        node = graph?.getNodeById?.(part) ?? graph?.getNodeById?.(Number(part)) ?? null;
        if (!node) return null;
        if (i < parts.length - 1) graph = node.subgraph;
    }
    return node;
}
