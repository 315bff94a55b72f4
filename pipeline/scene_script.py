"""Scene scripts: the official one-line multi-shot prompt format, its parser, and the block schedule.

Format (SPEC §3.12, §4.1; marker characters as in the per-mode table of §3.10)::

    <scene 1 text>[10s#] | <scene 2 text>[10s] | <scene 3 text>[10s@] | <scene 4 text>[10s] ; title 1 | title 2

* Everything before the first ``;`` is the scene part; it is split at ``|`` into scenes. Each scene carries
  exactly one duration tag ``[<seconds>s]``, ``[<seconds>s#]`` or ``[<seconds>s@]`` (decimals allowed, spaces
  allowed between the number and the ``s``); the tag may stand anywhere in the text and is cut out, the
  rest is stripped (inner whitespace is kept as it is).
* The marker on scene i selects the transition OUT of scene i into scene i+1 (``#`` hard cut, ``@`` recall,
  none = smooth); the last scene's marker is ignored (SPEC §3.12 gives the evidence). :class:`Scene` stores
  the other way round: ``entry`` = how the scene is entered (the marker of the scene before it; ``None`` for
  the first scene). :func:`parse_scene_script` and :func:`format_scene_script` convert between the two.
* The optional tail after the first ``;`` gives one title per scene, separated by ``|`` (padded / truncated
  to the number of scenes); they become :attr:`Scene.label`.
* Timing: a scene of d seconds nominally takes ``max(1, int(d * 16 / (4 * 3)))`` blocks; the video has
  ``ceil((int(total * 16) // 4) / 3) * 3`` latent frames (at least 3); scene boundaries are the cumulative
  sums of all scenes but the last, and the last scene takes all remaining blocks (6 x 10 s -> 13, 13, 13,
  13, 13, 15 blocks, 240 latent frames).

Where the official parser (Echo-Forcing ``utils/interactive.py``) differs, we are stricter and raise
:class:`SceneScriptError` instead of guessing:

* a scene without a duration tag: the official code falls back to 21 blocks for that scene and to the
  ``--num_output_frames`` command-line value for the video length; here it is an error;
* a bracketed token that looks like a broken tag (``[10s!]``, ``[10s#@]``, ``[10x]``, ``[s]``, ``[10]``,
  ``[ 10s]``, ``[10S]``, ``[-5s]``, ``[.5s]``; i.e. any bracketed text of at most 16 characters that holds a
  digit, or a lone ``s``): the official regex does not match it, so it silently stays in the prompt text and
  the scene has no duration; here it is an error naming the token (brackets without digits, like
  ``[sic]``, stay ordinary prompt text);
* a zero duration (``[0s]``): the official code still gives the scene one block; here it is an error;
* two or more tags in one scene: the official code uses the first one's duration and marker and deletes all
  of them; here it is an error;
* an empty scene between two ``|`` (or at the start), or a scene that is only a tag: the official code drops
  the empty part (so the scenes and titles shift) or encodes an empty prompt; here it is an error. A single
  trailing ``|`` is accepted, as the official code does;
* a duration tag inside the titles tail (a ``;`` inside scene text ends the scene part early): an error;
* durations so short that the last scene would get no block of its own: the official pipeline then never
  reaches the last scene(s); here :func:`scene_block_counts` raises.

:class:`Transition` also has ``AUTO`` (the paper's automatic router, appendix B, SPEC §3.11), which the tag
format cannot express; neither can an explicit recall target (``Scene.recall_target``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

__all__ = [
    "Scene",
    "ScenePlan",
    "SceneScriptError",
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

# The official duration tag, character for character (group 1: seconds, group 2: optional marker).
DURATION_TAG = re.compile(r"\[(\d+\.?\d*)\s*s([#@])?\]")
# Any bracket group without nested brackets; every official tag is one of these.
_BRACKET_GROUP = re.compile(r"\[([^\[\]]*)\]")
# Loose reading of a bracket group's content, used only to explain why a tag-like token is not a valid tag.
_LOOSE_TAG = re.compile(r"\s*(?P<sign>[-+]?)\s*(?P<num>\d*\.?\d*)\s*(?P<unit>[A-Za-z]*)\s*(?P<rest>.*?)\s*", re.S)
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


class Transition(str, Enum):
    """How a scene is entered from the scene before it."""

    SMOOTH = "smooth"
    HARD_CUT = "hardcut"
    RECALL = "recall"
    AUTO = "auto"  # decided by the paper's automatic router (appendix B); no tag marker exists for it

    @property
    def marker(self) -> str:
        """The marker character of the official tag ("" smooth, "#" hard cut, "@" recall)."""
        if self is Transition.AUTO:
            raise SceneScriptError("Transition.AUTO has no marker in the official tag format")
        return _MARKERS[self]

    @classmethod
    def from_marker(cls, marker: str) -> Transition:
        """The transition for a tag marker ("", "#" or "@")."""
        for transition, char in _MARKERS.items():
            if char == marker:
                return transition
        raise SceneScriptError(f"unknown transition marker {marker!r}; use '' (smooth), '#' (hard cut) or '@' (recall)",
                               token=marker)


_MARKERS = {Transition.SMOOTH: "", Transition.HARD_CUT: "#", Transition.RECALL: "@"}


@dataclass(frozen=True)
class Scene:
    """One shot of a multi-shot video.

    ``prompt``: the scene's text prompt. ``duration``: seconds (> 0; ints are stored as float).
    ``entry``: how this scene is entered (``None`` for the first scene; a :class:`Transition` or its value).
    ``recall_target``: for a RECALL / AUTO entry only, the EARLIER scene to recall, as a 0-based index or a
    label; ``None`` = choose automatically (by prompt similarity). ``label``: an optional title.
    """

    prompt: str
    duration: float
    entry: Transition | None = None
    recall_target: int | str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SceneScriptError(f"Scene.prompt must be a non-empty string, got {self.prompt!r}")
        duration = self.duration
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise SceneScriptError(f"Scene.duration must be a number of seconds, got {duration!r}")
        duration = float(duration)
        if not math.isfinite(duration) or duration <= 0:
            raise SceneScriptError(f"Scene.duration must be a positive, finite number of seconds, got {duration!r}")
        object.__setattr__(self, "duration", duration)
        if self.entry is not None and not isinstance(self.entry, Transition):
            try:
                object.__setattr__(self, "entry", Transition(self.entry))
            except ValueError:
                choices = ", ".join(repr(t.value) for t in Transition)
                raise SceneScriptError(f"Scene.entry must be None or one of {choices}, got {self.entry!r}") from None
        target = self.recall_target
        if target is not None:
            if self.entry not in (Transition.RECALL, Transition.AUTO):
                raise SceneScriptError(
                    f"Scene.recall_target={target!r} needs entry RECALL or AUTO (entry is "
                    f"{self.entry.value if self.entry else None!r}); drop the target or change the entry")
            if isinstance(target, bool) or not isinstance(target, (int, str)):
                raise SceneScriptError(f"Scene.recall_target must be a scene index, a label or None, got {target!r}")
            if isinstance(target, int) and target < 0:
                raise SceneScriptError(f"Scene.recall_target must be a 0-based index >= 0, got {target}")
            if isinstance(target, str) and not target.strip():
                raise SceneScriptError("Scene.recall_target must not be an empty label; use None for automatic")
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

    Scene 1 must have no entry, every later scene one; a recall target must name an EARLIER scene (0-based
    index below the scene's own, or the label of exactly one earlier scene) or, when no earlier scene has
    that label, a scene of a loaded scene pool (``pool_labels``, compared case-insensitively).
    """
    pooled = {label.lower() for label in pool_labels}
    scenes = list(scenes)
    if not scenes:
        raise _error(1, "there are no scenes; give at least one scene")
    for i, scene in enumerate(scenes):
        n = i + 1
        if not isinstance(scene, Scene):
            raise _error(n, f"expected a Scene, got {type(scene).__name__}", token=repr(scene))
        if i == 0 and scene.entry is not None:
            raise _error(n, f"the first scene cannot have an entry transition (got {scene.entry.value!r}); "
                            "set entry=None", token=scene.entry.value)
        if i > 0 and scene.entry is None:
            raise _error(n, "every scene after the first needs an entry transition (smooth, hardcut, recall or "
                            "auto); entry is None", token="None")
        target = scene.recall_target
        if isinstance(target, int) and target >= i:
            raise _error(n, f"recall_target={target} is not an earlier scene; use a 0-based index below {i} "
                            "or None", token=str(target))
        if isinstance(target, str):
            matches = [j for j in range(i) if scenes[j].label == target]
            if not matches and target.lower() in pooled:
                continue
            if len(matches) != 1:
                problem = "no earlier scene has" if not matches else f"{len(matches)} earlier scenes have"
                raise _error(n, f"recall_target={target!r}: {problem} that label; use a unique label of an "
                                "earlier scene" + (" or of the scene pool" if pool_labels else "")
                                + " or a 0-based index", token=target)
    return scenes


# ---------------------------------------------------------------------------------------------- parsing


def _explain_bad_tag(token: str, content: str) -> str | None:
    """Why a bracket group that is not an official tag looks like a broken one (``None``: ordinary text)."""
    stripped = content.strip()
    if not stripped or len(stripped) > 16:
        return None
    m = _LOOSE_TAG.fullmatch(content)
    has_digit = any(ch.isdigit() for ch in stripped)
    if m is None:
        return f"malformed duration tag {token!r}; {_TAG_HELP}" if has_digit else None
    sign, num, unit, rest = m["sign"], m["num"], m["unit"], m["rest"]
    if not has_digit and not (unit in ("s", "S") and not num and not sign):
        return None
    if not any(ch.isdigit() for ch in num):
        return f"duration tag {token!r} has no number of seconds; {_TAG_HELP}"
    if sign == "-":
        return f"negative duration in {token!r}; durations must be positive seconds, e.g. [10s]"
    if unit != "s":
        if unit == "S":
            return f"duration tag {token!r} uses 'S'; the unit must be a lowercase 's', e.g. [10s]"
        if not unit:
            return f"duration tag {token!r} has no unit; add 's' for seconds, e.g. [{num}s]"
        return f"duration tag {token!r} has unit {unit!r}; only seconds ('s') are supported, e.g. [10s]"
    if rest not in ("", "#", "@"):
        return (f"unknown transition marker {rest!r} in {token!r}; the marker is one of nothing (smooth), "
                "'#' (hard cut) or '@' (recall), at most one, right after the 's'")
    canonical = f"[{num if num[0].isdigit() else '0' + num}s{rest}]"
    return f"malformed duration tag {token!r}; write it as {canonical} (no sign, no space after '[' or before ']')"


def _parse_scene(part: str, n: int) -> tuple[str, float, str]:
    """One '|'-separated part (already stripped) -> (prompt, seconds, marker)."""
    tags = []
    for group in _BRACKET_GROUP.finditer(part):
        token = group.group(0)
        tag = DURATION_TAG.fullmatch(token)
        if tag is not None:
            tags.append(tag)
            continue
        problem = _explain_bad_tag(token, group.group(1))
        if problem is not None:
            raise _error(n, problem, token=token)
    # Every official match is a bracket group, so `tags` equals DURATION_TAG.findall(part).
    if not tags:
        raise _error(n, f"missing duration in {_snippet(part)!r}; end the scene with a tag such as [10s] "
                        "(seconds), [10s#] (hard cut into the next scene) or [10s@] (recall into the next scene)",
                     token=_snippet(part))
    if len(tags) > 1:
        listed = ", ".join(t.group(0) for t in tags)
        raise _error(n, f"more than one duration tag ({listed}); keep exactly one tag per scene and separate "
                        "scenes with '|'", token=tags[1].group(0))
    tag = tags[0]
    seconds = float(tag.group(1))
    if not seconds > 0:
        raise _error(n, f"zero duration in {tag.group(0)!r}; durations must be positive seconds, e.g. [10s]",
                     token=tag.group(0))
    prompt = DURATION_TAG.sub("", part).strip()
    if not prompt:
        raise _error(n, f"scene has no text, only the tag {tag.group(0)!r}; write the scene's prompt before its "
                        "tag", token=tag.group(0))
    return prompt, seconds, tag.group(2) or ""


def _snippet(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_scene_script(text: str) -> list[Scene]:
    """Parse one line of the official format into scenes (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise SceneScriptError(f"scene 1: a scene script must be a string, got {type(text).__name__}", scene=1)
    prompt_part, has_tail, tail = text.partition(";")
    prompt_part = prompt_part.strip()
    if prompt_part.endswith("|"):
        prompt_part = prompt_part[:-1].rstrip()  # one trailing separator is tolerated, as officially
    if not prompt_part:
        what = "the script is empty" if not text.strip() else f"there is no scene text in {_snippet(text)!r}"
        raise _error(1, f"{what}; write at least one scene such as 'a red fox runs through snow [10s]'",
                     token=text)
    parts = [part.strip() for part in prompt_part.split("|")]
    titles = [title.strip() for title in tail.split("|")] if has_tail else []
    tag_in_tail = DURATION_TAG.search(tail)
    if tag_in_tail is not None:
        raise _error(len(parts), f"the duration tag {tag_in_tail.group(0)!r} comes after the first ';', which starts "
                                 "the titles tail (so it would be read as a title); remove the ';' from the scene "
                                 "text", token=tag_in_tail.group(0))
    parsed = []
    for i, part in enumerate(parts):
        n = i + 1
        if not part:
            where = "before the first '|'" if i == 0 else "between two '|' separators"
            raise _error(n, f"empty scene: nothing {where}; remove the extra '|' or write the scene's text and tag",
                         token="|")
        parsed.append(_parse_scene(part, n))

    labels: list[str | None] = [None] * len(parsed)
    for i, title in enumerate(titles[: len(parsed)]):
        labels[i] = title or None

    scenes = []
    for i, (prompt, seconds, _marker) in enumerate(parsed):
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
            if DURATION_TAG.fullmatch(group.group(0)) or _explain_bad_tag(group.group(0), group.group(1)):
                raise _error(n, f"the prompt contains the tag-like text {group.group(0)!r}, which would be read "
                                "as a duration tag; remove or reword it", token=group.group(0))
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
