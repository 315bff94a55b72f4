"""Scene scripts written to trip the parser: brackets that are not tags, mistyped tags, huge or pathological
inputs, huge durations and titles holding ';' (issue 14, class 3)."""

from __future__ import annotations

import random
import re
import time

import pytest

from echo_forcing.pipeline.scene_script import (
    DURATION_TAG,
    MAX_SCENE_SECONDS,
    MAX_SCENES,
    MAX_SCRIPT_CHARS,
    MAX_VIDEO_SECONDS,
    Scene,
    SceneScriptError,
    Transition,
    format_scene_script,
    parse_scene_script,
    validate_scenes,
)

# The official tag as the format defines it, to check that our linear form finds the same tags.
OFFICIAL_TAG = re.compile(r"\[(\d+\.?\d*)\s*s([#@])?\]")
# A denial-of-service bound, not a performance figure: each input below takes milliseconds when parsing is
# linear and seconds to minutes when it is quadratic.
DOS_SECONDS = 2.0
MARKERS = "; after the 's' comes nothing (smooth), '#' (hard cut) or '@' (recall)"


def parse(text: str) -> tuple[list[Scene], list]:
    warnings: list = []
    return parse_scene_script(text, warnings), warnings


def refused(text: str) -> SceneScriptError:
    with pytest.raises(SceneScriptError) as info:
        parse_scene_script(text)
    return info.value


# ------------------------------------------------------------------------------ brackets that are not tags


@pytest.mark.parametrize("text", ["[4K]", "[35mm]", "[Take 2]", "[s-curve]", "[s'mores]", "[sic]", "[10x]",
                                  "[1080p]", "[50%]", "[]", "[ ]", "[[a]]", "[x10s]", "[10 seconds of rain and]"])
def test_brackets_that_are_not_tags_stay_in_the_prompt_without_a_warning(text):
    scenes, warnings = parse(f"a city {text} at night [5s#] | the same street {text} [4s]")
    assert [s.prompt for s in scenes] == [f"a city {text} at night", f"the same street {text}"]
    assert [s.duration for s in scenes] == [5.0, 4.0]
    assert scenes[1].entry is Transition.HARD_CUT
    assert warnings == []


@pytest.mark.parametrize("text", ["a drone shot over [s-curve] roads", "a campfire with [s'mores]",
                                  "a [4K] [35mm] close-up, [Take 2]"])
def test_a_scene_with_only_text_brackets_is_missing_its_duration_not_its_number(text):
    error = refused(f"a [3s] | {text}")
    assert str(error).startswith(f"scene 2: missing duration in {text!r}; end the scene with a tag such as [10s]")
    assert "number" not in str(error)
    assert (error.scene, error.token) == (2, text)


def test_a_valid_tag_inside_other_brackets_is_found_like_the_official_regex_finds_it():
    scenes, warnings = parse("a [[10s]] title card | b [2s]")
    assert scenes[0].prompt == "a [] title card" and scenes[0].duration == 10.0 and warnings == []


# ------------------------------------------------------------------------------ mistyped tags


@pytest.mark.parametrize(("tag", "problem", "fix"), [
    ("[10S]", "the unit 'S' instead of a lowercase 's'", "write [10s]"),
    ("[10s!]", "the marker '!'" + MARKERS, "write [10s], [10s#] (hard cut) or [10s@] (recall)"),
    ("[10s#@]", "the marker '#@'" + MARKERS, "write [10s], [10s#] (hard cut) or [10s@] (recall)"),
    ("[10s@!]", "the marker '@!'" + MARKERS, "write [10s@]"),
    ("[-5s]", "a negative number; durations are positive seconds", "write [5s]"),
    ("[10]", "no unit 's'", "write [10s]"),
    ("[.5s#]", "no digit before the decimal point", "write [0.5s#]"),
    ("[2,5s]", "a decimal comma", "write [2.5s]"),
    ("[ 10s ]", "a space inside the brackets", "write [10s]"),
    ("[10s @]", "a space before the marker", "write [10s@]"),
    ("[10 seconds]", "the unit 'seconds' instead of a lowercase 's'", "write [10s]"),
    ("[1e308s]", "an exponent", "write the seconds in plain digits, e.g. [10s]"),
    ("[s#]", "no number of seconds", "write the seconds, e.g. [10s#]"),
    ("[@]", "no number of seconds", "write the seconds, e.g. [10s@]"),
])
def test_a_mistyped_tag_stays_text_with_a_warning_or_is_named_when_the_tag_is_missing(tag, problem, fix):
    scenes, warnings = parse(f"a fox {tag} in snow [3s] | a hare [4s]")
    assert scenes[0].prompt == f"a fox {tag} in snow" and scenes[0].duration == 3.0
    assert [(w.scene, w.token) for w in warnings] == [(1, tag)]
    assert str(warnings[0]) == (f"scene 1: {tag!r} looks like a duration tag but is not one ({problem}), so it "
                                f"stays in the prompt text and the scene's duration is '[3s]'; if it was meant as "
                                f"a tag, {fix}")
    error = refused(f"a hare [4s] | a fox in snow {tag}")
    assert str(error) == f"scene 2: missing duration: {tag!r} is not a duration tag ({problem}); {fix}"
    assert (error.scene, error.token) == (2, tag)


def test_valid_official_spellings_give_no_warning():
    scenes, warnings = parse("a [10 s] | b [10.s#] | c [10\ts@] | d [0.25s]")
    assert [s.duration for s in scenes] == [10.0, 10.0, 10.0, 0.25] and warnings == []


def test_the_first_mistyped_tag_is_named_and_an_unclosed_tag_is_explained():
    assert refused("a [10S] [10s!]").token == "[10S]"
    error = refused("a [5s] | b [10s#")
    assert str(error).startswith("scene 2: missing duration: '[10s#' has no closing ']'")
    assert refused("a [5s] | b [Take 2").token == "b [Take 2"  # not tag-like: the scene is named


def test_warnings_are_capped():
    _, warnings = parse("a [10s] " + "[10S] " * 500)
    assert len(warnings) == 20
    assert str(warnings[-1]) == "481 more warnings like the ones above are not listed"


def test_our_linear_tag_finds_exactly_the_official_tags():
    rng = random.Random(14)
    alphabet = "[[]]0123456789..  \tsS#@x"
    for _ in range(4000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 18)))
        ours = [(m.span(), m.groups()) for m in DURATION_TAG.finditer(text)]
        official = [(m.span(), m.groups()) for m in OFFICIAL_TAG.finditer(text)]
        assert ours == official, text
        scene = "shot " + text
        tags = OFFICIAL_TAG.findall(scene)
        prompt = OFFICIAL_TAG.sub("", scene).strip()
        if len(tags) == 1 and float(tags[0][0]) > 0:
            [parsed] = parse_scene_script(scene)
            assert (parsed.prompt, parsed.duration) == (prompt, float(tags[0][0])), scene
        else:
            with pytest.raises(SceneScriptError):
                parse_scene_script(scene)


# ------------------------------------------------------------------------------ huge and pathological scripts


def test_a_megabyte_script_is_refused_by_its_length_before_it_is_read():
    text = "a fox runs [10s] | " * 55_000  # 1.045 MB of valid-looking scenes
    start = time.perf_counter()
    error = refused(text)
    assert time.perf_counter() - start < DOS_SECONDS
    assert str(error) == (f"the scene script is {len(text):,} characters long; a script may be at most 100,000 "
                          "characters (MAX_SCRIPT_CHARS; a six-shot script is about 3,000)")
    assert MAX_SCRIPT_CHARS == 100_000
    assert len(parse_scene_script("a [1s]" + " " * (MAX_SCRIPT_CHARS - 6))) == 1  # the limit itself is allowed
    refused("a [1s]" + " " * (MAX_SCRIPT_CHARS - 5))


@pytest.mark.parametrize("text", [
    "[" * MAX_SCRIPT_CHARS,
    "[1" * (MAX_SCRIPT_CHARS // 2),
    "[" + "1" * 49_000 + " " * 50_000,
    "a[10 " * (MAX_SCRIPT_CHARS // 5),
    "a [1s] [" + "1" * 99_000,
    "a [1s]; [" + "1" * 99_000,
    "a [1s] [" + "1" * 49_000 + " " * 49_000,
    "a [1s] [" + "1" * 49_000 + " " * 49_000 + "x]",  # quadratic for the official form of the tag regex
    "a [" + "1" * 99_000 + "s]",
    "a [1s] " + "[10S]" * 19_000,
    "a " + "[10s" * 24_000,
    "|" * MAX_SCRIPT_CHARS,
    ";" * MAX_SCRIPT_CHARS,
])
def test_pathological_scripts_finish_fast(text):
    assert len(text) <= MAX_SCRIPT_CHARS
    start = time.perf_counter()
    try:
        parse_scene_script(text, [])
    except SceneScriptError:
        pass
    assert time.perf_counter() - start < DOS_SECONDS


def test_a_90_kb_script_of_the_most_scenes_parses():
    script = " | ".join(f"shot {i}: a long, detailed description of a rainy street at night, " * 5 + f"[{5 + i % 3}s#]"
                        for i in range(MAX_SCENES))
    assert 85_000 < len(script) <= MAX_SCRIPT_CHARS
    start = time.perf_counter()
    scenes = parse_scene_script(script)
    assert time.perf_counter() - start < DOS_SECONDS
    assert len(scenes) == MAX_SCENES == 256
    error = refused(" | ".join(["a [1s]"] * (MAX_SCENES + 1)))
    assert str(error) == "scene 257: the script has 257 scenes; a script may have at most 256 (MAX_SCENES)"
    with pytest.raises(SceneScriptError, match="at most 256 \\(MAX_SCENES\\)"):
        validate_scenes([Scene("a", 1)] + [Scene("b", 1, Transition.SMOOTH)] * MAX_SCENES)


# ------------------------------------------------------------------------------ huge durations


@pytest.mark.parametrize("tag", ["[99999999999999999999s]", "[3600.5s]", "[3601s#]", "[" + "9" * 400 + "s]",
                                 "[1" + "0" * 5000 + ".0s@]"])
def test_huge_durations_are_refused_with_the_limit_named(tag):
    error = refused(f"a [5s] | b {tag}")
    assert str(error).startswith("scene 2: '")
    assert "is too long: a scene may last at most 3600 s (MAX_SCENE_SECONDS, one hour)" in str(error)
    assert error.scene == 2 and tag.startswith(error.token.rstrip("…"))
    assert MAX_SCENE_SECONDS == 3600.0


def test_the_longest_scene_and_video_are_allowed_and_one_more_second_is_not():
    assert parse_scene_script("a [3600s]")[0].duration == MAX_SCENE_SECONDS
    assert len(parse_scene_script("a [1800s] | b [1800s]")) == 2
    error = refused("a [1800s] | b [1000s] | c [800.5s]")
    assert str(error) == ("scene 3: the scenes up to this one last 3600.5 s; a video may last at most 3600 s "
                          "(MAX_VIDEO_SECONDS, one hour); shorten the scenes")
    assert (error.scene, error.token) == (3, "[800.5s]")
    assert MAX_VIDEO_SECONDS == 3600.0


def test_the_python_api_has_the_same_limits():
    with pytest.raises(SceneScriptError, match="at most 3600 s \\(MAX_SCENE_SECONDS"):
        Scene("a", 3601)
    with pytest.raises(SceneScriptError, match="at most 3600 s \\(MAX_SCENE_SECONDS"):
        Scene("a", 1e308)
    scenes = [Scene("a", 3000), Scene("b", 601, Transition.HARD_CUT)]
    with pytest.raises(SceneScriptError, match="scene 2: the scenes up to this one last 3601 s; a video may last"):
        validate_scenes(scenes)
    with pytest.raises(SceneScriptError, match="MAX_VIDEO_SECONDS"):
        format_scene_script(scenes)


# ------------------------------------------------------------------------------ titles holding ';'


def test_a_title_cannot_hold_a_semicolon_the_rest_is_ignored_with_a_warning():
    scenes, warnings = parse("a [3s] | b [3s] | c [3s]; Dawn; the forest | Noon | Dusk")
    assert [s.label for s in scenes] == ["Dawn", None, None]
    assert [w.token for w in warnings] == ["the forest | Noon | Dusk"]
    assert "after the second ';'" in str(warnings[0])


def test_a_semicolon_inside_the_scenes_ends_them():
    error = refused("a fox; then a hare [3s] | b [3s]")
    assert str(error).startswith("scene 1: the duration tag '[3s]' comes after the first ';'")
    error = refused("a fox [3s] | a hare; at dusk | c")
    assert error.scene == 2 and "the first ';' ends the scenes and starts the titles" in str(error)


def test_semicolons_and_bars_in_titles_follow_the_official_fields():
    scenes, warnings = parse("a [3s] | b [3s];;")
    assert [s.label for s in scenes] == [None, None] and warnings == []
    scenes, warnings = parse("a [3s] | b [3s]; | Second;")
    assert [s.label for s in scenes] == [None, "Second"] and warnings == []
    scenes, warnings = parse("a [3s]; One | Two; Three")
    assert [s.label for s in scenes] == ["One"]
    assert [w.token for w in warnings] == ["Two", "Three"]
    with pytest.raises(SceneScriptError, match="the label contains ';'"):
        format_scene_script([Scene("a", 3, label="Dawn; the forest")])
