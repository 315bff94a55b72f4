"""Scene scripts: parity with the official parser (recorded data), strict errors, warnings, formatting, block
schedule. Hostile scripts (huge, pathological, mistyped) are in test_hostile_scripts.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_forcing.pipeline.scene_script import (
    Scene,
    ScenePlan,
    SceneScriptError,
    Transition,
    format_scene_script,
    latent_frames_for_seconds,
    parse_scene_script,
    plan_blocks,
    scene_block_counts,
    seconds_to_blocks,
    total_latent_frames,
    validate_scenes,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "scene_script" / "official_parse.json").read_text())
CASES = FIXTURE["cases"]
OFFICIAL_MODE = {"smooth": Transition.SMOOTH, "hardcut": Transition.HARD_CUT, "recall": Transition.RECALL}
SIX_BY_TEN = " | ".join(f"shot {i} [10s{m}]" for i, m in enumerate(["#", "#", "@", "@", "@", ""], start=1))


# ------------------------------------------------------------------------------------ official parity


def test_fixture_covers_the_example_files_and_edge_cases():
    sources = [case["source"] for case in CASES]
    assert sum(s.startswith("prompts_") for s in sources) == 15
    assert sum(s.startswith("edge:") for s in sources) >= 15
    assert FIXTURE["official"]["commit"] == "d0878fa"


@pytest.mark.parametrize("case", CASES, ids=[case["source"] for case in CASES])
def test_parse_matches_official(case):
    scenes = parse_scene_script(case["text"])
    official = case["segments"]
    assert [s.prompt for s in scenes] == [seg["prompt"] for seg in official]
    assert [s.duration for s in scenes] == [seg["duration"] for seg in official]
    # marker on scene i = transition OUT of scene i = entry of scene i+1; the last marker is ignored
    assert scenes[0].entry is None
    assert [s.entry for s in scenes[1:]] == [OFFICIAL_MODE[seg["mode"]] for seg in official[:-1]]
    assert [s.entry.marker for s in scenes[1:]] == [seg["marker"] for seg in official[:-1]]


@pytest.mark.parametrize("case", CASES, ids=[case["source"] for case in CASES])
def test_blocks_match_official(case):
    scenes = parse_scene_script(case["text"])
    official = case["seconds_to_blocks"]
    latent = case["latent_frames"]
    assert total_latent_frames(scenes) == latent
    assert float(sum(s.duration for s in scenes)) == case["total_duration"]
    # official pipeline: boundaries are cumulative sums of all scenes but the last; the last takes the rest
    expected = [*official[:-1], latent // 3 - sum(official[:-1])]
    assert scene_block_counts(scenes) == expected
    assert [seconds_to_blocks(s.duration) for s in scenes] == official
    plans = plan_blocks(scenes)
    boundaries = [p.start_block for p in plans[1:]]
    cumulative = [sum(official[: i + 1]) for i in range(len(official) - 1)]
    assert boundaries == cumulative
    assert plans[-1].end_block == latent // 3


@pytest.mark.parametrize("case", FIXTURE["rejected_by_us"], ids=[c["source"] for c in FIXTURE["rejected_by_us"]])
def test_scripts_whose_last_scene_gets_no_block_are_rejected(case):
    # officially these parse, but the boundaries reach past the last block, so the last scene never starts
    official = case["seconds_to_blocks"]
    assert sum(official[:-1]) >= case["latent_frames"] // 3
    scenes = parse_scene_script(case["text"])
    n = len(scenes)
    with pytest.raises(SceneScriptError) as info:
        scene_block_counts(scenes)
    message = str(info.value)
    assert f"scene {n}" in message
    assert f"give {case['latent_frames'] // 3} blocks" in message
    assert "lengthen" in message
    assert info.value.scene == n


# ------------------------------------------------------------------------------------ parsing details


def test_six_by_ten_seconds_example():
    scenes = parse_scene_script(SIX_BY_TEN)
    assert [s.entry for s in scenes] == [None, Transition.HARD_CUT, Transition.HARD_CUT, Transition.RECALL,
                                         Transition.RECALL, Transition.RECALL]
    assert scene_block_counts(scenes) == [13, 13, 13, 13, 13, 15]
    assert total_latent_frames(scenes) == 240
    assert plan_blocks(scenes) == [ScenePlan(0, 0, 13), ScenePlan(1, 13, 13), ScenePlan(2, 26, 13),
                                   ScenePlan(3, 39, 13), ScenePlan(4, 52, 13), ScenePlan(5, 65, 15)]


def test_decimals_spaces_and_tag_position():
    scenes = parse_scene_script("a cat [2.5s] | a dog [10 s#] | [3.75s@] a bird | a fish [10.s]")
    assert [s.duration for s in scenes] == [2.5, 10.0, 3.75, 10.0]
    assert [s.prompt for s in scenes] == ["a cat", "a dog", "a bird", "a fish"]
    assert [s.entry for s in scenes] == [None, Transition.SMOOTH, Transition.HARD_CUT, Transition.RECALL]


def test_last_scene_marker_is_ignored():
    scenes = parse_scene_script("a [3s] | b [4s@]")
    assert [s.entry for s in scenes] == [None, Transition.SMOOTH]


def test_titles_tail():
    assert [s.label for s in parse_scene_script("a [1s] | b [1s] | c [1s] ;  A  | | C ")] == ["A", None, "C"]
    assert [s.label for s in parse_scene_script("a [1s] | b [1s] ; only")] == ["only", None]
    assert [s.label for s in parse_scene_script("a [1s] ; one | two | three")] == ["one"]
    assert [s.label for s in parse_scene_script("a [1s] ;")] == [None]
    assert [s.label for s in parse_scene_script("a [1s]")] == [None]


def test_trailing_separator_and_inner_whitespace_like_official():
    scenes = parse_scene_script("  a  [4s#] mid  |  b [5s] | ")
    assert [s.prompt for s in scenes] == ["a   mid", "b"]  # the tag is cut out, inner spaces stay
    assert [s.entry for s in scenes] == [None, Transition.HARD_CUT]


def test_ordinary_brackets_stay_in_the_prompt():
    warnings = []
    assert parse_scene_script("a sign says [sic] here [3s]", warnings)[0].prompt == "a sign says [sic] here"
    scenes = parse_scene_script("[4K] city [35mm] at [Take 2] night [3s#] | an [s-curve] road [s'mores] [2x] [4s]",
                                warnings)
    assert [s.prompt for s in scenes] == ["[4K] city [35mm] at [Take 2] night", "an [s-curve] road [s'mores] [2x]"]
    assert warnings == []


def test_tag_like_brackets_stay_text_with_a_warning():
    warnings = []
    scenes = parse_scene_script("a fox [10S] runs [4s#] | b [10s!] [-2s] [3s]", warnings)
    assert [s.prompt for s in scenes] == ["a fox [10S] runs", "b [10s!] [-2s]"]
    assert [s.duration for s in scenes] == [4.0, 3.0]
    assert [(w.scene, w.token) for w in warnings] == [(1, "[10S]"), (2, "[10s!]"), (2, "[-2s]")]
    assert str(warnings[0]).startswith("scene 1: '[10S]' looks like a duration tag but is not one")
    assert "the scene's duration is '[4s#]'" in str(warnings[0]) and "write [10s]" in str(warnings[0])
    assert parse_scene_script("a fox [10S] runs [4s#] | b [10s!] [-2s] [3s]") == scenes  # the list is optional


def test_titles_follow_the_official_split_at_the_first_and_second_semicolon():
    warnings = []
    scenes = parse_scene_script("a [1s] | b [1s]; Act 1 | Act 2; the end | coda", warnings)
    assert [s.label for s in scenes] == ["Act 1", "Act 2"]
    assert [str(w) for w in warnings] == ["the text after the second ';' ('the end | coda') is ignored, as the "
                                          "official parser does; titles are separated by '|' and cannot hold a ';'"]
    warnings.clear()
    assert [s.label for s in parse_scene_script("a [1s]; one; two", warnings)] == ["one"]
    assert [w.token for w in warnings] == ["two"]
    warnings.clear()
    assert [s.label for s in parse_scene_script("a [1s]; one | two | three", warnings)] == ["one"]
    assert "2 more" not in str(warnings[0]) and "ignored: 'two', 'three'" in str(warnings[0])
    warnings.clear()
    parse_scene_script("a [1s]; one | ;", warnings)  # empty extras are not worth a warning
    assert warnings == []


# ------------------------------------------------------------------------------------ strict errors


def _error(text: str) -> SceneScriptError:
    with pytest.raises(SceneScriptError) as info:
        parse_scene_script(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "scene", "token", "words"),
    [
        ("a [5s] | b walks away", 2, "b walks away", "missing duration"),
        ("a [5s] | b [10s!]", 2, "[10s!]", "missing duration: '[10s!]' is not a duration tag (the marker '!'"),
        ("a [10s#@] | b [5s]", 1, "[10s#@]", "the marker '#@'"),
        ("a [5s] | b [5s] | c [10x]", 3, "c [10x]", "missing duration in 'c [10x]'"),  # [10x] is text
        ("a [s]", 1, "[s]", "no number of seconds"),
        ("a [10]", 1, "[10]", "(no unit 's'); write [10s]"),
        ("a [ 10s]", 1, "[ 10s]", "space inside the brackets); write [10s]"),
        ("a [10 s #] | b [1s]", 1, "[10 s #]", "space before the marker); write [10s#]"),
        ("a [.5s]", 1, "[.5s]", "write [0.5s]"),
        ("a [10S]", 1, "[10S]", "lowercase 's'); write [10s]"),
        ("a [10 sec@]", 1, "[10 sec@]", "the unit 'sec'"),
        ("a [5s] | b [0s]", 2, "[0s]", "zero duration"),
        ("a [0.0s#] | b [1s]", 1, "[0.0s#]", "zero duration"),
        ("a [5s] | b [-5s]", 2, "[-5s]", "negative number; durations are positive seconds); write [5s]"),
        ("a [5s] | b [10s", 2, "[10s", "has no closing ']'"),
        ("a [5s] [6s@]", 1, "[6s@]", "more than one duration tag"),
        ("a [5s] | | b [5s]", 2, "|", "empty scene"),
        ("| a [5s]", 1, "|", "empty scene"),
        ("a [5s] | [5s#] | c [1s]", 2, "[5s#]", "no text"),
        ("", 1, "", "empty"),
        ("   ", 1, "   ", "empty"),
        ("; title", 1, "; title", "no scene text"),
        ("a [5s] | b; c [5s] | d [3s]", 2, "[5s]", "titles tail"),
        ("a [5s] | b; c | d", 2, "b", "the first ';' ends the scenes"),
    ],
)
def test_parse_errors_name_scene_and_token(text, scene, token, words):
    error = _error(text)
    message = str(error)
    assert message.startswith(f"scene {scene}: ")
    assert error.scene == scene
    assert error.token == token
    if token.strip():
        assert token in message
    assert words in message
    assert isinstance(error, ValueError)


def test_parse_error_messages_say_how_to_fix():
    assert "[10s#]" in str(_error("a walks"))  # shows a valid tag
    assert "'#' (hard cut) or '@' (recall)" in str(_error("a [10s!]"))
    assert "remove the extra '|'" in str(_error("a [1s] | | b [1s]"))


# ------------------------------------------------------------------------------------ Scene / Transition


def test_transition_markers():
    assert [t.marker for t in (Transition.SMOOTH, Transition.HARD_CUT, Transition.RECALL)] == ["", "#", "@"]
    assert Transition.from_marker("@") is Transition.RECALL
    with pytest.raises(ValueError, match="no marker"):
        _ = Transition.AUTO.marker
    with pytest.raises(ValueError, match="unknown transition marker"):
        Transition.from_marker("!")
    assert Transition("hardcut") is Transition.HARD_CUT


def test_scene_validation():
    scene = Scene("a", 10, entry="recall", recall_target=0, label="A")
    assert scene.duration == 10.0 and isinstance(scene.duration, float)
    assert scene.entry is Transition.RECALL
    assert "entry=recall" in repr(scene) and "10s" in repr(scene)
    assert len(repr(Scene("x" * 500, 1.5))) < 100
    bad = [
        (dict(prompt="  ", duration=1), "prompt"),
        (dict(prompt="a", duration=0), "positive"),
        (dict(prompt="a", duration=-1.0), "positive"),
        (dict(prompt="a", duration=float("inf")), "finite"),
        (dict(prompt="a", duration=float("nan")), "positive"),
        (dict(prompt="a", duration=True), "number"),
        (dict(prompt="a", duration=1, entry="fade"), "entry"),
        (dict(prompt="a", duration=1, entry=Transition.HARD_CUT, recall_target=0), "RECALL or AUTO"),
        (dict(prompt="a", duration=1, recall_target="A"), "RECALL or AUTO"),
        (dict(prompt="a", duration=1, entry=Transition.RECALL, recall_target=-1), ">= 0"),
        (dict(prompt="a", duration=1, entry=Transition.AUTO, recall_target=""), "empty label"),
        (dict(prompt="a", duration=1, entry=Transition.RECALL, recall_target=1.5), "index"),
        (dict(prompt="a", duration=1, label=""), "label"),
    ]
    for kwargs, words in bad:
        with pytest.raises(SceneScriptError, match=words):
            Scene(**kwargs)
    Scene("a", 1, entry=Transition.AUTO, recall_target="A")  # AUTO may carry a target


def test_validate_scenes():
    first = Scene("a", 1, label="A")
    validate_scenes([first, Scene("b", 1, entry=Transition.RECALL, recall_target="A")])
    cases = [
        ([], 1, "no scenes"),
        ([Scene("a", 1, entry=Transition.SMOOTH)], 1, "first scene"),
        ([first, Scene("b", 1)], 2, "entry is None"),
        ([first, Scene("b", 1, entry=Transition.RECALL, recall_target=1)], 2,
         "recall target shot 2 is not an earlier shot; give the number of an earlier shot \\(shot 1\\), its label, "
         "or auto"),
        ([first, Scene("b", 1, entry=Transition.RECALL, recall_target="B")], 2, "no earlier scene"),
        ([first, Scene("b", 1, Transition.SMOOTH, label="A"), Scene("c", 1, Transition.RECALL, "A")], 3,
         "2 earlier scenes"),
        ([first, "b [1s]"], 2, "expected a Scene"),
    ]
    for scenes, n, words in cases:
        with pytest.raises(SceneScriptError, match=words) as info:
            validate_scenes(scenes)
        assert str(info.value).startswith(f"scene {n}: ")


# ------------------------------------------------------------------------------------ formatting


def test_format_six_by_ten_round_trip():
    scenes = parse_scene_script(SIX_BY_TEN)
    text = format_scene_script(scenes)
    assert text == "shot 1[10s#] | shot 2[10s#] | shot 3[10s@] | shot 4[10s@] | shot 5[10s@] | shot 6[10s]"
    assert parse_scene_script(text) == scenes


@pytest.mark.parametrize("case", CASES, ids=[case["source"] for case in CASES])
def test_format_round_trips_every_fixture_case(case):
    scenes = parse_scene_script(case["text"])
    assert parse_scene_script(format_scene_script(scenes)) == scenes


def test_format_durations_and_titles():
    scenes = [Scene("a", 10), Scene("b", 2.5, Transition.HARD_CUT, label="B"), Scene("c", 1e-05, "recall"),
              Scene("d", 3456.789, Transition.SMOOTH)]
    text = format_scene_script(scenes)
    assert text == "a[10s#] | b[2.5s@] | c[0.00001s] | d[3456.789s];  | B |  |"
    assert parse_scene_script(text) == scenes
    assert ";" not in format_scene_script([Scene("a", 3)])


def test_format_keeps_tag_like_text_which_parses_back_as_text():
    scenes = [Scene("a [10S] fox [4K]", 3), Scene("b [-1s]", 2, Transition.RECALL)]
    text = format_scene_script(scenes)
    assert text == "a [10S] fox [4K][3s@] | b [-1s][2s]"
    warnings = []
    assert parse_scene_script(text, warnings) == scenes
    assert [w.token for w in warnings] == ["[10S]", "[-1s]"]


def test_recall_target_messages_count_shots_from_one():
    scenes = [Scene("a", 1, label="A"), Scene("b", 1, Transition.SMOOTH), Scene("c", 1, Transition.RECALL, 5)]
    with pytest.raises(SceneScriptError) as info:
        validate_scenes(scenes)
    assert str(info.value) == ("scene 3: recall target shot 6 is not an earlier shot; give the number of an earlier "
                               "shot (shots 1-2), its label, or auto")
    assert (info.value.scene, info.value.token) == (3, "6")
    assert "0-based" not in str(info.value)
    scenes[2] = Scene("c", 1, Transition.AUTO, "kitchen")
    with pytest.raises(SceneScriptError, match="scene 3: recall target 'kitchen': no earlier scene has that label; "
                                               "give the number of an earlier shot \\(shots 1-2\\)"):
        validate_scenes(scenes)
    scenes[2] = Scene("c", 1, Transition.RECALL, 1)  # the Python API's 0-based index 1 is shot 2
    assert validate_scenes(scenes) == scenes


@pytest.mark.parametrize(
    ("scenes", "n", "words"),
    [
        ([Scene("a", 1), Scene("b", 1, Transition.AUTO)], 2, "AUTO"),
        ([Scene("a", 1), Scene("b", 1, Transition.RECALL, recall_target=0)], 2, "recall_target=0"),
        ([Scene("a | b", 1)], 1, "'|'"),
        ([Scene("a; b", 1)], 1, "';'"),
        ([Scene("a [3s] b", 1)], 1, "[3s]"),
        ([Scene("a [3s@] b", 1)], 1, "the duration tag '[3s@]'"),
        ([Scene("a", 1, label="x|y")], 1, "label"),
        ([Scene("a", 1), Scene("b", 1)], 2, "entry is None"),
    ],
)
def test_format_errors(scenes, n, words):
    with pytest.raises(SceneScriptError) as info:
        format_scene_script(scenes)
    assert str(info.value).startswith(f"scene {n}: ")
    assert words in str(info.value)


# ------------------------------------------------------------------------------------ durations


def test_duration_rules():
    assert seconds_to_blocks(10) == 13
    assert seconds_to_blocks(0.1) == 1  # at least one block
    assert latent_frames_for_seconds(60) == 240
    assert latent_frames_for_seconds(0.01) == 3  # at least one block of latent frames
    assert latent_frames_for_seconds(40) == 162  # 640 frames -> 160 -> rounded up to a multiple of 3
    # other schedules: 4 frames per block at 24 fps
    scenes = [Scene("a", 10), Scene("b", 10, Transition.SMOOTH)]
    assert scene_block_counts(scenes, fps=24, frames_per_block=4) == [15, 15]
    assert total_latent_frames(scenes, fps=24, frames_per_block=4) == 120
    with pytest.raises(ValueError, match="frames_per_block"):
        scene_block_counts(scenes, frames_per_block=0)
    with pytest.raises(ValueError, match="fps"):
        total_latent_frames(scenes, fps=0)


def test_too_many_scenes_for_the_blocks():
    scenes = parse_scene_script("a [0.5s] | b [0.5s] | c [0.5s] | d [0.2s]")  # 1.7 s -> 2 blocks, 3 taken
    with pytest.raises(SceneScriptError) as info:
        scene_block_counts(scenes)
    message = str(info.value)
    assert message.startswith("scene 4: ")
    assert "[0.2s]" in message and "give 2 blocks" in message and "already take 3" in message
    with pytest.raises(SceneScriptError):
        plan_blocks(scenes)


def test_a_recall_target_may_name_a_scene_of_a_loaded_pool():
    first = Scene("a", 1)
    later = Scene("b", 1, entry=Transition.RECALL, recall_target="Greenhouse")
    with pytest.raises(SceneScriptError, match="recall target 'Greenhouse': no earlier scene has that label; give "
                                               "the number of an earlier shot \\(shot 1\\), a label that exactly "
                                               "one earlier shot has, or auto"):
        validate_scenes([first, later])
    assert validate_scenes([first, later], pool_labels=["greenhouse"]) == [first, later]
    assert scene_block_counts([first, later], pool_labels=["greenhouse"]) == [1, 2]
    with pytest.raises(SceneScriptError, match="or a scene of the scene pool"):
        validate_scenes([first, later], pool_labels=["station"])
