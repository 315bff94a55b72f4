// The live state of a timeline during and after a run, built from the sampler's websocket events
// (echo_forcing.plan / .reused / .block / .switch / .shot, core progress and the end of the prompt) and from its
// `echo_timeline` result. Pure functions: each takes the state (and the event's detail) and changes only it.

import { normaliseTransition, SHOT_NUMBER, shotName, shots } from "./plan.js";

/** A thumbnail the server sent: a data URL of an image, else null (nothing else ever reaches an <img>). */
function picture(value) {
    return typeof value === "string" && value.startsWith("data:image/") ? value : null;
}

/** Scenes as the server sends them (plan event or result), with the planned ones' graph nodes kept. */
export function serverScenes(scenes, planned = null) {
    const list = (scenes ?? []).map((scene, i) => ({
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
        thumbnail: picture(scene.thumbnail),
    }));
    if (planned && planned.scenes.length === list.length) {
        list.forEach((scene, i) => {
            scene.recall_target = planned.scenes[i].recall_target ?? null;
            scene.node = planned.scenes[i].node ?? null;
        });
    }
    return list;
}

function plannedExtras(planned) {
    return { source_node: planned.source_node ?? null, after: planned.after ?? null };
}

/** echo_forcing.plan: the server's block plan replaces the local estimate; the run starts. */
export function startRun(planned, signature, detail) {
    const total = Number(detail.total_blocks);
    return {
        ...plannedExtras(planned),
        source: "server",
        prompt_id: detail.prompt_id ?? null,
        total_blocks: total,
        scenes: serverScenes(detail.scenes, planned),
        run: { phase: "running", block: -1, total, scene: 0, seconds: NaN, elapsed: 0, timed: 0,
               reused_shots: 0, stop_after: null },
        planSignature: signature,
    };
}

/** echo_forcing.reused: the run starts after shots it already had (shot cache or a loaded story). */
export function reused(state, detail) {
    const count = Number(detail.shots);
    state.run.block = Number(detail.blocks) - 1;
    state.run.reused_shots = count;
    state.run.reused = { shots: count, blocks: Number(detail.blocks), seconds_saved: Number(detail.seconds_saved) };
    state.scenes.forEach((scene, i) => {
        if (i >= count) return;
        scene.state = "reused";
        scene.thumbnail = picture(detail.thumbnails?.[i]) ?? scene.thumbnail;
    });
}

/** echo_forcing.block: a block is done. */
export function blockDone(state, detail) {
    const seconds = Number(detail.seconds);
    Object.assign(state.run, {
        phase: "running",
        block: Number(detail.block),
        total: Number(detail.total ?? state.total_blocks),
        scene: Number(detail.scene),
        seconds,
    });
    if (Number.isFinite(seconds)) {  // seconds the block took: their average gives the time left
        state.run.elapsed += seconds;
        state.run.timed += 1;
    }
}

/** echo_forcing.switch: the mode a boundary actually used (and the shot a recall returned to). */
export function switched(state, detail) {
    const scene = state.scenes[Number(detail.scene)];
    if (!scene) return;
    Object.assign(scene, { mode: detail.mode ?? null, recalled: detail.recalled ?? null,
                           similarity: detail.similarity ?? null });
}

/** echo_forcing.shot: a shot is finished; its thumbnail comes with it. */
export function shotDone(state, detail) {
    const scene = state.scenes[Number(detail.scene)];
    if (!scene) return;
    scene.state = scene.state === "reused" ? "reused" : "generated";
    scene.thumbnail = picture(detail.thumbnail) ?? scene.thumbnail;
}

/** Core progress, used only when no echo_forcing.plan came (an older server): a run of the planned shots. */
export function progressWithoutPlan(state, planned, signature, detail) {
    const next = state?.run && state.prompt_id === detail.prompt_id
        ? state : { ...planned, prompt_id: detail.prompt_id ?? null, planSignature: signature };
    next.total_blocks = Number(detail.max);
    next.run = { phase: "running", block: Number(detail.value) - 1, total: Number(detail.max), scene: -1,
                 seconds: NaN, elapsed: 0, timed: 0, reused_shots: 0, stop_after: null };
    return next;
}

/** The sampler's `echo_timeline` result: the run is over, with what each shot was. */
export function fromResult(planned, signature, result, promptId) {
    const scenes = serverScenes(result.scenes, planned);
    const total = Number(result.total_blocks);
    const reusedShots = scenes.filter((s) => s.state === "reused").length;
    return {
        ...plannedExtras(planned),
        source: "result",
        prompt_id: promptId ?? null,
        total_blocks: total,
        scenes,
        run: { phase: "done", block: total - 1, total, scene: scenes.length - 1, seconds: NaN, elapsed: 0, timed: 0,
               reused_shots: reusedShots, stop_after: null },
        planSignature: signature,
    };
}

/** The prompt ended while the state still says running: stopped (error, Cancel) or done without a result. */
export function ended(state, phase) {
    state.run.phase = phase;
}

// ----------------------------------------------------------------------------------------- what it says

/** What a shot is now: planned, reused, waiting, generating, done, stopping (after a stop) or stopped. */
export function shotStatus(state, scene) {
    const run = state.run;
    if (!run) return "planned";
    if (scene.state === "reused") return "reused";
    if (scene.state === "not generated") return "stopped";
    const last = scene.first_block + scene.blocks - 1;
    if (scene.state === "generated" || (Number.isFinite(last) && run.block >= last)) return "done";
    if (run.phase !== "running") return run.phase === "done" ? "done" : "stopped";
    if (run.stop_after != null && scene.index + 1 > run.stop_after) return "stopping";
    const next = run.block + 1;
    return next >= scene.first_block && next <= last ? "generating" : "waiting";
}

/** The fraction of a shot's blocks that are done. */
export function doneFraction(state, scene) {
    const run = state.run;
    if (!run || !(scene.blocks > 0)) return 0;
    if (scene.state === "not generated") return 0;
    return Math.min(Math.max((run.block + 1 - scene.first_block) / scene.blocks, 0), 1);
}

export function formatSeconds(seconds) {
    const value = Number(seconds);
    if (!Number.isFinite(value)) return "?";
    return `${Math.round(value * 100) / 100}`;
}

/** The status line above the bars. */
export function statusText(state) {
    const run = state.run;
    const total = state.total_blocks;
    if (run?.phase === "running") {
        const done = run.block + 1;
        const of = run.total ?? total;
        const shot = state.scenes.find((s) => done >= s.first_block && done < s.first_block + s.blocks)
            ?? state.scenes[run.scene];
        let text = `${done}/${of ?? "?"} blocks${shot ? ` · ${shotName(shot)}` : ""}`;
        if (Number.isFinite(run.seconds)) text += ` · ${formatSeconds(run.seconds)} s/block`;
        if (run.timed > 0 && of > done) text += ` · ~${Math.round(((of - done) * run.elapsed) / run.timed)} s left`;
        if (run.stop_after != null) text += ` · stopping after shot ${run.stop_after}`;
        return text;
    }
    if (run?.phase === "done") {
        const reusedScenes = state.scenes.filter((s) => s.state === "reused");
        const missing = state.scenes.filter((s) => s.state === "not generated").length;
        const made = state.scenes.filter((s) => s.state !== "reused" && s.state !== "not generated");
        const taken = made.reduce((sum, s) => sum + (Number(s.seconds_taken) || 0), 0);
        let text = missing ? `stopped after ${shots(state.scenes.length - missing)}` : `done: ${total} blocks`;
        if (taken > 0) text += ` in ${formatSeconds(taken)} s`;
        if (reusedScenes.length) {
            const saved = reusedScenes.reduce((sum, s) => sum + (Number(s.seconds_taken) || 0), 0);
            text += ` · reused shots 1-${reusedScenes.length}${saved > 0 ? ` (${formatSeconds(saved)} s saved)` : ""}`;
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

/** The note under a shot: the recall it used (or is set to use) and what "auto" chose. */
export function sceneNote(scene, scenes) {
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
