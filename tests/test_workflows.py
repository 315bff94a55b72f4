"""The shipped example workflows: up to date with their generator, UI and API formats in agreement, model
download hints on every loader. (The real frontend and the real queue check them in the real-host tests.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from echo_forcing.cli import workflows as gen

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["continue_clip", "image_to_six_shots", "long_video_60s", "recall_abcabc", "six_shot_hard_cut",
         "six_shot_smooth", "story_1_six_shots", "story_2_three_more"]


EXAMPLES, API = ROOT / "example_workflows", ROOT / "workflows" / "api"


def load(*parts: str) -> dict:
    folder = API if parts[0] == "api" else EXAMPLES
    return json.loads(folder.joinpath(*parts[1:] if parts[0] == "api" else parts).read_text(encoding="utf-8"))


def test_the_workflows_are_shipped_in_both_formats_and_up_to_date():
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == NAMES
    assert sorted(p.stem for p in API.glob("*.json")) == NAMES
    assert gen.write(check=True) == [], "run: python -m echo_forcing workflows"
    # ComfyUI lists the JSON files of every example folder it knows (example_workflows, workflows, ...) as
    # templates: only example_workflows/ may hold UI workflows, or the template browser shows each twice.
    assert not list((ROOT / "workflows").glob("*.json"))


@pytest.mark.parametrize("name", NAMES)
def test_every_template_has_a_jpeg_thumbnail(name):
    """The frontend's template browser shows ``<name>.jpg`` next to ``<name>.json`` (a placeholder without)."""
    thumbnail = EXAMPLES / f"{name}.jpg"
    assert thumbnail.is_file(), f"{thumbnail.name} is missing: refresh with ECHO_TEMPLATE_THUMBNAILS=1 (see " \
                                "example_workflows/README.md)"
    data = thumbnail.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", f"{thumbnail.name} is not a JPEG file"
    assert 5_000 < len(data) < 250_000, f"{thumbnail.name}: {len(data)} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_ui_links_and_widget_values_say_what_the_api_file_says(name):
    ui, api = load(f"{name}.json"), load("api", f"{name}.json")
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert set(api) == {str(i) for i in nodes}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"]) and ui["version"] == 0.4
    for link in ui["links"]:
        assert_link_matches_api(link, nodes, api)
    for node_id, node in nodes.items():
        assert_node_matches_api(node, api[str(node_id)])


def assert_link_matches_api(link: list, nodes: dict, api: dict) -> None:
    """A UI link is recorded on both its ends and is the API input it connects."""
    link_id, src, slot, dst, target_slot, kind = link
    target = nodes[dst]
    name_in = target["inputs"][target_slot]["name"]
    assert target["inputs"][target_slot]["link"] == link_id
    assert api[str(dst)]["inputs"][name_in] == [str(src), slot]
    assert link_id in nodes[src]["outputs"][slot]["links"] and nodes[src]["outputs"][slot]["type"] == kind


def assert_node_matches_api(node: dict, api_node: dict) -> None:
    """A UI node has the API node's class, its widget values in the definition's order (a seed widget followed by
    "fixed", a file combo with an upload button by "image"; an optional widget the workflow leaves out is in
    neither), and every API input is either linked in the UI or a literal."""
    definition = gen.DEFS[node["type"]]
    assert api_node["class_type"] == node["type"]
    values = iter(node["widgets_values"])
    for input_name, kind in definition.inputs:
        if kind.startswith("widget:") and input_name in api_node["inputs"]:
            assert next(values) == api_node["inputs"][input_name], (node["type"], input_name)
            if input_name == definition.seed_control:
                assert next(values) == "fixed"
            if definition.upload:
                assert next(values) == "image"
    assert next(values, None) is None
    linked = {i["name"] for i in node["inputs"] if i["link"] is not None}
    literal = {k for k, v in api_node["inputs"].items() if not isinstance(v, list)}
    assert linked | literal == set(api_node["inputs"])


@pytest.mark.parametrize("name", NAMES)
def test_every_loader_names_its_file_url_and_folder(name):
    ui = load(f"{name}.json")
    hints = {m["name"]: m for m in ui["models"]}
    # the DiT is the safetensors `models download self-forcing-dmd` converts; it has no URL, so no hint
    assert set(hints) == {"umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"}
    for hint in hints.values():  # at the registry's pinned commit
        assert re.fullmatch(r"https://huggingface\.co/[^/]+/[^/]+/resolve/[0-9a-f]{40}/.+", hint["url"])
        assert hint["url"].endswith("/" + hint["name"])
    folders = {"EchoForcingLoadCausalDiT": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae"}
    loaders = [n for n in ui["nodes"] if n["type"] in folders]
    assert len(loaders) == 3
    for node in loaders:
        if node["type"] == "EchoForcingLoadCausalDiT":
            assert node["widgets_values"][0] == "self_forcing_dmd.safetensors" and "models" not in node["properties"]
            continue
        (hint,) = node["properties"]["models"]
        assert hint["name"] == node["widgets_values"][0] and hint["directory"] == folders[node["type"]]


def test_workflow_contents():
    smooth, cut, recall, long = (load("api", f"{n}.json") for n in
                                 ("six_shot_smooth", "six_shot_hard_cut", "recall_abcabc", "long_video_60s"))

    def of(api, kind):
        return [v["inputs"] for v in api.values() if v["class_type"] == kind]

    assert [s["transition"] for s in of(smooth, "EchoForcingScenePrompt")] == ["smooth"] * 6
    (script,) = of(cut, "EchoForcingSceneScript")
    from echo_forcing.pipeline import Transition, parse_scene_script

    scenes = parse_scene_script(script["script"])
    assert len(scenes) == 6 and [s.entry for s in scenes[1:]] == [Transition.HARD_CUT] * 5
    shots = of(recall, "EchoForcingScenePrompt")
    assert [s["transition"] for s in shots] == ["smooth", "hard cut", "hard cut", "recall", "recall", "recall"]
    assert [s["recall_target"] for s in shots[3:]] == ["greenhouse", "auto", "3"]
    assert len(of(recall, "EchoForcingSaveScenePool")) == 1 and len(of(recall, "EchoForcingSceneRecallPool")) == 1
    (only,) = of(long, "EchoForcingScenePrompt")
    assert only["duration"] == 60.0
    part1, part2 = (load("api", f"{n}.json") for n in ("story_1_six_shots", "story_2_three_more"))
    (saved,) = of(part1, "EchoForcingSaveStory")
    (loaded,) = of(part2, "EchoForcingLoadStory")
    assert loaded["story"] == saved["name"] == "pottery_six_shots"
    new = of(part2, "EchoForcingScenePrompt")
    assert len(of(part1, "EchoForcingScenePrompt")) == 6 and len(new) == 3
    load_story = next(k for k, v in part2.items() if v["class_type"] == "EchoForcingLoadStory")
    assert new[0].get("previous") == [load_story, 0]
    for api in (smooth, cut, recall, long, part1, part2):
        (sampler,) = of(api, "EchoForcingSampler")
        assert (sampler["width"], sampler["height"], sampler["fps"], sampler["steps"], sampler["shift"]) == (
            832, 480, 16.0, 0, 5.0)  # steps 0: the model card's (Self-Forcing: 4)
        assert of(api, "EchoForcingLoadCausalDiT")[0]["model_card"] == "auto"
        assert (sampler["noise"], sampler["reuse_shots"], sampler["stop_after_shot"]) == ("per-shot", True, 0)
        assert of(api, "EchoForcingMemoryConfig")[0]["recall_scope"] == "shots so far"
        assert of(api, "CreateVideo")[0]["fps"] == 16.0 and of(api, "CLIPLoader")[0]["type"] == "wan"
