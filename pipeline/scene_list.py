"""The shot list that Scene Prompt / Scene Script nodes build and the sampler consumes (no ComfyUI imports).

A :class:`SceneList` is immutable: chaining a Scene Prompt returns a NEW list with one more shot, so
ComfyUI's output cache (which shares node outputs by reference) can never see a list change under it.
Each :class:`Shot` holds the scene as the scene-script layer knows it (prompt, duration, entry, recall
target, label) plus its encoded text (``[1, L, D]`` embeddings, as in a core CONDITIONING) and the text
encoder that made them (used for the 'Similar' recall matching of memory/routing.py).

Names shown to artists: transitions are "smooth", "hard cut", "recall" and "auto"; shots are numbered
from 1 and a recall target is "auto", a shot number of an EARLIER shot, or a label (of an earlier shot or
of a scene in a loaded scene pool).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .latents import LATENT_CHANNELS, LATENT_FORMATS, from_comfy_latent
from .noise import MAX_SEED
from .rollout import RolloutScene
from .scene_script import Scene, SceneScriptError, Transition

_SHOT_NUMBER = re.compile(r"^\s*(?:shot\s*|#)?(\d{1,9})\s*$", re.I)


class SceneListError(ValueError):
    """A shot that cannot be added or used; the message names the shot and says what to change."""


def transition_from_name(name: str | Transition, shot: int) -> Transition:
    """The transition of 1-based shot ``shot`` for an artist's name ("smooth", "hard cut", "recall", "auto")."""
    if isinstance(name, Transition):
        return name
    try:
        return Transition.from_label(name)
    except ValueError as err:
        raise SceneListError(f"shot {shot}: {err}") from None


def parse_recall_target(text: str | None, shot: int) -> int | str | None:
    """The recall target of 1-based shot ``shot``: None for "auto"/empty, a 0-based index for a shot number
    ("2", "#2", "shot 2"), otherwise a label (checked against earlier labels and the pool at run time)."""
    value = (text or "").strip()
    if not value or value.lower() == "auto":
        return None
    match = _SHOT_NUMBER.match(value)
    if match:
        number = int(match.group(1))
        if not 1 <= number < shot:
            earlier = f"shots 1..{shot - 1}" if shot > 2 else "shot 1"
            raise SceneListError(f"shot {shot}: recall target {value!r} is not an earlier shot; "
                                 + (f"choose one of {earlier}" if shot > 1 else "the first shot cannot recall")
                                 + ", a label, or 'auto'")
        return number - 1
    return value


def conditioning_tensor(conditioning, shot: int) -> torch.Tensor:
    """The ``[1, L, D]`` embeddings of a core CONDITIONING (``[[tensor, {...}], ...]``) with one entry."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise SceneListError(f"shot {shot}: the conditioning input is empty")
    if len(conditioning) != 1:
        raise SceneListError(f"shot {shot}: the conditioning holds {len(conditioning)} entries (combined or "
                             "concatenated prompts); connect a single CLIP Text Encode output")
    entry = conditioning[0]
    tensor = entry[0] if isinstance(entry, (list, tuple)) and entry else None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
        raise SceneListError(f"shot {shot}: the conditioning is not a text encoding [batch, tokens, width]")
    if tensor.shape[0] != 1:
        raise SceneListError(f"shot {shot}: the conditioning has batch {tensor.shape[0]}; encode one prompt")
    return tensor


def _check_seed(seed: int | None, number: int) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise SceneListError(f"shot {number}: seed must be an integer in 0..2^64-1, got {seed!r}")


def start_from_comfy_latent(latent: object, shot: int, last: int = 0) -> torch.Tensor:
    """Shot ``shot``'s start latent from a core LATENT (VAE Encode of an image or a clip with the Wan VAE: raw
    ``[1, 16, T, H/8, W/8]``, or 48 channels at H/16 from the Wan2.2 VAE), normalised as the pipeline holds latents
    ``[1, T, C, h, w]``; ``last`` > 0 keeps
    only its last ``last`` latent frames (the end of an encoded clip)."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise SceneListError(f"shot {shot}: the start latent is not a LATENT (connect VAE Encode)")
    if samples.dim() != 5 or samples.shape[1] not in LATENT_FORMATS:
        raise SceneListError(f"shot {shot}: the start latent is {list(samples.shape)}; expected a Wan video latent "
                             f"[1, {LATENT_CHANNELS}, frames, height/8, width/8]: encode the image or clip with the "
                             "model's VAE (wan_2.1_vae; the Wan2.2 VAE for a 5B model) through VAE Encode")
    if samples.shape[0] != 1:
        raise SceneListError(f"shot {shot}: the start latent holds {samples.shape[0]} videos; encode one image or "
                             "one clip (its frames as one image batch)")
    if not samples.is_floating_point():
        raise SceneListError(f"shot {shot}: the start latent must hold floating-point latents, got {samples.dtype}")
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise SceneListError(f"shot {shot}: start_frames must be 0 (every frame) or a number of frames, got {last!r}")
    if last > samples.shape[2]:
        raise SceneListError(f"shot {shot}: start_frames is {last} but the start latent holds {samples.shape[2]} "
                             "latent frames; use at most that many, or 0 for all")
    return from_comfy_latent(samples[:, :, samples.shape[2] - last:] if last else samples)


def _checked_start(start: object, number: int) -> torch.Tensor | None:
    """Shot ``number``'s start latent as float32 on the CPU, after the checks that need no model (the run checks
    channels, size and length)."""
    if start is None:
        return None
    if not isinstance(start, torch.Tensor) or start.dim() != 5 or start.shape[0] != 1 or start.shape[1] < 1 \
            or not start.is_floating_point():
        got = list(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise SceneListError(f"shot {number}: the start latent must be one video's latents [1, frames, channels, "
                             f"height/8, width/8], got {got}")
    start = start.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(start).all()):
        raise SceneListError(f"shot {number}: the start latent holds NaN or infinite values")
    return start


def _shot_prompt(prompt: str | None, label: str | None, encoder: object | None, number: int) -> str:
    """The shot's prompt text; an external conditioning with no text is named by its label for reports."""
    prompt = (prompt or "").strip()
    if prompt:
        return prompt
    if encoder is not None:
        raise SceneListError(f"shot {number}: the prompt text is empty; describe the shot")
    return label or f"shot {number}"


@dataclass(frozen=True, repr=False)
class Shot:
    """One shot: the scene and its encoded prompt."""

    scene: Scene
    text: torch.Tensor
    """Prompt embeddings ``[1, L, D]`` (zero-padded rows allowed), on the CPU."""
    encoder: object | None = None
    """The text encoder (a ComfyUI CLIP) that encoded ``text``; None when a conditioning was connected."""
    seed: int | None = None
    """The shot's own noise seed (per-shot noise); None: derived from the sampler's seed and the shot's number."""
    start: torch.Tensor | None = None
    """Latent frames the shot starts from (an encoded image or the last frames of a clip): normalised
    ``[1, n, C, h, w]`` float32 on the CPU (``pipeline.latents.from_comfy_latent``); the run checks them against
    the model, the size and the shot's length (``pipeline.rollout.check_start_latent``)."""

    def __repr__(self) -> str:
        extra = (f", seed {self.seed}" if self.seed is not None else "") + (
            f", start {self.start.shape[1]} frames" if self.start is not None else "")
        return f"Shot({self.scene!r}, text {list(self.text.shape)}{extra})"


@dataclass(frozen=True, repr=False)
class SceneList:
    """The shots of one video, in order. Immutable: :meth:`then` returns a new list."""

    shots: tuple[Shot, ...] = ()
    story: object | None = None
    """A ``pipeline.story.Story`` whose shots are this list's first ones (Load Story): a run goes on after it."""
    notes: tuple[str, ...] = ()
    """Warnings about the shots (e.g. the scene script's tag-like text kept as prompt); the run report lists them."""

    def __repr__(self) -> str:
        parts = [f"{self.title(i)[:40]} {s.scene.duration:g}s" for i, s in enumerate(self.shots[:12])]
        more = f", +{len(self.shots) - 12}" if len(self.shots) > 12 else ""
        after = f", after a story of {len(self.story.shots)}" if self.story is not None else ""
        return f"SceneList({len(self.shots)} shots: {', '.join(parts)}{more}{after})"

    def __len__(self) -> int:
        return len(self.shots)

    @property
    def scenes(self) -> list[Scene]:
        return [s.scene for s in self.shots]

    @property
    def seconds(self) -> float:
        return sum(s.scene.duration for s in self.shots)

    def title(self, index: int) -> str:
        """How reports and the timeline name shot ``index`` (0-based): its label, else "shot N"."""
        return self.shots[index].scene.label or f"shot {index + 1}"

    def then(self, prompt: str, text: torch.Tensor, duration: float, transition: str | Transition,
             recall_target: str | None = None, label: str | None = None, encoder: object | None = None,
             seed: int | None = None, start: torch.Tensor | None = None) -> SceneList:
        """This list with one more shot. The first shot's transition is ignored (nothing comes before it).
        ``start``: normalised latents ``[1, n, C, h, w]`` the shot starts from."""
        number = len(self.shots) + 1
        _check_seed(seed, number)
        start = _checked_start(start, number)
        label = (label or "").strip() or None
        prompt = _shot_prompt(prompt, label, encoder, number)
        self._check_text(text, number)
        self._check_label(label, number)
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
            raise SceneListError(f"shot {number}: duration must be a positive number of seconds, got {duration!r}")
        entry, target = self._entry(transition, recall_target, number)
        try:
            scene = Scene(prompt, float(duration), entry, target, label)
        except SceneScriptError as err:
            raise SceneListError(f"shot {number}: {err}") from None
        return SceneList((*self.shots, Shot(scene, text.detach().to("cpu"), encoder, seed, start)), self.story,
                         self.notes)

    def _check_text(self, text, number: int) -> None:
        """Shot ``number``'s embeddings are ``[1, tokens, width]`` of the first shot's width."""
        if not isinstance(text, torch.Tensor) or text.dim() != 3 or text.shape[0] != 1:
            raise SceneListError(f"shot {number}: expected prompt embeddings [1, tokens, width], "
                                 f"got {getattr(text, 'shape', type(text).__name__)}")
        if self.shots and text.shape[-1] != self.shots[0].text.shape[-1]:
            raise SceneListError(f"shot {number}: its text encoding is {text.shape[-1]} wide but shot 1's is "
                                 f"{self.shots[0].text.shape[-1]}; use the same text encoder for every shot")

    def _check_label(self, label: str | None, number: int) -> None:
        """Labels name shots for recalls, so no two shots share one (case-insensitively)."""
        if label is not None and any((s.scene.label or "").lower() == label.lower() for s in self.shots):
            raise SceneListError(f"shot {number}: the label {label!r} is already used by an earlier shot; "
                                 "labels name shots for recalls, so make them unique")

    def _entry(self, transition: str | Transition, recall_target: str | None,
               number: int) -> tuple[Transition | None, int | str | None]:
        """Shot ``number``'s entry and recall target (none for the first shot: nothing comes before it)."""
        entry = transition_from_name(transition, number)
        if not self.shots:
            return None, None
        target = parse_recall_target(recall_target, number)
        if target is not None and entry not in (Transition.RECALL, Transition.AUTO):
            raise SceneListError(f"shot {number}: a recall target ({recall_target!r}) needs the transition "
                                 f"'recall' or 'auto', not {entry.label!r}; set it to 'auto' or "
                                 "change the transition")
        return entry, target

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene], texts: Sequence[torch.Tensor], encoder: object | None = None,
                    notes: Sequence[str] = ()) -> SceneList:
        """A list from parsed scene-script scenes and their encodings (entries and labels kept); ``notes``: the
        parser's warnings."""
        if len(scenes) != len(texts):
            raise SceneListError(f"{len(scenes)} scenes but {len(texts)} encoded prompts")
        if not scenes:
            raise SceneListError("the scene script holds no scene")
        return cls(tuple(Shot(s, t.detach().to("cpu"), encoder) for s, t in zip(scenes, texts, strict=True)), None,
                   tuple(str(n) for n in notes))

    def rollout_scenes(self, texts: Sequence, blocks: Sequence[int]) -> list[RolloutScene]:
        """The rollout's scenes: each shot with its encoded text (``CausalWan.encode_text``) and block count,
        titled as reports name it (its label, else "shot N")."""
        return [RolloutScene(text, n, s.scene.prompt, s.scene.entry, s.scene.recall_target, self.title(i), s.seed,
                             s.start)
                for i, (s, text, n) in enumerate(zip(self.shots, texts, blocks, strict=True))]

    def encoder(self) -> object | None:
        """The text encoder of the first shot that has one (for 'Similar' recall matching)."""
        return next((s.encoder for s in self.shots if s.encoder is not None), None)
