"""Scene scripts: the official one-line multi-shot prompt format, its parser, and the block schedule.

Format::

    <scene 1 text>[10s#] | <scene 2 text>[10s] | <scene 3 text>[10s@] | <scene 4 text>[10s] ; title 1 | title 2

The rules follow the official parser (Echo-Forcing ``utils/interactive.py``, ``parse_scene_segments``, and
the titles split of its ``inference.py``):

* **Split.** Everything before the first ``;`` is the scene part; it is split at ``|`` into scenes. The
  titles are the text between the first and the second ``;``, split at ``|`` (one per scene, padded /
  truncated to the number of scenes); they become :attr:`Scene.label`. The official code reads nothing after
  a second ``;`` (so a title cannot contain ``;``): neither do we, and a :class:`ScriptWarning` names the
  text that is ignored, as it names titles beyond the number of scenes.
* **Duration tag.** Exactly ``[<number>s]``, ``[<number>s#]`` or ``[<number>s@]``: the number is digits with
  an optional decimal point and optional further digits (``10``, ``2.5``, ``10.``), whitespace may stand
  between the number and the ``s``, nothing else may (the official regex ``\\[(\\d+\\.?\\d*)\\s*s([#@])?\\]``,
  written here in an equivalent unambiguous form, see :data:`DURATION_TAG`). As officially, the tag may
  stand anywhere in the scene's text (``[5s#] a fox`` and ``a fox [5s#] runs`` are valid); it is cut out and
  the rest is stripped (inner whitespace is kept as it is).
* **Every other bracket group is prompt text** (``[4K]``, ``[35mm]``, ``[Take 2]``, ``[s-curve]``, ``[sic]``,
  ``[10x]``). Where a group *looks like a mistyped tag* it still stays text, but :func:`parse_scene_script`
  reports a :class:`ScriptWarning`; and in a scene without a valid tag it is what the error message names.
  The rule: the group's content, trimmed, is at most 40 characters and reads as an optional sign, an
  optional number (a decimal point or comma, an exponent allowed), an optional seconds unit (``s``,
  ``sec``, ``secs``, ``second``, ``seconds``, any case) and up to three marker characters from
  ``# @ ! $ & * ~ ^ ? + =``, with a number, a unit or a ``#`` / ``@`` present. So ``[10S]``, ``[10s!]``,
  ``[10s#@]``, ``[-5s]``, ``[.5s]``, ``[10]``, ``[ 10s]``, ``[10 sec]``, ``[1e3s]``, ``[s]`` and ``[#]``
  are tag-like; units of other things (``[10x]``, ``[4K]``, ``[35mm]``, ``[1080p]``) are not.
* **Markers.** The marker on scene i selects the transition OUT of scene i into scene i+1 (``#`` hard cut,
  ``@`` recall, none = smooth); the last scene's marker is ignored (the official parser reads it and
  nothing uses it).
  :class:`Scene` stores the other way round: ``entry`` = how the scene is entered (the marker of the scene
  before it; ``None`` for the first scene). :func:`parse_scene_script` and :func:`format_scene_script`
  convert between the two.
* **Timing.** A scene of d seconds nominally takes ``max(1, int(d * 16 / (4 * 3)))`` blocks; the video has
  ``ceil((int(total * 16) // 4) / 3) * 3`` latent frames (at least 3); scene boundaries are the cumulative
  sums of all scenes but the last, and the last scene takes all remaining blocks (6 x 10 s -> 13, 13, 13,
  13, 13, 15 blocks, 240 latent frames).

Where the official parser accepts a script and silently guesses, we are stricter and raise
:class:`SceneScriptError`:

* a scene without a valid duration tag (the official code falls back to 21 blocks for that scene and to the
  ``--num_output_frames`` command-line value for the video length); the message names the tag-like group
  that was probably meant (``'[10s!]' is not a duration tag ...; write [10s] ...``) or an unclosed ``[10s``;
* two or more valid tags in one scene (the official code takes the first one's duration and marker and
  deletes all of them): usually a forgotten ``|``;
* a zero duration (``[0s]``; the official code still gives the scene one block);
* an empty scene between two ``|`` (or at the start), or a scene that is only a tag (the official code drops
  the empty part, so the scenes and titles shift, or encodes an empty prompt). A single trailing ``|`` is
  accepted, as officially;
* a valid duration tag after the first ``;`` (a ``;`` in a scene's text ends the scene part early);
* durations so short that the last scene would get no block of its own (the official pipeline then never
  reaches the last scene(s)): :func:`scene_block_counts` raises;
* sizes no one writes by hand, so a script pasted into a server cannot tie it up: a script longer than
  :data:`MAX_SCRIPT_CHARS` characters is refused before it is read (a six-shot script is about 3,000), and
  more than :data:`MAX_SCENES` scenes, a scene longer than :data:`MAX_SCENE_SECONDS` or a video longer than
  :data:`MAX_VIDEO_SECONDS` are refused (also for :class:`Scene` objects built in Python). The parser does
  one pass over the text with regular expressions that cannot backtrack more than a constant per character,
  so its time is linear in the script's length.

:class:`Transition` also has ``AUTO`` (the paper's automatic router, appendix B), which the tag
format cannot express; neither can an explicit recall target (``Scene.recall_target``, a 0-based scene index
or a label, in the Python API). Messages meant for artists count shots from 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..memory.config import Transition

__all__ = [
    "MAX_SCENES",
    "MAX_SCENE_SECONDS",
    "MAX_SCRIPT_CHARS",
    "MAX_VIDEO_SECONDS",
    "Scene",
    "ScenePlan",
    "SceneScriptError",
    "ScriptWarning",
    "Transition",
    "format_scene_script",
    "latent_frames_for_seconds",
    "parse_scene_script",
    "plan_blocks",
    "scene_block_counts",
    "seconds_to_blocks",
    "total_latent_frames",
    "validate_scenes",
]

MAX_SCRIPT_CHARS = 100_000
"""Longest scene script :func:`parse_scene_script` reads, in characters (a six-shot script is about 3,000)."""
MAX_SCENES = 256
"""Most scenes (shots) in one script or scene list."""
MAX_SCENE_SECONDS = 3600.0
"""Longest scene, in seconds (one hour)."""
MAX_VIDEO_SECONDS = 3600.0
"""Longest video (all scenes together), in seconds (one hour: 14,400 latent frames at 16 fps)."""

# The official duration tag ``\[(\d+\.?\d*)\s*s([#@])?\]``. ``\d+\.?\d*`` and ``\d+(?:\.\d*)?`` match the same
# strings with the same group 1, but the second form cannot split a run of digits two ways, so a long run of
# digits without a closing ``s]`` costs linear time instead of quadratic (group 1: seconds, group 2: marker).
DURATION_TAG = re.compile(r"\[(\d+(?:\.\d*)?)\s*s([#@])?\]")
_TAG_BODY = re.compile(r"(\d+(?:\.\d*)?)\s*s([#@])?")
# Any bracket group without nested brackets. An official tag holds no bracket, so every official match is one
# of these groups, and the groups never overlap: a scan over them finds exactly the official matches.
_BRACKET_GROUP = re.compile(r"\[([^\[\]]*)\]")
# A group that looks like a mistyped tag (applied to at most _NEAR_TAG_CHARS characters; see the docstring).
_NEAR_TAG = re.compile(
    r"(?P<sign>[-+]?)\s*(?:(?P<num>\d+(?:[.,]\d*)?|[.,]\d+)(?P<exp>e[-+]?\d+)?)?(?P<gap1>\s*)"
    r"(?P<unit>seconds?|secs?|s)?(?P<gap2>\s*)(?P<marks>[#@!$&*~^?+=]{0,3})", re.I)
_NEAR_TAG_CHARS = 40
_MAX_WARNINGS = 20  # the last one says how many more there were
_TAG_HELP = "write the duration as [<seconds>s], [<seconds>s#] (hard cut) or [<seconds>s@] (recall), e.g. [10s#]"

DEFAULT_FPS = 16
DEFAULT_FRAMES_PER_BLOCK = 3
DEFAULT_TIME_STRIDE = 4


class SceneScriptError(ValueError):
    """A scene script (or a list of scenes) that cannot be used; the message names the scene and how to fix it.

    ``scene`` is the 1-based scene number the problem is in (or ``None``), ``token`` the offending text.
    """

    def __init__(self, message: str, *, scene: int | None = None, token: str | None = None):
        super().__init__(message)
        self.scene = scene
        self.token = token


def _error(scene: int | None, message: str, token: str | None = None) -> SceneScriptError:
    where = f"scene {scene}: " if scene is not None else ""
    return SceneScriptError(where + message, scene=scene, token=token)


@dataclass(frozen=True)
class ScriptWarning:
    """Something in a scene script that parsed but may not say what its writer meant (text kept, or ignored).

    ``message`` is the whole text (starting "scene N: " where it concerns one scene), ``scene`` the 1-based
    scene number or ``None``, ``token`` the text it is about. ``str()`` gives the message.
    """

    message: str
    scene: int | None = None
    token: str | None = None

    def __str__(self) -> str:
        return self.message


def _warning(scene: int | None, message: str, token: str | None = None) -> ScriptWarning:
    where = f"scene {scene}: " if scene is not None else ""
    return ScriptWarning(where + message, scene=scene, token=token)


def _check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SceneScriptError(f"Scene.prompt must be a non-empty string, got {repr(prompt)[:60]}")
    if len(prompt) > MAX_SCRIPT_CHARS:
        raise SceneScriptError(f"Scene.prompt is {len(prompt)} characters; a prompt has at most "
                               f"{MAX_SCRIPT_CHARS} (MAX_SCRIPT_CHARS)")


def _checked_duration(duration) -> float:
    """A scene's seconds as a float: positive, finite, at most MAX_SCENE_SECONDS."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise SceneScriptError(f"Scene.duration must be a number of seconds, got {duration!r}")
    duration = float(duration)
    if not math.isfinite(duration) or duration <= 0:
        raise SceneScriptError(f"Scene.duration must be a positive, finite number of seconds, got {duration!r}")
    if duration > MAX_SCENE_SECONDS:
        raise SceneScriptError(f"Scene.duration is {duration:g} s; a scene may last at most "
                               f"{MAX_SCENE_SECONDS:g} s (MAX_SCENE_SECONDS, one hour)")
    return duration


def _checked_entry(entry) -> Transition | None:
    """A scene's entry as a Transition (from the enum or its value)."""
    if entry is None or isinstance(entry, Transition):
        return entry
    try:
        return Transition(entry)
    except ValueError:
        choices = ", ".join(repr(t.value) for t in Transition)
        raise SceneScriptError(f"Scene.entry must be None or one of {choices}, got {entry!r}") from None


def _check_recall_target(target, entry: Transition | None) -> None:
    """An explicit recall target: a 0-based scene index or a label, only on a RECALL / AUTO entry."""
    if entry not in (Transition.RECALL, Transition.AUTO):
        raise SceneScriptError(
            f"Scene.recall_target={target!r} needs entry RECALL or AUTO (entry is "
            f"{entry.value if entry else None!r}); drop the target or change the entry")
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise SceneScriptError(f"Scene.recall_target must be a scene index, a label or None, got {target!r}")
    if isinstance(target, int) and target < 0:
        raise SceneScriptError(f"Scene.recall_target must be a 0-based scene index >= 0 (shot number - 1), "
                               f"got {target}")
    if isinstance(target, str) and not target.strip():
        raise SceneScriptError("Scene.recall_target must not be an empty label; use None for automatic")


@dataclass(frozen=True)
class Scene:
    """One shot of a multi-shot video.

    ``prompt``: the scene's text prompt. ``duration``: seconds (> 0 and at most :data:`MAX_SCENE_SECONDS`;
    ints are stored as float). ``entry``: how this scene is entered (``None`` for the first scene; a
    :class:`Transition` or its value). ``recall_target``: for a RECALL / AUTO entry only, the EARLIER scene to
    recall, as a 0-based index into the scene list (shot number - 1) or a label; ``None`` = choose
    automatically (by prompt similarity). ``label``: an optional title.
    """

    prompt: str
    duration: float
    entry: Transition | None = None
    recall_target: int | str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        _check_prompt(self.prompt)
        object.__setattr__(self, "duration", _checked_duration(self.duration))
        object.__setattr__(self, "entry", _checked_entry(self.entry))
        if self.recall_target is not None:
            _check_recall_target(self.recall_target, self.entry)
        if self.label is not None and (not isinstance(self.label, str) or not self.label.strip()):
            raise SceneScriptError(f"Scene.label must be None or a non-empty string, got {self.label!r}")

    def __repr__(self) -> str:
        text = self.prompt if len(self.prompt) <= 40 else self.prompt[:39] + "…"
        parts = [repr(text), f"{_format_seconds(self.duration)}s"]
        if self.entry is not None:
            parts.append(f"entry={self.entry.value}")
        if self.recall_target is not None:
            parts.append(f"recall_target={self.recall_target!r}")
        if self.label is not None:
            parts.append(f"label={self.label!r}")
        return f"Scene({', '.join(parts)})"


def validate_scenes(scenes: Sequence[Scene], pool_labels: Collection[str] = ()) -> list[Scene]:
    """Check a scene list as a whole and return it as a list.

    Scene 1 must have no entry, every later scene one; a recall target must name an EARLIER scene (a 0-based
    index below the scene's own, or the label of exactly one earlier scene) or, when no earlier scene has
    that label, a scene of a loaded scene pool (``pool_labels``, compared case-insensitively). At most
    :data:`MAX_SCENES` scenes and :data:`MAX_VIDEO_SECONDS` in total. Messages count shots from 1 (the index
    2 is "shot 3"), as the Scene Prompt node's ``recall_target`` does.
    """
    pooled = {label.lower() for label in pool_labels}
    scenes = list(scenes)
    if not scenes:
        raise _error(1, "there are no scenes; give at least one scene")
    if len(scenes) > MAX_SCENES:
        raise _error(MAX_SCENES + 1, f"there are {len(scenes)} scenes; a video may have at most {MAX_SCENES} "
                                     "(MAX_SCENES)", token=str(len(scenes)))
    total = 0.0
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise _error(i + 1, f"expected a Scene, got {type(scene).__name__}", token=repr(scene))
        total += scene.duration
        if total > MAX_VIDEO_SECONDS:
            raise _error(i + 1, f"the scenes up to this one last {_format_seconds(total)} s; a video may last at "
                                f"most {MAX_VIDEO_SECONDS:g} s (MAX_VIDEO_SECONDS, one hour); shorten the scenes",
                         token=f"[{_format_seconds(scene.duration)}s]")
        _check_entry_place(scene, i)
        _check_target_place(scenes, i, pooled, bool(pool_labels))
    return scenes


def _check_entry_place(scene: Scene, i: int) -> None:
    """Scene ``i`` (0-based) has an entry exactly when it is not the first."""
    if i == 0 and scene.entry is not None:
        raise _error(1, f"the first scene cannot have an entry transition (got {scene.entry.value!r}); "
                        "set entry=None", token=scene.entry.value)
    if i > 0 and scene.entry is None:
        raise _error(i + 1, "every scene after the first needs an entry transition (smooth, hardcut, recall or "
                            "auto); entry is None", token="None")


def _check_target_place(scenes: list[Scene], i: int, pooled: set[str], has_pool: bool) -> None:
    """Scene ``i``'s recall target names an earlier scene (by index or unique label) or a pool scene."""
    target, n = scenes[i].recall_target, i + 1
    earlier = "shot 1" if i == 1 else f"shots 1-{i}"
    if isinstance(target, int) and target >= i:
        raise _error(n, f"recall target shot {target + 1} is not an earlier shot; give the number of an earlier "
                        f"shot ({earlier}), its label, or auto", token=str(target + 1))
    if not isinstance(target, str):
        return
    matches = [j for j in range(i) if scenes[j].label == target]
    if not matches and target.lower() in pooled:
        return
    if len(matches) != 1:
        problem = "no earlier scene has" if not matches else f"{len(matches)} earlier scenes have"
        raise _error(n, f"recall target {target!r}: {problem} that label; give the number of an earlier "
                        f"shot ({earlier}), a label that exactly one earlier shot has"
                        + (" or a scene of the scene pool" if has_pool else "") + ", or auto",
                     token=target)


# ---------------------------------------------------------------------------------------------- parsing


def _near_tag(content: str) -> re.Match[str] | None:
    """The :data:`_NEAR_TAG` reading of a bracket group's content when the group looks like a mistyped duration
    tag (the caller has checked that it is not a valid one); ``None``: ordinary prompt text."""
    stripped = content.strip()
    if not stripped or len(stripped) > _NEAR_TAG_CHARS:
        return None
    m = _NEAR_TAG.fullmatch(stripped)
    if m is None or not (m["num"] or m["unit"] or "#" in m["marks"] or "@" in m["marks"]):
        return None
    return m


def _near_tag_problem(content: str, m: re.Match[str]) -> tuple[str, str]:
    """(what is wrong with a tag-like group, how to write it) for a :func:`_near_tag` match."""
    reasons = _number_reasons(m) + _layout_reasons(content, m)
    if not reasons:  # cannot happen for a group that is not a valid tag; kept as a safe fallback
        reasons.append("a character out of place")
    return "; ".join(reasons), _near_tag_fix(m)


def _number_reasons(m: re.Match[str]) -> list[str]:
    """What is wrong with a tag-like group's sign, number and unit."""
    sign, num, unit = m["sign"], m["num"] or "", m["unit"] or ""
    reasons = []
    if sign == "-":
        reasons.append("a negative number; durations are positive seconds")
    elif sign:
        reasons.append(f"a {sign!r} sign")
    if not num:
        reasons.append("no number of seconds")
    else:
        reasons += [why for found, why in (("," in num, "a decimal comma"),
                                           (num[0] in ".,", "no digit before the decimal point"),
                                           (bool(m["exp"]), "an exponent"), (not unit, "no unit 's'")) if found]
    if unit and unit != "s":
        reasons.append(f"the unit {unit!r} instead of a lowercase 's'")
    return reasons


def _layout_reasons(content: str, m: re.Match[str]) -> list[str]:
    """What is wrong with a tag-like group's marker and spaces."""
    marks = m["marks"]
    checks = (
        (marks not in ("", "#", "@"),
         f"the marker {marks!r}; after the 's' comes nothing (smooth), '#' (hard cut) or '@' (recall)"),
        (content != content.strip(), "a space inside the brackets"),
        (bool(marks and m["gap2"]), "a space before the marker"),
        (bool(m["sign"] and m["num"] and m.start("num") > m.end("sign")), "a space after the sign"),
    )
    return [why for found, why in checks if found]


def _near_tag_fix(m: re.Match[str]) -> str:
    """How to write a tag-like group as the tag it most likely meant."""
    num, marks = m["num"] or "", m["marks"]
    marker = marks if marks in ("#", "@") else ""
    if not marker and ("#" in marks) != ("@" in marks):
        marker = "#" if "#" in marks else "@"
    if not num:
        return f"write the seconds, e.g. [10s{marker}]"
    if m["exp"]:
        return f"write the seconds in plain digits, e.g. [10s{marker}]"
    number = num.replace(",", ".")
    number = "0" + number if number[0] == "." else number
    if marks in ("", "#", "@") or marker:
        return f"write [{number}s{marker}]"
    return f"write [{number}s], [{number}s#] (hard cut) or [{number}s@] (recall)"


def _unclosed_tag(part: str) -> str | None:
    """A tag-like ``[10s`` at the end of a scene whose ``]`` is missing, or ``None``."""
    start = part.rfind("[")
    if start < 0 or part.rfind("]") > start or len(part) - start > _NEAR_TAG_CHARS + 1:
        return None
    content = part[start + 1:].rstrip()
    if _TAG_BODY.fullmatch(content) or _near_tag(content):
        return part[start:].rstrip()
    return None


def _parse_scene(part: str, n: int, last_before_titles: bool,
                 warnings: list[ScriptWarning]) -> tuple[str, float, str]:
    """One '|'-separated part (already stripped) -> (prompt, seconds, marker); tag-like text -> ``warnings``."""
    tags: list[tuple[re.Match[str], re.Match[str]]] = []  # (bracket group, tag body)
    near: list[tuple[str, str, str]] = []  # (token, problem, fix)
    for group in _BRACKET_GROUP.finditer(part):
        content = group.group(1)
        body = _TAG_BODY.fullmatch(content)
        if body is not None:
            tags.append((group, body))
            continue
        m = _near_tag(content)
        if m is not None:
            token = group.group(0)
            near.append((token, *_near_tag_problem(content, m)))
    if not tags:
        if near:
            token, problem, fix = near[0]
            raise _error(n, f"missing duration: {token!r} is not a duration tag ({problem}); {fix}", token=token)
        unclosed = _unclosed_tag(part)
        if unclosed is not None:
            raise _error(n, f"missing duration: {unclosed!r} has no closing ']'; {_TAG_HELP}", token=unclosed)
        hint = (" (the first ';' ends the scenes and starts the titles, so a scene's text cannot hold a ';')"
                if last_before_titles else "")
        raise _error(n, f"missing duration in {_snippet(part)!r}; end the scene with a tag such as [10s] "
                        "(seconds), [10s#] (hard cut into the next scene) or [10s@] (recall into the next scene)"
                        + hint, token=_snippet(part))
    if len(tags) > 1:
        listed = ", ".join(_snippet(t.group(0), 24) for t, _ in tags[:4]) + (", ..." if len(tags) > 4 else "")
        raise _error(n, f"more than one duration tag ({listed}); keep exactly one tag per scene and separate "
                        "scenes with '|'", token=_snippet(tags[1][0].group(0)))
    tag, body = tags[0]
    token = _snippet(tag.group(0))
    seconds = float(body.group(1))  # digits only: never raises; more digits than a float holds give inf
    if not seconds > 0:
        raise _error(n, f"zero duration in {token!r}; durations must be positive seconds, e.g. [10s]", token=token)
    if seconds > MAX_SCENE_SECONDS:
        raise _error(n, f"{token!r} is too long: a scene may last at most {MAX_SCENE_SECONDS:g} s "
                        "(MAX_SCENE_SECONDS, one hour); split it into several scenes or shorten it", token=token)
    prompt = (part[: tag.start()] + part[tag.end():]).strip()
    if not prompt:
        raise _error(n, f"scene has no text, only the tag {token!r}; write the scene's prompt before its tag",
                     token=token)
    token_of_tag = token
    for token, problem, fix in near:
        warnings.append(_warning(n, f"{token!r} looks like a duration tag but is not one ({problem}), so it stays "
                                    f"in the prompt text and the scene's duration is {token_of_tag!r}; if it was "
                                    f"meant as a tag, {fix}", token=token))
    return prompt, seconds, body.group(2) or ""


def _snippet(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_scene_script(text: str, warnings: list[ScriptWarning] | None = None) -> list[Scene]:
    """Parse one line of the official format into scenes (see the module docstring for the rules).

    Raises :class:`SceneScriptError` naming the scene and the token. ``warnings``: a list that, when the script
    parses, gets one :class:`ScriptWarning` for every tag-like bracket group kept as prompt text and for
    title text that is ignored (at most 20, the last one counting the rest; nothing is added when the script
    is refused). Callers that pass nothing get the same scenes and no warnings.
    """
    _check_script_text(text)
    found: list[ScriptWarning] = []
    prompt_part, has_tail, tail = text.partition(";")
    titles_part, has_more, ignored = tail.partition(";")  # the official code reads only the second field
    parts = _scene_parts(prompt_part, text)
    _check_no_tag_in_titles(tail, len(parts))
    parsed = [_parse_nonempty_scene(part, i, bool(has_tail) and i + 1 == len(parts), found)
              for i, part in enumerate(parts)]
    labels = _scene_labels(titles_part if has_tail else None, len(parsed), found)
    if has_more and ignored.strip():
        found.append(_warning(None, f"the text after the second ';' ({_snippet(ignored.strip())!r}) is ignored, as "
                                    "the official parser does; titles are separated by '|' and cannot hold a ';'",
                              token=_snippet(ignored.strip())))
    scenes = _scenes_from(parsed, labels)
    if warnings is not None:
        if len(found) > _MAX_WARNINGS:
            more = len(found) - _MAX_WARNINGS + 1
            found[_MAX_WARNINGS - 1:] = [_warning(None, f"{more} more warnings like the ones above are not listed")]
        warnings.extend(found)
    return scenes


def _check_script_text(text) -> None:
    if not isinstance(text, str):
        raise SceneScriptError(f"scene 1: a scene script must be a string, got {type(text).__name__}", scene=1)
    if len(text) > MAX_SCRIPT_CHARS:
        raise SceneScriptError(f"the scene script is {len(text):,} characters long; a script may be at most "
                               f"{MAX_SCRIPT_CHARS:,} characters (MAX_SCRIPT_CHARS; a six-shot script is about "
                               "3,000)", token=_snippet(text))


def _scene_parts(prompt_part: str, text: str) -> list[str]:
    """The '|'-separated scene texts before the first ';', stripped (one trailing '|' tolerated)."""
    prompt_part = prompt_part.strip()
    if prompt_part.endswith("|"):
        prompt_part = prompt_part[:-1].rstrip()  # one trailing separator is tolerated, as officially
    if not prompt_part:
        what = "the script is empty" if not text.strip() else f"there is no scene text in {_snippet(text)!r}"
        raise _error(1, f"{what}; write at least one scene such as 'a red fox runs through snow [10s]'",
                     token=_snippet(text))
    parts = prompt_part.split("|")
    if len(parts) > MAX_SCENES:
        raise _error(MAX_SCENES + 1, f"the script has {len(parts)} scenes; a script may have at most {MAX_SCENES} "
                                     "(MAX_SCENES)", token=str(len(parts)))
    return [part.strip() for part in parts]


def _check_no_tag_in_titles(tail: str, scenes: int) -> None:
    """A duration tag after the first ';' would be read as a title: refuse it."""
    for group in _BRACKET_GROUP.finditer(tail):
        if _TAG_BODY.fullmatch(group.group(1)):
            token = _snippet(group.group(0))
            raise _error(scenes, f"the duration tag {token!r} comes after the first ';', which starts the titles "
                                 "tail (so it would be read as a title); remove the ';' from the scene text",
                         token=token)


def _parse_nonempty_scene(part: str, i: int, last_before_titles: bool,
                          warnings: list[ScriptWarning]) -> tuple[str, float, str]:
    if not part:
        where = "before the first '|'" if i == 0 else "between two '|' separators"
        raise _error(i + 1, f"empty scene: nothing {where}; remove the extra '|' or write the scene's text and tag",
                     token="|")
    return _parse_scene(part, i + 1, last_before_titles, warnings)


def _scene_labels(titles_part: str | None, scenes: int, warnings: list[ScriptWarning]) -> list[str | None]:
    """One label per scene from the titles tail (None: no tail or an empty title); extra titles -> a warning."""
    titles = [title.strip() for title in titles_part.split("|")] if titles_part is not None else []
    labels: list[str | None] = [title or None for title in titles[:scenes]]
    labels += [None] * (scenes - len(labels))
    extra = [title for title in titles[scenes:] if title]
    if extra:
        listed = ", ".join(repr(_snippet(title, 30)) for title in extra[:3]) + (", ..." if len(extra) > 3 else "")
        scenes_text = "1 scene" if scenes == 1 else f"{scenes} scenes"
        warnings.append(_warning(None, f"{len(titles)} titles for {scenes_text}; the extra titles are ignored: "
                                       f"{listed}", token=_snippet(extra[0])))
    return labels


def _scenes_from(parsed: list[tuple[str, float, str]], labels: list[str | None]) -> list[Scene]:
    """Scenes from (prompt, seconds, marker out of the scene): scene i+1 is entered by scene i's marker."""
    scenes = []
    total = 0.0
    for i, (prompt, seconds, _marker) in enumerate(parsed):
        total += seconds
        if total > MAX_VIDEO_SECONDS:
            raise _error(i + 1, f"the scenes up to this one last {_format_seconds(total)} s; a video may last at "
                                f"most {MAX_VIDEO_SECONDS:g} s (MAX_VIDEO_SECONDS, one hour); shorten the scenes",
                         token=f"[{_format_seconds(seconds)}s]")
        entry = None if i == 0 else Transition.from_marker(parsed[i - 1][2])
        scenes.append(Scene(prompt=prompt, duration=seconds, entry=entry, label=labels[i]))
    return scenes


# -------------------------------------------------------------------------------------------- formatting


def _format_seconds(seconds: float) -> str:
    """10.0 -> '10', 2.5 -> '2.5', 1e-05 -> '0.00001' (shortest round-tripping decimal, never exponent form)."""
    text = format(Decimal(repr(float(seconds))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_scene_script(scenes: Sequence[Scene]) -> str:
    """Write scenes in the official format (the inverse of :func:`parse_scene_script`).

    The entry of scene i+1 becomes the marker on scene i; the last scene has no marker. The titles tail is
    written only if some scene has a label. Surrounding whitespace of prompts and labels is not kept.
    """
    scenes = validate_scenes(scenes)
    prompts = []
    for i, scene in enumerate(scenes):
        n = i + 1
        if scene.entry is Transition.AUTO:
            raise _error(n, "entry AUTO (automatic routing) cannot be expressed in the official tag format; "
                            "choose smooth, hardcut or recall for this scene", token="auto")
        if scene.recall_target is not None:
            raise _error(n, f"recall_target={scene.recall_target!r} cannot be expressed in the official tag "
                            "format (the recalled scene is chosen by prompt similarity); set it to None",
                         token=str(scene.recall_target))
        prompt = scene.prompt.strip()
        for char in "|;":
            if char in prompt:
                raise _error(n, f"the prompt contains {char!r}, which the format uses as a separator; remove it",
                             token=char)
        for group in _BRACKET_GROUP.finditer(prompt):
            if _TAG_BODY.fullmatch(group.group(1)):
                raise _error(n, f"the prompt contains the duration tag {group.group(0)!r}, which would be read "
                                "as the scene's duration; remove or reword it", token=group.group(0))
        if scene.label is not None:
            for char in "|;":
                if char in scene.label:
                    raise _error(n, f"the label contains {char!r}, which the titles tail uses as a separator; "
                                    "remove it", token=char)
        prompts.append(prompt)
    pieces = []
    for i, (prompt, scene) in enumerate(zip(prompts, scenes, strict=True)):
        following = scenes[i + 1].entry if i + 1 < len(scenes) else Transition.SMOOTH
        pieces.append(f"{prompt}[{_format_seconds(scene.duration)}s{following.marker}]")
    text = " | ".join(pieces)
    if any(scene.label is not None for scene in scenes):
        text += "; " + " | ".join((scene.label or "").strip() for scene in scenes)
    return text.rstrip()


# -------------------------------------------------------------------------------------------- durations


def _check_timing(fps: float, frames_per_block: int, time_stride: int) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    for name, value in (("frames_per_block", frames_per_block), ("time_stride", time_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def seconds_to_blocks(seconds: float, fps: float = DEFAULT_FPS, frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
                      time_stride: int = DEFAULT_TIME_STRIDE) -> int:
    """Nominal blocks of a scene: max(1, int(seconds * fps / (time_stride * frames_per_block))) (10 s -> 13)."""
    _check_timing(fps, frames_per_block, time_stride)
    return max(1, int((seconds * fps) / (time_stride * frames_per_block)))


def latent_frames_for_seconds(total_seconds: float, fps: float = DEFAULT_FPS,
                              frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
                              time_stride: int = DEFAULT_TIME_STRIDE) -> int:
    """Latent frames of a video of ``total_seconds``: ceil((int(total * fps) // stride) / fpb) * fpb, >= fpb."""
    _check_timing(fps, frames_per_block, time_stride)
    base = int(total_seconds * fps) // time_stride
    return max(-(-base // frames_per_block) * frames_per_block, frames_per_block)


def total_latent_frames(scenes: Sequence[Scene], fps: float = DEFAULT_FPS,
                        frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
                        time_stride: int = DEFAULT_TIME_STRIDE, pool_labels: Collection[str] = ()) -> int:
    """Latent frames of the whole video (6 x 10 s -> 240)."""
    scenes = validate_scenes(scenes, pool_labels)
    total = float(sum(scene.duration for scene in scenes))  # summed in order, like the official code
    return latent_frames_for_seconds(total, fps, frames_per_block, time_stride)


def scene_block_counts(scenes: Sequence[Scene], fps: float = DEFAULT_FPS,
                       frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
                       time_stride: int = DEFAULT_TIME_STRIDE, pool_labels: Collection[str] = ()) -> list[int]:
    """Blocks per scene: nominal for all but the last scene, the last one takes the rest (6 x 10 s -> 13 x 5, 15).

    Raises :class:`SceneScriptError` when the last scene would get less than one block. ``pool_labels``: see
    :func:`validate_scenes`.
    """
    scenes = validate_scenes(scenes, pool_labels)
    total_blocks = total_latent_frames(scenes, fps, frames_per_block, time_stride, pool_labels) // frames_per_block
    counts = [seconds_to_blocks(scene.duration, fps, frames_per_block, time_stride) for scene in scenes[:-1]]
    rest = total_blocks - sum(counts)
    if rest < 1:
        n = len(scenes)
        tag = f"[{_format_seconds(scenes[-1].duration)}s]"
        total = float(sum(scene.duration for scene in scenes))
        block_seconds = frames_per_block * time_stride / fps
        earlier = "scene 1 already takes" if n == 2 else f"scenes 1-{n - 1} already take"
        raise _error(n, f"the last scene ({tag}) would get {rest} blocks: the durations ({_format_seconds(total)} s "
                        f"in total) give {total_blocks} blocks, but {earlier} {sum(counts)} "
                        f"(each scene takes at least one block of {block_seconds:g} s); lengthen the scenes "
                        "(especially the last) or use fewer scenes", token=tag)
    return [*counts, rest]


@dataclass(frozen=True)
class ScenePlan:
    """Where one scene sits in the block schedule: blocks ``start_block`` .. ``start_block + num_blocks - 1``."""

    scene_index: int  # 0-based
    start_block: int
    num_blocks: int

    @property
    def end_block(self) -> int:
        """One past the scene's last block."""
        return self.start_block + self.num_blocks


def plan_blocks(scenes: Sequence[Scene], fps: float = DEFAULT_FPS, frames_per_block: int = DEFAULT_FRAMES_PER_BLOCK,
                time_stride: int = DEFAULT_TIME_STRIDE) -> list[ScenePlan]:
    """Per scene (start_block, num_blocks); the start blocks after the first are the scene boundaries."""
    plans = []
    start = 0
    for i, count in enumerate(scene_block_counts(scenes, fps, frames_per_block, time_stride)):
        plans.append(ScenePlan(scene_index=i, start_block=start, num_blocks=count))
        start += count
    return plans
