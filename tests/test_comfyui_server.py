"""Real host: a ComfyUI server with the pack loaded from this checkout, driven through its HTTP API and
websocket exactly as the frontend and the batch command drive it.

Every shipped API workflow is queued with the model names swapped for the tiny files of
``python -m echo_forcing tiny-models`` (the CLIP-L-shaped text encoder loads with CLIPLoader type "sd3",
which pads to the DiT's 4096-wide text), a 32x32 frame and short shots: the random full-size Wan VAE
decodes about two frames a second on two CPU cores, so a six-shot video of 10 s shots (961 frames) would
take minutes to decode. Everything else runs as shipped. Runs only when COMFYUI_DIR is set (see
conftest.comfy_server); CI has no ComfyUI and skips it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parent.parent
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
NODE_IDS = {"EchoForcingLoadCausalDiT", "EchoForcingScenePrompt", "EchoForcingSceneScript", "EchoForcingMemoryConfig",
            "EchoForcingSceneRecallPool", "EchoForcingSampler", "EchoForcingSaveScenePool", "EchoForcingSaveStory",
            "EchoForcingLoadStory"}
WIDTH, HEIGHT = 32, 32
SHOT_SECONDS = 0.75
"""One block (12 frames at 16 fps) per shot."""
_TAG = re.compile(r"\[(\d+\.?\d*)\s*s([#@]?)\]")

pytestmark = pytest.mark.comfyui


def tiny_workflow(path: Path, models: dict[str, str], seconds: float | None = SHOT_SECONDS) -> dict:
    """An API workflow with the tiny model files, a small frame size and ``seconds`` per shot (None: as shipped)."""
    prompt = json.loads(path.read_text(encoding="utf-8"))
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "EchoForcingLoadCausalDiT":
            inputs["ckpt_name"] = models["dit"]
        elif kind == "UNETLoader":
            inputs["unet_name"] = models["dit"]
        elif kind == "CLIPLoader":
            inputs["clip_name"], inputs["type"] = models["clip"], "sd3"
        elif kind == "VAELoader":
            inputs["vae_name"] = models["vae"]
        elif kind in ("EchoForcingSampler", "ImageScale"):  # the start image or clip at the video's size
            inputs["width"], inputs["height"] = WIDTH, HEIGHT
        elif kind == "EchoForcingScenePrompt" and seconds is not None:
            inputs["duration"] = seconds
        elif kind == "EchoForcingSceneScript" and seconds is not None:
            inputs["script"] = _TAG.sub(lambda m: f"[{seconds:g}s{m.group(2)}]", inputs["script"])
    return prompt


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


async def _run(url: str, prompt: dict, on_event=None, timeout: float = 900) -> tuple[int, dict, list]:
    """POST the prompt and collect websocket events until it ends. Returns (HTTP status, POST answer, events)."""
    client_id = uuid.uuid4().hex
    events: list[tuple[str, dict]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                status, body = answer.status, await answer.json()
            if status != 200:
                return status, body, events
            prompt_id = body["prompt_id"]

            async def follow():
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:  # [u32 event][u32 image type][image] (a preview)
                        events.append(("binary", {"event": int.from_bytes(msg.data[:4], "big"),
                                                  "jpeg": msg.data[8:10] == b"\xff\xd8"}))
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    event = (data["type"], data.get("data") or {})
                    if event[1].get("prompt_id") not in (None, prompt_id):
                        continue
                    events.append(event)
                    if on_event is not None:
                        await on_event(session, event, client_id)
                    if event[0] in ("execution_success", "execution_error", "execution_interrupted"):
                        return
            await asyncio.wait_for(follow(), timeout)
    return status, body, events


def run(url: str, prompt: dict, on_event=None) -> tuple[int, dict, list]:
    return asyncio.run(_run(url, prompt, on_event))


def get(url: str, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=60) as answer:
        return answer.read()


def test_every_node_registers_without_import_errors(comfy_server):
    info = json.loads(get(comfy_server.url, "/object_info"))
    assert NODE_IDS <= set(info), NODE_IDS - set(info)
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"] == "video/echo_forcing"
        assert node["description"]
        for group in ("required", "optional"):
            for name, spec in node["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    log = comfy_server.log()
    assert "EchoForcingUnderTest" in log  # loaded from this checkout through the extra_model_paths entry
    bad = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line)
           and "EchoForcing" in line]
    assert not bad, bad
    assert json.loads(get(comfy_server.url, "/models/diffusion_models")) == sorted(
        json.loads(get(comfy_server.url, "/models/diffusion_models")))
    assert "causal_dit" in json.loads(get(comfy_server.url, "/models"))
    extensions = json.loads(get(comfy_server.url, "/extensions"))
    assert any(e.startswith("/extensions/EchoForcingUnderTest/") and e.endswith(".js") for e in extensions)


def _ensure_story(comfy_server, tiny_models) -> None:
    """Part 2 of the story workflows loads what part 1 saved: run part 1 first when it has not run."""
    if not (comfy_server.output_dir / "echo_forcing" / "stories" / "pottery_six_shots.safetensors").is_file():
        status, _, events = run(comfy_server.url, tiny_workflow(API_WORKFLOWS[0].with_name("story_1_six_shots.json"),
                                                                tiny_models))
        assert status == 200 and events[-1][0] == "execution_success", events[-3:]


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_shipped_api_workflow_runs_in_the_real_queue(comfy_server, tiny_models, path):
    """Every shipped workflow runs; shots that an earlier job (or a loaded story) already made are reused, and
    progress, previews and events cover exactly the blocks generated."""
    if "EchoForcingLoadStory" in path.read_text(encoding="utf-8"):
        _ensure_story(comfy_server, tiny_models)
    prompt = tiny_workflow(path, tiny_models)
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200 and body["node_errors"] == {}, body
    kinds = [k for k, _ in events]
    errors = [d for k, d in events if k == "execution_error"]
    assert kinds[-1] == "execution_success", errors[:1] or kinds[-5:]

    sampler = node_of(prompt, "EchoForcingSampler")
    plan, reused = _assert_events_cover_the_generated_blocks(events, sampler)
    total, shots = plan["total_blocks"], len(plan["scenes"])
    executed = {d["node"]: d["output"] for k, d in events if k == "executed"}
    timeline = executed[sampler]["echo_timeline"][0]
    assert timeline["total_blocks"] == total and len(timeline["scenes"]) == shots
    _assert_the_video_is_saved_and_served(comfy_server, prompt, executed)

    history = json.loads(get(comfy_server.url, f"/history/{body['prompt_id']}"))[body["prompt_id"]]
    assert history["status"]["status_str"] == "success"
    _assert_pool_and_story_results(comfy_server, prompt, executed, shots, reused, timeline)


def _assert_events_cover_the_generated_blocks(events: list, sampler: str) -> tuple[dict, dict]:
    """The plan event adds up; progress, block events, previews and switches cover exactly the blocks and
    shots generated after the reused ones. The plan and the reused-shots event (zeros when none)."""
    kinds = [k for k, _ in events]
    plan = next(d for k, d in events if k == "echo_forcing.plan")
    total = plan["total_blocks"]
    assert plan["node"] == sampler and sum(s["blocks"] for s in plan["scenes"]) == total
    reused = next((d for k, d in events if k == "echo_forcing.reused"), {"shots": 0, "blocks": 0})
    first = reused["blocks"]
    progress = [d for k, d in events if k == "progress" and d.get("node") == sampler]
    assert [p["value"] for p in progress] == ([first] if first else []) + list(range(first + 1, total + 1))
    blocks = [d["block"] for k, d in events if k == "echo_forcing.block"]
    assert blocks == list(range(first, total))  # one event per generated block
    previews = [d for k, d in events if k == "binary"]
    assert previews == [{"event": 1, "jpeg": True}] * (total - first)  # one latent2rgb JPEG preview per block
    shots = len(plan["scenes"])
    generated_switches = shots - max(reused["shots"], 1) if reused["shots"] < shots else 0
    assert len([k for k in kinds if k == "echo_forcing.switch"]) == generated_switches
    return plan, reused


def _assert_the_video_is_saved_and_served(comfy_server, prompt: dict, executed: dict) -> None:
    """SaveVideo wrote an mp4 that ``/view`` serves."""
    saved = executed[node_of(prompt, "SaveVideo")]
    files = saved.get("images") or saved.get("videos")
    assert files and files[0]["filename"].endswith(".mp4")
    video = get(comfy_server.url, "/view?filename={filename}&subfolder={subfolder}&type={type}".format(**files[0]))
    assert video[4:8] == b"ftyp" and len(video) > 1000  # an mp4 container, fetched through /view


def _assert_pool_and_story_results(comfy_server, prompt: dict, executed: dict, shots: int, reused: dict,
                                   timeline: dict) -> None:
    """A saved scene pool or story holds every shot; a loaded story's six shots were reused."""
    if "EchoForcingSaveScenePool" in {n["class_type"] for n in prompt.values()}:
        text = executed[node_of(prompt, "EchoForcingSaveScenePool")]["text"][0]
        assert text.startswith(f"saved {shots} scenes")
        assert (comfy_server.output_dir / "echo_forcing" / "scene_pools" / "recall_abcabc.safetensors").is_file()
    if "EchoForcingSaveStory" in {n["class_type"] for n in prompt.values()}:
        text = executed[node_of(prompt, "EchoForcingSaveStory")]["text"][0]
        assert text.startswith(f"saved {shots} shots")
    if "EchoForcingLoadStory" in {n["class_type"] for n in prompt.values()}:
        assert reused["shots"] >= 6 and [s["state"] for s in timeline["scenes"]][:6] == ["reused"] * 6


def test_cancel_stops_a_long_run_between_blocks_and_the_next_run_succeeds(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=None)
    sampler = node_of(prompt, "EchoForcingSampler")
    finished = []

    async def interrupt_after_two_blocks(session, event, client_id):
        if event[0] == "echo_forcing.block":
            finished.append(event[1]["block"])
            if len(finished) == 2:
                async with session.post(f"{comfy_server.url}/interrupt", json={}) as answer:
                    assert answer.status == 200

    status, _, events = run(comfy_server.url, prompt, interrupt_after_two_blocks)
    assert status == 200
    kind, data = events[-1]
    assert kind == "execution_interrupted" and data["node_id"] == sampler, events[-3:]
    total = next(d["total_blocks"] for k, d in events if k == "echo_forcing.plan")
    assert total == 80 and 2 <= len(finished) <= 3 < total  # stopped at the next check, within one block
    # the same graph queued again (shorter, so the VAE decode stays quick) runs from scratch and succeeds
    again = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=1.5)
    status, _, events = run(comfy_server.url, again)
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == [0, 1]


def test_a_bad_scene_script_is_refused_at_submit_with_the_parser_message(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_hard_cut.json"), tiny_models)
    script = node_of(prompt, "EchoForcingSceneScript")
    prompt[script]["inputs"]["script"] = "a fox in the snow [10x] | a lighthouse [5s]"
    status, body, _ = run(comfy_server.url, prompt)
    assert status == 400
    error = body["node_errors"][script]["errors"][0]
    assert error["type"] == "custom_validation_failed"
    assert "bad scene script: scene 1" in error["details"] and "[10x]" in error["details"]


def test_a_missing_model_file_is_refused_at_submit_naming_the_file(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_smooth.json"), tiny_models)
    loader = node_of(prompt, "EchoForcingLoadCausalDiT")
    prompt[loader]["inputs"]["ckpt_name"] = "self_forcing_dmd.pt"
    status, body, _ = run(comfy_server.url, prompt)
    assert status == 400
    details = json.dumps(body["node_errors"][loader])
    assert "self_forcing_dmd.pt" in details and "was not found in models/causal_dit or models/diffusion_models" \
        in details


def test_a_wrong_text_encoder_fails_before_any_block_with_a_clear_error(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_smooth.json"), tiny_models)
    clip = node_of(prompt, "CLIPLoader")
    prompt[clip]["inputs"]["type"] = "stable_diffusion"  # 768-wide CLIP-L output; the DiT takes 4096
    status, _, events = run(comfy_server.url, prompt)
    assert status == 200
    kind, data = events[-1]
    assert kind == "execution_error" and data["node_type"] == "EchoForcingSampler"
    assert "text encoding is 768 wide but the model takes 4096" in data["exception_message"]
    assert not [k for k, _ in events if k == "echo_forcing.block"]


def test_batch_command_runs_prompt_lines_through_the_real_queue(comfy_server, tiny_models, tmp_path):
    workflow = tmp_path / "hard_cut_tiny.json"
    workflow.write_text(json.dumps(tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_hard_cut.json"), tiny_models)),
                        encoding="utf-8")
    prompts = tmp_path / "story.txt"
    prompts.write_text("# two videos\n"
                       "a fox in the snow [0.75s#] | a lighthouse at night [0.75s]; fox | light\n"
                       "\n"
                       "a red kite over a beach [0.75s] | the kite dips towards the waves [0.75s]\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "echo_forcing", "queue", str(prompts), "--server", comfy_server.url,
           "--workflow", str(workflow), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = json.loads((out / "queue-state.json").read_text(encoding="utf-8"))
    records = sorted(state["lines"].values(), key=lambda r: r["line"]) if "lines" in state else state
    videos = sorted(out.glob("story-*/**/*.mp4"))
    assert [p.parent.relative_to(out).parts[0] for p in videos] == ["story-0002", "story-0004"], records
    assert all(p.read_bytes()[4:8] == b"ftyp" for p in videos)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # resume: nothing left to do
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert sorted(out.glob("story-*/**/*.mp4")) == videos
    assert "skip" in again.stdout.lower() or "done" in again.stdout.lower(), again.stdout


def test_the_workflow_generator_knows_the_real_node_definitions(comfy_server):
    from echo_forcing.cli.workflows import DEFS

    info = json.loads(get(comfy_server.url, "/object_info"))
    for node_type, definition in DEFS.items():
        order = info[node_type]["input_order"]
        host = order.get("required", []) + order.get("optional", [])
        ours = [n for n, _ in definition.inputs]
        # a newer ComfyUI may append optional inputs and outputs (v0.28.0: CreateVideo.bit_depth, SaveVideo's
        # video output); workflows written for v0.3.64 still load there, with those inputs at their defaults
        assert host[:len(ours)] == ours and set(host[len(ours):]) <= set(order.get("optional", [])), node_type
        outputs = list(zip(info[node_type]["output_name"], info[node_type]["output"], strict=True))
        assert outputs[:len(definition.outputs)] == list(definition.outputs), node_type


def _report(events: list, prompt: dict) -> dict:
    executed = {d["node"]: d["output"] for k, d in events if k == "executed"}
    return executed[node_of(prompt, "EchoForcingSampler")]["echo_timeline"][0]


def _latents(comfy_server, events: list, node: str):
    from safetensors.torch import load as load_safetensors

    saved = next(d["output"]["latents"][0] for k, d in events if k == "executed" and d["node"] == node)
    data = get(comfy_server.url, "/view?filename={filename}&subfolder={subfolder}&type={type}".format(**saved))
    return load_safetensors(data)["latent_tensor"]


def _with_latent_output(prompt: dict, tag: str) -> dict:
    sampler = node_of(prompt, "EchoForcingSampler")
    return {**prompt, "99": {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                                    "filename_prefix": f"echo_forcing/{tag}"}}}


def test_same_latents_from_core_unet_loader_and_load_causal_dit_and_research_checkpoints_load(comfy_server,
                                                                                                tiny_models):
    """The sampler takes a MODEL from core Load Diffusion Model and gives the same latents as with Load Causal
    DiT on the same file and on the same weights as a Self-Forcing .pt; the .pt + LongLive LoRA loads too."""
    base = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=1.5)
    loader = node_of(base, "EchoForcingLoadCausalDiT")
    variants = {"core": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_models["dit"],
                                                                "weight_dtype": "default"}},
                "pack": base[loader],
                "research": {**base[loader], "inputs": {**base[loader]["inputs"], "ckpt_name": tiny_models["dit_pt"]}},
                "lora": {**base[loader], "inputs": {**base[loader]["inputs"], "ckpt_name": tiny_models["dit_pt"],
                                                    "lora_name": tiny_models["lora"]}}}
    latents = {}
    for tag, loader_node in variants.items():
        prompt = _with_latent_output({**json.loads(json.dumps(base)), loader: loader_node}, f"latent_{tag}")
        status, body, events = run(comfy_server.url, prompt)
        assert status == 200 and events[-1][0] == "execution_success", (tag, body, events[-3:])
        latents[tag] = _latents(comfy_server, events, "99")
    assert list(latents["core"].shape) == [1, 16, 6, 4, 4]  # raw VAE-space LATENT [B, 16, T, H/8, W/8]
    assert latents["core"].isfinite().all()
    assert (latents["core"] == latents["pack"]).all() and (latents["pack"] == latents["research"]).all()
    assert not (latents["lora"] == latents["research"]).all()  # the LoRA was merged


@pytest.mark.parametrize(("name", "frames"), [("image_to_six_shots", 1), ("continue_clip", 3)])
def test_a_shot_opens_on_the_encoded_image_or_the_clips_last_block(comfy_server, tiny_models, name, frames):
    """Core Load Image / Load Video -> Image Scale -> VAE Encode -> Scene Prompt's start_latent: the sampler's
    video begins with the encoded frames (the clip's last 3 of 5 latent frames), unchanged."""
    prompt = _with_latent_output(tiny_workflow(API_WORKFLOWS[0].with_name(f"{name}.json"), tiny_models), name)
    encode = node_of(prompt, "VAEEncode")
    prompt["98"] = {"class_type": "SaveLatent", "inputs": {"samples": [encode, 0],
                                                          "filename_prefix": f"echo_forcing/{name}_start"}}
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200 and events[-1][0] == "execution_success", (body, events[-3:])
    video, start = _latents(comfy_server, events, "99"), _latents(comfy_server, events, "98")
    assert list(start.shape) == [1, 16, 1 if frames == 1 else 5, 4, 4]
    assert (video[:, :, :frames] - start[:, :, -frames:]).abs().max() < 1e-4
    assert video.isfinite().all() and not (video[:, :, frames:frames + 1] == video[:, :, frames - 1:frames]).all()


def test_core_causal_wan_model_class_runs_in_the_sampler(comfy_server, tiny_models):
    """A DiT stamped as ComfyUI's own causal Wan (safetensors metadata {"transformer": {"causal_ar": true}}) loads
    through core Load Diffusion Model as core's causal model class where the host has one (v0.28.0:
    WAN21_CausalAR / CausalWanModel; older hosts load it as plain WAN21); the sampler runs it and gives the
    latents of the same weights loaded by Load Causal DiT."""
    from safetensors.torch import load_file, save_file

    source = comfy_server.models_dir / "diffusion_models" / tiny_models["dit"]
    stamped = source.with_name("echo_forcing_tiny_causal_ar.safetensors")
    save_file(load_file(str(source)), str(stamped),
              metadata={"config": json.dumps({"transformer": {"causal_ar": True}})})
    base = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=1.5)
    loader = node_of(base, "EchoForcingLoadCausalDiT")
    latents = {}
    for tag, loader_node in (("pack", base[loader]),
                             ("core_causal", {"class_type": "UNETLoader",
                                              "inputs": {"unet_name": stamped.name, "weight_dtype": "default"}})):
        prompt = _with_latent_output({**json.loads(json.dumps(base)), loader: loader_node}, f"latent_{tag}")
        status, body, events = run(comfy_server.url, prompt)
        assert status == 200 and events[-1][0] == "execution_success", (tag, body, events[-3:])
        latents[tag] = _latents(comfy_server, events, "99")
    assert (latents["core_causal"] == latents["pack"]).all()
    version = json.loads(get(comfy_server.url, "/system_stats"))["system"]["comfyui_version"]
    has_causal_class = tuple(int(x) for x in version.split(".")[:2]) >= (0, 28)
    loaded = re.findall(r"Requested to load (WAN21\w*)", comfy_server.log())
    assert loaded and loaded[-1] == ("WAN21_CausalAR" if has_causal_class else "WAN21"), (version, loaded[-3:])


def test_the_model_card_travels_to_the_sampler_and_a_contradicting_card_is_refused(comfy_server, tiny_models):
    """Load Causal DiT's model_card: with auto the tiny file (a Wan2.1 DiT of a size no card describes) runs with
    Self-Forcing's settings and the report says why; a card for other weights is refused before any block; the
    canvas reads the cards' block sizes from the route."""
    from echo_forcing.models import model_cards

    assert json.loads(get(comfy_server.url, "/echo_forcing/model_cards")) == json.loads(json.dumps(
        model_cards.table()))
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=1.5)
    loader, sampler = node_of(prompt, "EchoForcingLoadCausalDiT"), node_of(prompt, "EchoForcingSampler")
    assert prompt[loader]["inputs"]["model_card"] == "auto" and prompt[sampler]["inputs"]["steps"] == 0
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200 and events[-1][0] == "execution_success", (body, events[-3:])
    report = next(d for k, d in events if k == "executed" and d["node"] == sampler)["output"]["text"][0]
    plan = next(d for k, d in events if k == "echo_forcing.plan")
    assert plan["frames_per_block"] == 3 and plan["total_blocks"] == 2, plan
    assert "note: model card: echo_forcing_tiny_dit.safetensors is a Wan2.1 DiT of width" in report, report
    assert "which no model card describes: it gets Self-Forcing's settings (3-frame blocks, 4 steps)" in report
    prompt[loader]["inputs"]["model_card"] = "causal-forcing++-2step"
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200
    kind, data = events[-1]
    assert kind == "execution_error" and data["node_type"] == "EchoForcingLoadCausalDiT", (kind, data)
    assert "is for wan2.1-t2v-1.3b (width 1536, 30 layers, 16 latent channels) but the weights have width" \
        in data["exception_message"]
    assert not [k for k, _ in events if k == "echo_forcing.block"]


def test_krea_with_the_vae_re_encodes_its_first_context_frame_from_the_decoded_pixels(comfy_server, tiny_models):
    """The krea preset with core Load VAE's Wan2.1 VAE on the sampler's vae input runs the release default: from the
    third block on, the first context frame is re-encoded from the pixels the sampler decodes as it goes. The first
    two blocks equal the keep-first run's, the third does not; the report says which mode ran."""
    base = tiny_workflow(API_WORKFLOWS[0].with_name("long_video_60s.json"), tiny_models, seconds=2.25)
    sampler, config = node_of(base, "EchoForcingSampler"), node_of(base, "EchoForcingMemoryConfig")
    base[config]["inputs"]["preset"] = "krea"
    latents, reports = {}, {}
    for tag, vae in (("kept", None), ("reencoded", [node_of(base, "VAELoader"), 0])):
        prompt = _with_latent_output(json.loads(json.dumps(base)), f"krea_{tag}")
        if vae is not None:
            prompt[sampler]["inputs"]["vae"] = vae
        status, body, events = run(comfy_server.url, prompt)
        assert status == 200 and events[-1][0] == "execution_success", (tag, body, events[-3:])
        latents[tag] = _latents(comfy_server, events, "99")
        reports[tag] = next(d for k, d in events if k == "executed" and d["node"] == sampler)["output"]["text"][0]
    assert latents["kept"].shape == (1, 16, 9, 4, 4)
    assert torch_equal(latents["kept"][:, :, :6], latents["reencoded"][:, :, :6])
    assert not torch_equal(latents["kept"][:, :, 6:], latents["reencoded"][:, :, 6:])
    assert "first frame stays the first context frame" in reports["kept"], reports["kept"]
    assert "re-encoded from the decoded pixels through the VAE" in reports["reencoded"], reports["reencoded"]


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_a_later_job_recalls_a_scene_from_a_saved_pool(comfy_server, tiny_models):
    pools = comfy_server.output_dir / "echo_forcing" / "scene_pools"
    if not (pools / "recall_abcabc.safetensors").is_file():
        status, _, events = run(comfy_server.url, tiny_workflow(API_WORKFLOWS[0].with_name("recall_abcabc.json"),
                                                                tiny_models))
        assert status == 200 and events[-1][0] == "execution_success"
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("recall_abcabc.json"), tiny_models)
    pool_in = node_of(prompt, "EchoForcingSceneRecallPool")
    prompt[pool_in]["inputs"]["pool"] = "recall_abcabc"
    shots = [k for k, v in prompt.items() if v["class_type"] == "EchoForcingScenePrompt"]
    # keep shots 1 and 2 only: a new place, then a recall of the greenhouse of the EARLIER job
    prompt[node_of(prompt, "EchoForcingSampler")]["inputs"]["scenes"] = [shots[1], 0]
    prompt[shots[1]]["inputs"].update(transition="recall", recall_target="greenhouse", label="later")
    prompt[shots[0]]["inputs"]["label"] = "new place"
    prompt[node_of(prompt, "EchoForcingSaveScenePool")]["inputs"]["name"] = "later_job"
    for key in shots[2:]:
        del prompt[key]
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200 and events[-1][0] == "execution_success", (body, events[-3:])
    second = _report(events, prompt)["scenes"][1]
    assert (second["mode"], second["recalled"]) == ("recall", "greenhouse")
    switch = next(d for k, d in events if k == "echo_forcing.switch")
    assert switch["recalled"] == "greenhouse" and switch["mode"] == "recall"
    assert (pools / "later_job.safetensors").is_file()
    bad = json.loads(json.dumps(prompt))
    bad[pool_in]["inputs"]["pool"] = "../../secrets"
    status, body, _ = run(comfy_server.url, bad)
    assert status == 400 and "invalid scene pool name" in json.dumps(body["node_errors"][pool_in])


def test_changing_the_last_shot_generates_only_that_shot_and_equals_a_fresh_run(comfy_server, tiny_models):
    """Queue the six-shot workflow, change the last shot's prompt, queue again: only the last shot is generated
    (the report says so) and its video equals the same edited graph generated from scratch."""
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_smooth.json"), tiny_models)
    sampler = node_of(prompt, "EchoForcingSampler")
    prompt[sampler]["inputs"]["seed"] = 1234  # not shared with the other tests' runs
    status, _, events = run(comfy_server.url, _with_latent_output(prompt, "edit_before"))
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    shots = [k for k, v in prompt.items() if v["class_type"] == "EchoForcingScenePrompt"]
    edited = json.loads(json.dumps(prompt))
    edited[shots[-1]]["inputs"]["text"] += " He smiles and wipes his hands on the apron."
    status, _, events = run(comfy_server.url, _with_latent_output(edited, "edit_after"))
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert next(d for k, d in events if k == "echo_forcing.reused")["shots"] == 5
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == [5]
    executed = {d["node"]: d["output"] for k, d in events if k == "executed"}
    assert [s["state"] for s in executed[sampler]["echo_timeline"][0]["scenes"]] == ["reused"] * 5 + ["generated"]
    assert "reused shots 1-5" in executed[sampler]["text"][0]
    reused = _latents(comfy_server, events, "99")
    fresh = json.loads(json.dumps(edited))
    fresh[sampler]["inputs"]["reuse_shots"] = False
    status, _, events = run(comfy_server.url, _with_latent_output(fresh, "edit_fresh"))
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == list(range(6))
    assert (_latents(comfy_server, events, "99") == reused).all()


def test_stop_after_a_shot_then_queue_again_goes_on(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_smooth.json"), tiny_models)
    sampler = node_of(prompt, "EchoForcingSampler")
    prompt[sampler]["inputs"].update(seed=777, stop_after_shot=3)
    status, _, events = run(comfy_server.url, _with_latent_output(prompt, "stopped"))
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == [0, 1, 2]
    assert list(_latents(comfy_server, events, "99").shape) == [1, 16, 9, 4, 4]  # three shots of 3 latent frames
    prompt[sampler]["inputs"]["stop_after_shot"] = 0
    status, _, events = run(comfy_server.url, _with_latent_output(prompt, "went_on"))
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == [3, 4, 5]


def test_the_stop_route_ends_the_run_after_the_shot_asked_for(comfy_server, tiny_models):
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_smooth.json"), tiny_models)
    sampler = node_of(prompt, "EchoForcingSampler")
    prompt[sampler]["inputs"]["seed"] = 4321
    first = next(k for k, v in prompt.items() if v["class_type"] == "EchoForcingScenePrompt"
                 and "previous" not in v["inputs"])
    prompt[first]["inputs"]["duration"] = 12.0  # 16 blocks: the requests below arrive long before shot 2 ends
    answers = []

    async def stop_after_shot_2(session, event, client_id):
        if event[0] != "echo_forcing.block" or event[1]["block"] != 0:
            return
        stop = f"{comfy_server.url}/echo_forcing/stop_after_shot"
        pid = event[1]["prompt_id"]
        for body in ({}, {"prompt_id": pid, "shot": 0}, {"prompt_id": pid, "shot": True}, {"prompt_id": pid, "x": 1},
                     {"prompt_id": pid, "shot": 2},  # no client_id: this prompt was queued by a client
                     {"prompt_id": pid, "shot": 2, "client_id": "somebody-else"},
                     {"prompt_id": pid, "shot": 2, "client_id": client_id}):
            async with session.post(stop, json=body) as answer:
                answers.append((answer.status, await answer.json()))

    status, _, events = run(comfy_server.url, _with_latent_output(prompt, "route_stopped"), stop_after_shot_2)
    assert status == 200 and events[-1][0] == "execution_success", events[-3:]
    assert [a[0] for a in answers] == [400, 400, 400, 400, 403, 403, 200], answers
    assert answers[-1][1]["stop_after_shot"] == 2
    plan = next(d for k, d in events if k == "echo_forcing.plan")
    blocks = [scene["blocks"] for scene in plan["scenes"]]
    assert blocks[0] == 16
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == list(range(sum(blocks[:2])))
    # a complete, shorter video: the LATENT holds exactly shots 1 and 2 (3 latent frames per block)
    assert _latents(comfy_server, events, "99").shape[2] == 3 * sum(blocks[:2])
    executed = {d["node"]: d["output"] for k, d in events if k == "executed"}
    assert [s["state"] for s in executed[sampler]["echo_timeline"][0]["scenes"]] == \
        ["generated"] * 2 + ["not generated"] * 4
    assert [d["scene"] for k, d in events if k == "echo_forcing.shot"] == [0, 1]  # each with its thumbnail
    assert all(d["thumbnail"].startswith("data:image/jpeg;base64,") for k, d in events if k == "echo_forcing.shot")

    bad = asyncio.run(_post(comfy_server.url, "/echo_forcing/stop_after_shot", b"not json"))
    assert bad == 400
    assert asyncio.run(_post(comfy_server.url, "/echo_forcing/stop_after_shot", b"{}")) == 400
    too_big = b'{"prompt_id": "' + b"x" * 5000 + b'"}'
    assert asyncio.run(_post(comfy_server.url, "/echo_forcing/stop_after_shot", too_big)) == 413
    for unknown in (b'{"prompt_id": "not-a-prompt"}', b'{"prompt_id": "' + b"x" * 200 + b'"}'):
        assert asyncio.run(_post(comfy_server.url, "/echo_forcing/stop_after_shot", unknown)) == 404
    assert asyncio.run(_post(comfy_server.url, "/echo_forcing/stop_after_shot", b'{"prompt_id": 5}')) == 400

    # The same graph queued again is not the stopped result from ComfyUI's cache: it goes on from shot 3.
    status, _, events = run(comfy_server.url, prompt)
    assert status == 200 and events[-1][0] == "execution_success"
    assert [d["shots"] for k, d in events if k == "echo_forcing.reused"] == [2]
    assert [d["block"] for k, d in events if k == "echo_forcing.block"] == list(range(sum(blocks[:2]), sum(blocks)))


async def _post(url: str, path: str, data: bytes) -> int:
    async with aiohttp.ClientSession() as session, session.post(url + path, data=data) as answer:
        return answer.status


def test_bad_story_names_are_refused_at_submit(comfy_server, tiny_models):
    _ensure_story(comfy_server, tiny_models)
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("story_2_three_more.json"), tiny_models)
    loader = node_of(prompt, "EchoForcingLoadStory")
    for name, message in (("../../etc/passwd", "invalid story name"), ("no such story", "was not found")):
        bad = json.loads(json.dumps(prompt))
        bad[loader]["inputs"]["story"] = name
        status, body, _ = run(comfy_server.url, bad)
        assert status == 400 and message in json.dumps(body["node_errors"]), body
    saver = node_of(prompt, "EchoForcingSaveStory")
    bad = json.loads(json.dumps(prompt))
    bad[saver]["inputs"]["name"] = "../outside"
    status, body, events = run(comfy_server.url, bad)  # the other outputs (the video) are still valid: queued
    assert "invalid story name" in json.dumps(body["node_errors"][saver]), body
    assert status == 400 or saver not in {d["node"] for k, d in events if k == "executed"}
    assert not (comfy_server.output_dir / "echo_forcing" / "outside.safetensors").exists()


def test_consecutive_batch_jobs_sharing_shots_reuse_them(comfy_server, tiny_models, tmp_path):
    """The batch command needs nothing for reuse: the second line (the first with its last shot changed) runs
    on the same server and generates only its last shot."""
    workflow = tmp_path / "hard_cut_tiny.json"
    workflow.write_text(json.dumps(tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_hard_cut.json"), tiny_models)),
                        encoding="utf-8")
    prompts = tmp_path / "edits.txt"
    prompts.write_text("a heron on a frozen pond [0.75s#] | a red tram at night [0.75s#] | a kite at noon [0.75s]\n"
                       "a heron on a frozen pond [0.75s#] | a red tram at night [0.75s#] | a kite over the sea "
                       "[0.75s]\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "echo_forcing", "queue", str(prompts), "--server", comfy_server.url,
           "--workflow", str(workflow), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    states = []
    for line in ("0001", "0002"):
        record = json.loads((out / f"edits-{line}" / "job.json").read_text(encoding="utf-8"))
        timeline = next(o["echo_timeline"][0] for o in record["outputs"].values() if "echo_timeline" in o)
        states.append([s["state"] for s in timeline["scenes"]])
    assert states == [["generated"] * 3, ["reused", "reused", "generated"]]


MISSING = object()
"""A BAD_INPUTS value: the input is left out of the prompt."""

NOT_IN_LIST, CUSTOM, MISSING_INPUT = "value_not_in_list", "custom_validation_failed", "required_input_missing"
BAD_INPUTS = [
    # (workflow, node class, input, value, ComfyUI's error type, text its details start with)
    ("six_shot_smooth", "EchoForcingLoadCausalDiT", "ckpt_name", MISSING, MISSING_INPUT, "ckpt_name"),
    ("six_shot_smooth", "EchoForcingLoadCausalDiT", "ckpt_name", "nope_dit.safetensors", CUSTOM,
     "ckpt_name - Load Causal DiT: ckpt_name 'nope_dit.safetensors' was not found in models/causal_dit or "
     "models/diffusion_models; put the checkpoint there"),
    ("six_shot_smooth", "EchoForcingLoadCausalDiT", "lora_name", "nope_lora.pt", NOT_IN_LIST,
     "lora_name: 'nope_lora.pt' not in ['none', 'echo_forcing_tiny_longlive_lora.pt']"),
    ("six_shot_smooth", "EchoForcingLoadCausalDiT", "weight_dtype", "fp4", NOT_IN_LIST, "weight_dtype: 'fp4' not in"),
    ("six_shot_smooth", "EchoForcingLoadCausalDiT", "weights", "best", NOT_IN_LIST,
     "weights: 'best' not in ['auto', 'ema', 'generator']"),
    ("six_shot_smooth", "EchoForcingSampler", "width", 500, CUSTOM,
     "Autoregressive Sampler: width 500 is not a multiple of 16; use 496 or 512"),
    ("six_shot_smooth", "EchoForcingSampler", "height", 0, CUSTOM,
     "Autoregressive Sampler: height 0 is below the minimum of 16; use 16 or more"),
    ("six_shot_smooth", "EchoForcingSampler", "height", MISSING, MISSING_INPUT, "height"),
    ("six_shot_smooth", "EchoForcingSampler", "noise", "pink", NOT_IN_LIST, "noise: 'pink' not in ['per-shot', "
     "'official']"),
    ("six_shot_smooth", "EchoForcingSampler", "steps", -1, "value_smaller_than_min", "steps"),
    ("six_shot_smooth", "EchoForcingSampler", "fps", 1000, "value_bigger_than_max", "fps"),
    ("six_shot_smooth", "EchoForcingSampler", "stop_after_shot", -1, "value_smaller_than_min", "stop_after_shot"),
    ("six_shot_smooth", "EchoForcingMemoryConfig", "preset", "nope", NOT_IN_LIST, "preset: 'nope' not in "
     "['echo-forcing', "),
    ("six_shot_smooth", "EchoForcingMemoryConfig", "recall_matching", "exact", NOT_IN_LIST, "recall_matching: "),
    ("six_shot_smooth", "EchoForcingMemoryConfig", "recall_scope", "all", NOT_IN_LIST, "recall_scope: 'all' not in"),
    ("six_shot_smooth", "EchoForcingMemoryConfig", "preset", MISSING, MISSING_INPUT, "preset"),
    ("six_shot_smooth", "EchoForcingMemoryConfig", "scene_pool_size", 5000, "value_bigger_than_max",
     "scene_pool_size"),
    ("six_shot_smooth", "EchoForcingScenePrompt", "transition", "fade", NOT_IN_LIST,
     "transition: 'fade' not in ['smooth', 'hard cut', 'recall', 'auto']"),
    ("six_shot_smooth", "EchoForcingScenePrompt", "recall_target", "0", CUSTOM,
     "recall_target - Scene Prompt: recall_target '0' is not a shot number: shots are numbered from 1; give an "
     "earlier shot's number (1, 2, ...), its label, or 'auto'"),
    ("six_shot_smooth", "EchoForcingScenePrompt", "recall_target", "shot 0", CUSTOM,
     "recall_target - Scene Prompt: recall_target 'shot 0' is not a shot number"),
    ("six_shot_smooth", "EchoForcingScenePrompt", "duration", 0, "value_smaller_than_min", "duration"),
    ("recall_abcabc", "EchoForcingSceneRecallPool", "pool", "../x", CUSTOM,
     "pool - Scene Recall Pool: pool: invalid scene pool name '../x': use 1-100 letters"),
    ("recall_abcabc", "EchoForcingSceneRecallPool", "pool", "no such pool", CUSTOM,
     "pool - Scene Recall Pool: pool: scene pool 'no such pool' was not found"),
    ("six_shot_hard_cut", "EchoForcingSceneScript", "script", "a fox in the snow [10x] | a lighthouse [5s]", CUSTOM,
     "script - Scene Script: bad scene script: scene 1: "),
    ("six_shot_hard_cut", "EchoForcingSceneScript", "script", "", CUSTOM,
     "script - Scene Script: bad scene script: scene 1: "),
    ("story_2_three_more", "EchoForcingLoadStory", "story", "../x", CUSTOM,
     "story - Load Story: story: invalid story name '../x'"),
]
"""Bad inputs a submitted prompt can hold (the API queue takes any literal; the frontend's widgets would not),
each refused at submit on that one input. Both hosts give the same answers: ComfyUI checks the combos itself
(v0.3.64 through nodes.validation.CombosChecked), the ranges and the missing inputs; the pack's
validate_inputs checks what ComfyUI cannot (file names, the frame size's step, a script, a recall target)."""


def _case_id(case) -> str:
    value = "missing" if case[3] is MISSING else str(case[3])[:12]
    return f"{case[1].removeprefix('EchoForcing')}-{case[2]}-{value}"


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[_case_id(c) for c in BAD_INPUTS])
def test_a_bad_input_is_refused_at_submit_on_that_input_alone(comfy_server, tiny_models, case):
    workflow, node_class, name, value, kind, text = case
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name(f"{workflow}.json"), tiny_models)
    node = node_of(prompt, node_class)
    if value is MISSING:
        del prompt[node]["inputs"][name]
    else:
        prompt[node]["inputs"][name] = value
    status, body, _ = run(comfy_server.url, prompt)
    assert status == 400, body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["node_errors"]) == {node}, body["node_errors"]  # the nodes after it have no errors of their own
    errors = body["node_errors"][node]["errors"]
    if node_class == "EchoForcingSampler" and kind == CUSTOM:
        # the frame size is the one check of two inputs: ComfyUI puts its message on both (named in it)
        assert sorted(e["extra_info"]["input_name"] for e in errors) == ["height", "width"], errors
        assert all(e["type"] == kind and e["details"].startswith(e["extra_info"]["input_name"] + " - " + text)
                   for e in errors), errors
        return
    assert len(errors) == 1, errors
    error = errors[0]
    assert (error["type"], error["extra_info"]["input_name"]) == (kind, name), error
    assert error["details"].startswith(text), error
    assert "exception" not in json.dumps(body)


def test_a_linked_input_that_validate_inputs_reads_is_checked_when_the_node_runs(comfy_server, tiny_models):
    """A linked input reaches validate_inputs as None: the prompt is queued and the run refuses the bad script
    with the same message (before any block)."""
    prompt = tiny_workflow(API_WORKFLOWS[0].with_name("six_shot_hard_cut.json"), tiny_models)
    script = node_of(prompt, "EchoForcingSceneScript")
    prompt["90"] = {"class_type": "PrimitiveString", "inputs": {"value": "a fox in the snow [10x]"}}
    prompt[script]["inputs"]["script"] = ["90", 0]
    status, body, events = run(comfy_server.url, prompt)
    assert status == 200 and body["node_errors"] == {}, body
    error = next(d for k, d in events if k == "execution_error")
    assert error["node_id"] == script and "scene 1" in error["exception_message"], error
    assert "[10x]" in error["exception_message"], error
    assert not [k for k, _ in events if k == "echo_forcing.block"]
