// What the timeline's buttons and bars do: stop a run after a shot (the pack's route), re-roll a shot (a new
// shot seed on its Scene Prompt, then queue: per-shot noise and the shot cache regenerate only from that shot),
// and select a shot's node on the canvas.

const STOP_ROUTE = "/echo_forcing/stop_after_shot";

/** Ask the server to end the run of `promptId` after shot `shot` (from 1). Resolves to {ok, message}. */
export async function stopAfterShot(api, promptId, shot) {
    const body = { prompt_id: promptId, shot, client_id: api.clientId ?? api.initialClientId ?? undefined };
    try {
        const response = await api.fetchApi(STOP_ROUTE, {
            method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        });
        const answer = await response.json().catch(() => ({}));
        if (response.ok) return { ok: true, message: `the run stops after shot ${shot}` };
        return { ok: false, message: `stop refused: ${answer.error ?? response.status}` };
    } catch (error) {
        return { ok: false, message: `stop failed: ${error?.message ?? error}` };
    }
}

/** The shot_seed widget of a scene's Scene Prompt node (null when the shot has no such node). */
export function shotSeedWidget(graph, scene) {
    if (scene?.node == null || !graph) return null;
    const node = graph.getNodeById?.(scene.node);
    return node?.widgets?.find((w) => w.name === "shot_seed") ?? null;
}

/** A new shot seed: the next one, or a random one when the shot used the seed derived from the sampler's. */
export function nextShotSeed(value, max = Number.MAX_SAFE_INTEGER) {
    const seed = Number(value);
    if (!Number.isFinite(seed) || seed < 0) return Math.floor(Math.random() * 2 ** 32);
    return seed >= max ? 0 : seed + 1;
}

/** Re-roll a shot: bump its shot seed and queue the workflow. Resolves to {ok, message, seed}. */
export async function rerollShot(app, graph, scene) {
    const widget = shotSeedWidget(graph, scene);
    if (!widget) return { ok: false, message: "re-roll needs the shot's Scene Prompt node" };
    const seed = nextShotSeed(widget.value, Math.min(Number(widget.options?.max) || Infinity, Number.MAX_SAFE_INTEGER));
    widget.value = seed;
    widget.callback?.(seed);
    app.canvas?.setDirty?.(true, true);
    try {
        await app.queuePrompt(0, 1);
    } catch (error) {
        return { ok: false, message: `queue failed: ${error?.message ?? error}`, seed };
    }
    return { ok: true, message: `re-rolling shot ${scene.index + 1} (shot seed ${seed})`, seed };
}

/** Select a node of the sampler's graph and centre the canvas on it (when that graph is the one shown). */
export function focusNode(app, graph, id) {
    const node = id == null ? null : graph?.getNodeById?.(id);
    const canvas = app.canvas;
    if (!node || !canvas) return false;
    if (canvas.graph && canvas.graph !== node.graph) return false;
    canvas.selectNode?.(node);
    if (canvas.centerOnNode) canvas.centerOnNode(node);
    canvas.setDirty?.(true, true);
    return true;
}
