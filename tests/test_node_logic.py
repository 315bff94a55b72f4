"""The pure logic behind the ComfyUI nodes (no ComfyUI): shot chaining, memory options, pool names, the run
report and the timeline payload, the step list."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from echo_forcing.memory import (
    PRESET_DEFAULT,
    ConfigError,
    EchoMemory,
    PresetChoice,
    ScenePoolError,
    SelfForcingCacheConfig,
    pool_file,
    pool_names,
)
from echo_forcing.memory.config import DecayStrategy, MatchMethod
from echo_forcing.models import CausalWan, evenly_spaced_steps
from echo_forcing.pipeline import (
    SceneList,
    SceneListError,
    Transition,
    build_report,
    generate,
    parse_scene_script,
    plan_run,
    report_text,
    timeline,
)
from echo_forcing.pipeline.scene_list import conditioning_tensor, parse_recall_target, transition_from_name


def emb(width: int = 64, tokens: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))


# ---- shot chaining -----------------------------------------------------------------------------------------


def test_chaining_returns_new_lists_and_keeps_the_earlier_ones_unchanged():
    one = SceneList().then("a fox in snow", emb(), 10, "hard cut", "auto", "forest")
    two = one.then("the fox sleeps", emb(seed=1), 5.5, "smooth", "", "")
    three = two.then("back in the forest", emb(seed=2), 4, "recall", "forest", "return")
    assert [len(x) for x in (one, two, three)] == [1, 2, 3]
    assert one.shots[0] is three.shots[0]  # shared, never copied or changed
    scenes = three.scenes
    assert [s.entry for s in scenes] == [None, Transition.SMOOTH, Transition.RECALL]  # shot 1's transition dropped
    assert [s.duration for s in scenes] == [10.0, 5.5, 4.0]
    assert scenes[2].recall_target == "forest" and scenes[1].label is None
    assert [three.title(i) for i in range(3)] == ["forest", "shot 2", "return"]
    assert three.seconds == 19.5
    assert repr(three) == "SceneList(3 shots: forest 10s, shot 2 5.5s, return 4s)"
    with pytest.raises(AttributeError):
        three.shots = ()


@pytest.mark.parametrize(("text", "shot", "expected"), [
    ("auto", 3, None), ("", 3, None), ("  AUTO ", 3, None), ("1", 3, 0), ("#2", 3, 1), ("shot 2", 3, 1),
    ("kitchen", 3, "kitchen"), ("2nd kitchen", 3, "2nd kitchen"),
])
def test_recall_targets_are_auto_earlier_shot_numbers_or_labels(text, shot, expected):
    assert parse_recall_target(text, shot) == expected


@pytest.mark.parametrize(("text", "shot", "message"), [
    ("3", 3, "not an earlier shot; choose one of shots 1..2"),
    ("0", 3, "not an earlier shot"),
    ("2", 2, "choose one of shot 1"),
])
def test_recall_targets_that_are_not_earlier_shots_are_refused(text, shot, message):
    with pytest.raises(SceneListError, match=message):
        parse_recall_target(text, shot)


def test_transition_names():
    assert [transition_from_name(n, 2) for n in ("smooth", "hard cut", "recall", "auto", "hardcut", "Hard_Cut",
                                                 Transition.RECALL)] == [
        Transition.SMOOTH, Transition.HARD_CUT, Transition.RECALL, Transition.AUTO, Transition.HARD_CUT,
        Transition.HARD_CUT, Transition.RECALL]
    with pytest.raises(SceneListError, match="shot 2: unknown transition 'fade'; choose one of: smooth, hard cut"):
        transition_from_name("fade", 2)


def test_one_vocabulary_for_transitions():
    """Node options, script markers, memory modes and report names all come from the one enum."""
    assert Transition.labels() == ["smooth", "hard cut", "recall", "auto"]
    assert [t.marker for t in Transition.modes()] == ["", "#", "@"]
    assert [Transition.from_marker(t.marker) for t in Transition.modes()] == list(Transition.modes())
    assert [Transition.from_label(t.label) for t in Transition] == list(Transition)
    assert Transition.AUTO not in Transition.modes()
    with pytest.raises(ValueError, match="no marker"):
        _ = Transition.AUTO.marker


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: s.then("", emb(), 5, "smooth", encoder=object()), "shot 2: the prompt text is empty"),
    (lambda s: s.then("x", emb(width=32), 5, "smooth"), "shot 2: its text encoding is 32 wide but shot 1's is 64"),
    (lambda s: s.then("x", emb(), 5, "smooth", label="Forest"), "label 'Forest' is already used"),
    (lambda s: s.then("x", emb(), 0, "smooth"), "duration must be a positive number"),
    (lambda s: s.then("x", emb(), 5, "smooth", recall_target="forest"), "needs the transition 'recall' or 'auto'"),
    (lambda s: s.then("x", emb(), 5, "hard cut", recall_target="1"), "not 'hard cut'"),
    (lambda s: s.then("x", emb(), 5, "recall", recall_target="2"), "shot 2: recall target '2' is not an earlier"),
    (lambda s: s.then("x", torch.zeros(2, 5, 64), 5, "smooth"), "expected prompt embeddings \\[1, tokens, width\\]"),
])
def test_bad_shots_are_refused_with_the_shot_named(make, message):
    first = SceneList().then("a fox", emb(), 5, "smooth", label="forest")
    with pytest.raises(SceneListError, match=message):
        make(first)


def test_a_conditioning_without_text_is_named_after_its_label_or_number():
    shots = SceneList().then("", emb(), 5, "smooth").then("  ", emb(), 5, "hard cut", label="pier")
    assert [s.prompt for s in shots.scenes] == ["shot 1", "pier"]


def test_conditioning_tensor_reads_one_core_conditioning_entry():
    cond = emb(width=4096, tokens=77)
    assert conditioning_tensor([[cond, {"pooled_output": None}]], 1) is cond
    with pytest.raises(SceneListError, match="holds 2 entries"):
        conditioning_tensor([[cond, {}], [cond, {}]], 2)
    with pytest.raises(SceneListError, match="shot 3: the conditioning has batch 2"):
        conditioning_tensor([[torch.zeros(2, 77, 8), {}]], 3)
    with pytest.raises(SceneListError, match="empty"):
        conditioning_tensor([], 1)


def test_scene_script_lists_keep_entries_titles_and_targets():
    scenes = parse_scene_script("a [4s#] | b [4s@] | c [4s]; one | two | three")
    shots = SceneList.from_scenes(scenes, [emb(seed=i) for i in range(3)])
    assert [s.entry for s in shots.scenes] == [None, Transition.HARD_CUT, Transition.RECALL]
    assert [shots.title(i) for i in range(3)] == ["one", "two", "three"]
    with pytest.raises(SceneListError, match="3 scenes but 2 encoded prompts"):
        SceneList.from_scenes(scenes, [emb(), emb()])


def test_the_encoder_of_the_first_shot_that_has_one_is_used_for_matching():
    marker = object()
    shots = SceneList().then("a", emb(), 5, "smooth").then("b", emb(), 5, "smooth", encoder=marker)
    assert shots.encoder() is marker and SceneList().then("a", emb(), 5, "smooth").encoder() is None


# ---- memory options ---------------------------------------------------------------------------------------


def test_preset_choice_defaults_build_the_preset_unchanged():
    policy = PresetChoice().build()
    assert isinstance(policy, EchoMemory) and policy.config == PresetChoice("echo-forcing").build().config
    assert PresetChoice().options() == {} and PresetChoice().ignored == []


def test_preset_choice_options_change_the_echo_config():
    choice = PresetChoice("echo-forcing", "idf", "off", "off", 8)
    cfg = choice.build(pool=None).config
    assert cfg.match_method is MatchMethod.IDF and cfg.compression is False and cfg.pool_size == 8
    for mode in Transition.modes():
        assert cfg.mode(mode).decay.strategy is DecayStrategy.FIXED and cfg.mode(mode).decay.fixed_rate == 1.0
    aware = PresetChoice(decay="difference-aware").build().config
    assert all(aware.mode(m).decay.strategy is DecayStrategy.DIFF for m in Transition.modes())
    assert choice.options() == {"recall_matching": "idf", "compression": "off", "decay": "off", "pool_size": 8}


def test_baseline_presets_ignore_echo_options_and_say_so():
    choice = PresetChoice("self-forcing", compression="off")
    assert isinstance(choice.build(), SelfForcingCacheConfig)
    assert choice.ignored == ["compression"] and PresetChoice("longlive").ignored == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "nope"}, "unknown cache preset 'nope'"),
    ({"recall_matching": "fuzzy"}, "recall_matching must be 'preset default' or one of similar, idf"),
    ({"compression": True}, "compression must be"),
    ({"decay": "fast"}, "decay must be"),
    ({"pool_size": 2000}, "pool_size must be 0"),
    ({"pool_size": -1}, "pool_size must be 0"),
])
def test_preset_choice_validates_every_option(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PresetChoice(**kwargs)


def test_preset_default_is_the_menu_word():
    assert PRESET_DEFAULT == "preset default"


# ---- pool names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".hidden", "", " ", "a..b", "x" * 101, "/etc/passwd",
                                  "C:evil", "nul\x00"])
def test_pool_names_that_could_leave_the_folder_are_refused(tmp_path, name):
    with pytest.raises(ScenePoolError, match="invalid scene pool name"):
        pool_file(tmp_path, name)


def test_pool_files_stay_in_their_folder_and_are_listed(tmp_path):
    assert pool_file(tmp_path, "my pool") == (tmp_path / "my pool.safetensors").resolve()
    assert pool_file(tmp_path, "v1.2.safetensors") == (tmp_path / "v1.2.safetensors").resolve()
    for name in ("b.safetensors", "A.safetensors", ".partial.safetensors", "notes.txt", "bad..name.safetensors"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.safetensors").mkdir()
    assert pool_names(tmp_path) == ["A", "b"]
    assert pool_names(tmp_path / "missing") == []


# ---- steps ------------------------------------------------------------------------------------------------


def test_evenly_spaced_steps_give_self_forcing_list_at_four():
    assert evenly_spaced_steps(4) == (1000, 750, 500, 250)
    assert evenly_spaced_steps(1) == (1000,)
    assert evenly_spaced_steps(3) == (1000, 667, 333)
    for bad in (0, 1001, 2.0, True):
        with pytest.raises(ValueError, match="number of denoising steps"):
            evenly_spaced_steps(bad)


# ---- the run report ---------------------------------------------------------------------------------------


@pytest.fixture()
def story_run(tiny_dit):
    model = CausalWan(tiny_dit, dtype=torch.float32)
    shots = (SceneList()
             .then("a red fox in a snowy forest", emb(), 0.75, "smooth", label="forest")
             .then("a lighthouse on a cliff at night", emb(seed=1), 0.75, "hard cut", label="cliff")
             .then("the red fox in the snowy forest again", emb(seed=2), 1.5, "recall", "forest"))
    plan = plan_run(shots, model.config, seed=3, width=32, height=32, fps=16, dtype=torch.float32,
                    choice=PresetChoice(recall_matching="idf"), noise="official")
    plan = dataclasses.replace(plan, notes=("a note",))
    events = []
    result = generate(plan, lambda: model, on_block=events.append)
    report = build_report(plan, result)
    return shots, list(plan.blocks), plan.settings, result, events, report


def test_block_events_carry_the_switch_on_the_first_block_of_each_scene(story_run):
    _, blocks, _, result, events, _ = story_run
    firsts = [e.index for e in events if e.switch is not None]
    assert firsts == [blocks[0], blocks[0] + blocks[1]]
    assert [e.switch for e in events if e.switch] == result.switches
    assert events[firsts[1]].switch["mode"] == "recall" and events[firsts[1]].switch["recalled"] == "forest"


def test_report_has_per_shot_blocks_transition_recall_decay_cache_and_time(story_run):
    _, blocks, _, result, _, report = story_run
    slots, seconds = [r.slots for r in result.block_reports], result.block_seconds
    assert blocks == [1, 1, 2]
    assert report["video"] == {"shots": 3, "seconds": round(45 / 16, 3), "video_frames": 45, "latent_frames": 12,
                               "blocks": 4, "fps": 16, "width": 32, "height": 32, "seed": 3, "noise": "official",
                               "steps": 4, "shift": 5.0}
    first, cut, back = report["shots"]
    assert (first["transition"], first["mode"], first["recalled"]) == ("start", "start", None)
    assert (cut["transition"], cut["mode"], cut["rope_jump"]) == ("hard cut", "hard cut", 45)
    assert (back["transition"], back["mode"], back["recalled"]) == ("recall", "recall", "forest")
    assert back["similarity"] == round(result.switches[1]["similarity"], 4)
    assert [s["first_block"] for s in report["shots"]] == [0, 1, 2]
    assert [s["cache_frames"] for s in report["shots"]] == [slots[0], slots[1], slots[3]]
    assert cut["decay"] is not None and 0 < cut["decay"][0] <= cut["decay"][1] <= 1
    assert back["seconds_taken"] == round(seconds[2] + seconds[3], 3)
    assert [s["state"] for s in report["shots"]] == ["generated"] * 3
    assert report["reuse"] == {"reused_shots": 0, "generated_shots": 3, "reused_blocks": 0, "generated_blocks": 4,
                               "seconds_saved": 0.0}
    assert report["memory"]["pool_scenes"] == 3 and report["memory"]["options"] == {"recall_matching": "idf"}
    assert report["notes"] == ["a note"]
    json.dumps(report)  # plain data


def test_report_text_and_timeline(story_run):
    report = story_run[-1]
    text = report_text(report)
    lines = text.split("\n\n")[0].splitlines()
    assert lines[0].startswith("3 shots, 2.812 s (45 frames at 16 fps, 32x32), 4 blocks, seed 3 (official noise); "
                               "memory echo-forcing")
    assert lines[1].startswith("1. forest: 0.75 s, 1 blocks, start, cache ")
    assert lines[2].startswith("2. cliff: 0.75 s, 1 blocks, hard cut, decay ")
    assert lines[3].startswith("3. shot 3: 1.5 s, 2 blocks, recall (recalled forest, similarity ")
    assert lines[-1] == "note: a note"
    assert json.loads(text.split("\n\n", 1)[1]) == report
    view = timeline(report)
    assert view["total_blocks"] == 4
    assert [(s["label"], s["blocks"], s["transition"], s["recalled"]) for s in view["scenes"]] == [
        ("forest", 1, "start", None), ("cliff", 1, "hard cut", None), ("shot 3", 2, "recall", "forest")]
