"""Configuration of the Echo-Forcing scene memory (docs/MEMORY.md).

Every knob of the official code and of the paper, as frozen dataclasses that validate themselves and name
the field that is wrong, and the two errors the memory refuses work with before any model call
(``ConfigError`` for a config, ``SceneMemoryError`` for a scene plan). Defaults are the official code's
(`configs/self_forcing_dmd.yaml`, `configs/interactive.yaml`); the paper's values are reachable through
options (see ``memory.presets``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import Enum


class ConfigError(ValueError):
    """A memory configuration that cannot work; the message names the field and says what to change."""


class SceneMemoryError(ValueError):
    """A scene plan the memory cannot carry out (a missing transition, a recall with nothing to recall, an
    unknown recall target, 'Similar' matching without a text encoder); raised before any model call."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> None:
    """Raise ConfigError unless ``value`` is an integer in ``low..high`` (``why`` explains the bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if high is None and value < low:
        raise ConfigError(f"{name} must be >= {low}{why}, got {value}")
    if high is not None and not low <= value <= high:
        raise ConfigError(f"{name} must lie in {low}..{high}{why}, got {value}")


class Transition(str, Enum):
    """How a shot is entered from the shot before it: the pack's one vocabulary for transitions.

    The value is the memory's and the files' spelling; ``label`` is what artists read (node options, reports,
    the timeline) and ``marker`` the official scene-script tag's character, written at the end of the shot
    the transition leaves (``a[5s#] b`` cuts hard from a into b). ``AUTO`` is the paper's automatic router
    (appendix B): it becomes one of the three others when the shot starts and has no tag marker.
    """

    SMOOTH = "smooth"
    HARD_CUT = "hardcut"
    RECALL = "recall"
    AUTO = "auto"

    @property
    def label(self) -> str:
        """The artist's name: "smooth", "hard cut", "recall", "auto"."""
        return "hard cut" if self is Transition.HARD_CUT else self.value

    @property
    def marker(self) -> str:
        """The official tag's marker ("" smooth, "#" hard cut, "@" recall); AUTO has none (ValueError)."""
        if self is Transition.AUTO:
            raise ValueError("Transition.AUTO has no marker in the official tag format")
        return {Transition.SMOOTH: "", Transition.HARD_CUT: "#", Transition.RECALL: "@"}[self]

    @classmethod
    def from_marker(cls, marker: str) -> Transition:
        """The transition for a tag marker ("", "#" or "@")."""
        for transition in cls.modes():
            if transition.marker == marker:
                return transition
        raise ValueError(f"unknown transition marker {marker!r}; use '' (smooth), '#' (hard cut) or '@' (recall)")

    @classmethod
    def from_label(cls, name: str) -> Transition:
        """The transition for an artist's name or a value, forgiving case, spaces, "_" and "-" ("Hard_Cut")."""
        key = "".join(str(name).lower().replace("_", " ").replace("-", " ").split())
        for transition in cls:
            if key == transition.value:
                return transition
        raise ValueError(f"unknown transition {name!r}; choose one of: {', '.join(cls.labels())}")

    @classmethod
    def labels(cls) -> list[str]:
        """The artists' names in menu order (the Scene Prompt node's options)."""
        return [transition.label for transition in cls]

    @classmethod
    def modes(cls) -> tuple[Transition, ...]:
        """The transitions the memory carries out (each with its own ``ModeConfig``): all but AUTO."""
        return cls.SMOOTH, cls.HARD_CUT, cls.RECALL


class OldMemorySource(str, Enum):
    """Which single frame of earlier memory is carried across a switch (``memory.transitions``)."""

    COMPRESS = "compress"  # the Scene Recall Frame of the relevant scene
    SELECT = "select"  # the relevant scene's first latent frame
    RESINK = "resink"  # cache slot 0 of the previous scene


class DecayTarget(str, Enum):
    OLD_MEMORY = "old_memory"  # recall frame + carried recent frames
    OLD_RECALL = "old_recall"  # only the recall frame
    OLD_RECENT = "old_recent"  # only the carried recent frames (smooth)


class DecayStrategy(str, Enum):
    DIFF = "diff"  # difference-aware per-position rates (memory.decay)
    FIXED = "fixed"  # one rate for every old token


class JumpStrategy(str, Enum):
    FIXED = "fixed"
    SIMILARITY = "similarity"  # official recall jump: 0..max from the normalised similarity gap (memory.routing)
    PAPER = "paper"  # paper appendix B: min(45, 10 * (t - i*)) scenes back


class MatchMethod(str, Enum):
    SIMILAR = "similar"  # text-encoder features of the prompts without their common words
    IDF = "idf"  # TF-IDF over the scene prompts, no encoder


class MatchScope(str, Enum):
    """Which prompts the recall-matching features are computed over (IDF statistics, common-word filter)."""

    VIDEO = "video"  # official: every prompt of the video, so a later shot's prompt can change an earlier recall
    SO_FAR = "so-far"  # the shots up to the one being entered (and the pool's): no shot depends on later ones


class AnchorOrder(str, Enum):
    PING_PONG = "ping-pong"  # the official code: 3-frame groups 3,2,1,0 (reversed) then 0,1,2,3, period 8 blocks
    PAPER = "paper"  # the paper's eq. (1): u_r = (r S) mod N, groups reversed on even updates


class RecallFusion(str, Enum):
    SCORE_WEIGHTED = "score_weighted"  # per-position softmax fusion of the candidate frames
    TOKEN_SELECT = "token_select"  # per position, the best-scoring candidate frame


@dataclass(frozen=True)
class DecayConfig:
    target: DecayTarget = DecayTarget.OLD_MEMORY
    strategy: DecayStrategy = DecayStrategy.DIFF
    min_rate: float = 0.80
    max_rate: float = 0.95
    fixed_rate: float = 1.0
    first_block_weight: float = 1.0
    clear_after_blocks: int = 5

    def __post_init__(self):
        object.__setattr__(self, "target", DecayTarget(self.target))
        object.__setattr__(self, "strategy", DecayStrategy(self.strategy))
        _check(0.0 < self.min_rate <= self.max_rate <= 1.0,
               f"decay rates need 0 < min_rate <= max_rate <= 1, got {self.min_rate}..{self.max_rate}")
        _check(0.0 < self.fixed_rate <= 1.0, f"decay fixed_rate must lie in (0, 1], got {self.fixed_rate}")
        _check(0.0 <= self.first_block_weight <= 1.0,
               f"decay first_block_weight must lie in [0, 1], got {self.first_block_weight}")
        _check(self.clear_after_blocks >= 1, f"decay clear_after_blocks must be >= 1, got {self.clear_after_blocks}")

    @classmethod
    def from_mu(cls, mu_min: float, mu_max: float, **kw) -> DecayConfig:
        """The paper's parameterisation w_r = exp(-r mu): mu = -ln(rate), so rates = exp(-mu)."""
        _check(0.0 <= mu_min <= mu_max, f"decay mu needs 0 <= mu_min <= mu_max, got {mu_min}..{mu_max}")
        return cls(min_rate=math.exp(-mu_max), max_rate=math.exp(-mu_min), **kw)

    @property
    def mu_range(self) -> tuple[float, float]:
        """(mu_min, mu_max) of the paper's exp(-r mu) for these rates."""
        return -math.log(self.max_rate), -math.log(self.min_rate)


@dataclass(frozen=True)
class RopeJumpConfig:
    strategy: JumpStrategy = JumpStrategy.FIXED
    value: int = 0
    min_value: int = 0
    max_value: int = 6

    def __post_init__(self):
        object.__setattr__(self, "strategy", JumpStrategy(self.strategy))
        _check(0 <= self.value <= 1000, f"rope jump value must lie in 0..1000, got {self.value}")
        _check(0 <= self.min_value <= self.max_value <= 1000,
               f"rope jump needs 0 <= min_value <= max_value <= 1000, got {self.min_value}..{self.max_value}")


@dataclass(frozen=True)
class ModeConfig:
    """What a transition carries across the switch and how it fades (``memory.transitions``, ``memory.decay``)."""

    use_old_memory: bool = True
    old_memory_source: OldMemorySource = OldMemorySource.COMPRESS
    old_recent_frames: int = 0
    decay: DecayConfig = field(default_factory=DecayConfig)
    rope_jump: RopeJumpConfig = field(default_factory=RopeJumpConfig)

    def __post_init__(self):
        object.__setattr__(self, "old_memory_source", OldMemorySource(self.old_memory_source))
        _check(0 <= self.old_recent_frames <= 6, f"old_recent_frames must lie in 0..6, got {self.old_recent_frames}")


def _default_modes() -> dict[Transition, ModeConfig]:
    return {
        Transition.SMOOTH: ModeConfig(
            old_recent_frames=2,
            decay=DecayConfig(strategy=DecayStrategy.DIFF, min_rate=0.80, max_rate=0.95, clear_after_blocks=5),
            rope_jump=RopeJumpConfig(JumpStrategy.FIXED, value=0)),
        Transition.HARD_CUT: ModeConfig(
            decay=DecayConfig(strategy=DecayStrategy.FIXED, fixed_rate=1.0, first_block_weight=0.8,
                              clear_after_blocks=1),
            rope_jump=RopeJumpConfig(JumpStrategy.FIXED, value=45)),
        Transition.RECALL: ModeConfig(
            decay=DecayConfig(strategy=DecayStrategy.DIFF, min_rate=0.55, max_rate=0.90, clear_after_blocks=5),
            rope_jump=RopeJumpConfig(JumpStrategy.SIMILARITY, min_value=0, max_value=6)),
    }


@dataclass(frozen=True)
class EchoMemoryConfig:
    """The hierarchical temporal memory and scene memory of Echo-Forcing, official-code defaults."""

    budget_frames: int = 21
    """Working cache in latent frames (21 = Self-Forcing's training length)."""
    anchor_frames: int = 12
    """Anchor region (rolling anchors), a multiple of the 3-frame block."""
    compressed_frames: int = 3
    """Compressed region filled by drift-gated phase compression."""
    recent_frames: int = 3
    """Recent region: the previous block (also excluded from compression candidates)."""
    frames_per_block: int = 3
    anchor_pool_frames: int = 12
    """The scene's first N clean frames replayed as anchors (official 12 = rolling_cycle 4; paper 18)."""
    anchor_order: AnchorOrder = AnchorOrder.PING_PONG
    compression: bool = True
    drift_gate_lambda: float = 3.0
    amplitude_compensation: bool = True
    drift_gate: bool = True
    reuse_cap: int = 8
    """A history token selected this many times is no longer a candidate (0 = no cap)."""
    recall_storage_frames: int = 12
    recall_source_frames: int = 12
    recall_stride: int = 4
    recall_fusion: RecallFusion = RecallFusion.SCORE_WEIGHTED
    recall_base_frame_weight: float = 0.9
    """Scene Recall Frame = w * first frame + (1 - w) * fusion (official 0.9; paper 0 = pure fusion)."""
    pool_size: int = 64
    match_method: MatchMethod = MatchMethod.SIMILAR
    match_scope: MatchScope = MatchScope.VIDEO
    """The prompts recall matching compares over: the whole video (official) or the shots so far."""
    exclude_previous_scene: bool = False
    """Recall never picks the scene just before (paper: i* != t-1); the official code allows it."""
    transition_frames: int = 3
    """Frames shifted by a RoPE jump in the first block of a scene."""
    modes: dict = field(default_factory=_default_modes)

    def __post_init__(self):
        object.__setattr__(self, "anchor_order", AnchorOrder(self.anchor_order))
        object.__setattr__(self, "recall_fusion", RecallFusion(self.recall_fusion))
        object.__setattr__(self, "match_method", MatchMethod(self.match_method))
        object.__setattr__(self, "match_scope", MatchScope(self.match_scope))
        modes = {Transition(k): v for k, v in self.modes.items()}
        object.__setattr__(self, "modes", modes)
        fpb = self.frames_per_block
        _check(fpb == 3, f"the Echo-Forcing memory works on 3-frame blocks, got frames_per_block={fpb}")
        _check(self.anchor_frames % fpb == 0 and self.anchor_frames >= 0,
               f"anchor_frames must be a non-negative multiple of {fpb}, got {self.anchor_frames}")
        _check(self.compressed_frames >= 0 and self.recent_frames >= 1,
               f"compressed_frames must be >= 0 and recent_frames >= 1, got {self.compressed_frames}, "
               f"{self.recent_frames}")
        layout = self.anchor_frames + self.compressed_frames + self.recent_frames + fpb
        _check(layout == self.budget_frames,
               f"anchor_frames + compressed_frames + recent_frames + {fpb} (block) must equal budget_frames: "
               f"{self.anchor_frames} + {self.compressed_frames} + {self.recent_frames} + {fpb} = {layout} "
               f"!= {self.budget_frames}")
        _check(self.anchor_pool_frames % fpb == 0 and fpb <= self.anchor_pool_frames <= self.budget_frames - fpb,
               f"anchor_pool_frames must be a multiple of {fpb} in {fpb}..{self.budget_frames - fpb}, "
               f"got {self.anchor_pool_frames}")
        _check(self.drift_gate_lambda >= 0, f"drift_gate_lambda must be >= 0, got {self.drift_gate_lambda}")
        _check(self.reuse_cap >= 0, f"reuse_cap must be >= 0, got {self.reuse_cap}")
        _check(1 <= self.recall_source_frames <= self.recall_storage_frames <= self.budget_frames,
               f"recall frames need 1 <= source ({self.recall_source_frames}) <= storage "
               f"({self.recall_storage_frames}) <= {self.budget_frames}")
        _check(self.recall_stride >= 1, f"recall_stride must be >= 1, got {self.recall_stride}")
        _check(0.0 <= self.recall_base_frame_weight <= 1.0,
               f"recall_base_frame_weight must lie in [0, 1], got {self.recall_base_frame_weight}")
        _check(1 <= self.pool_size <= 1024, f"pool_size must lie in 1..1024, got {self.pool_size}")
        _check(1 <= self.transition_frames <= fpb,
               f"transition_frames must lie in 1..{fpb}, got {self.transition_frames}")
        missing = [m.value for m in Transition.modes() if m not in modes]
        _check(not missing, f"modes is missing {', '.join(missing)}")
        _check(Transition.AUTO not in modes, "modes cannot configure 'auto': the router picks one of the others")
        for mode, cfg in modes.items():
            _check(isinstance(cfg, ModeConfig), f"modes[{mode.value}] must be a ModeConfig")
            _check(mode is Transition.SMOOTH or cfg.old_recent_frames == 0,
                   f"modes[{mode.value}].old_recent_frames must be 0: only a smooth transition carries the "
                   "previous scene's last frames")
            _check(1 + cfg.old_recent_frames + fpb <= self.budget_frames,
                   f"modes[{mode.value}] carries too many old frames for a {self.budget_frames}-frame cache")

    @property
    def old_memory_frames_max(self) -> int:
        """Most old-memory slots any mode puts in front of a new scene (1 recall frame + recent frames)."""
        return max(1 + m.old_recent_frames for m in self.modes.values())

    @property
    def recall_candidates_in_anchor_pool(self) -> bool:
        """Whether the Scene Recall Frame's candidate frames are always in the anchor pool (the official and the
        paper layouts): the pool keeps them whatever old memory a switch put in front, so they are not stored
        twice."""
        fpb = self.frames_per_block
        written = -(-self.recall_source_frames // fpb) * fpb  # the pool mirrors whole blocks of the scene
        return (self.recall_source_frames <= self.anchor_pool_frames
                and self.old_memory_frames_max + written <= self.budget_frames)

    def mode(self, mode: Transition | str) -> ModeConfig:
        return self.modes[Transition(mode)]

    def with_mode(self, mode: Transition | str, **changes) -> EchoMemoryConfig:
        """A copy with some fields of one mode replaced (``decay=...``, ``rope_jump=...``, ...)."""
        modes = dict(self.modes)
        modes[Transition(mode)] = replace(modes[Transition(mode)], **changes)
        return replace(self, modes=modes)

    def describe(self) -> dict:
        """Plain values of every field (enums as strings), for reports."""
        def plain(value):
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, dict):
                return {plain(k): plain(v) for k, v in value.items()}
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            return value
        return plain(self)
