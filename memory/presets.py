"""Cache presets: Echo-Forcing (official code and paper defaults) and the baselines it is compared with, each
a validated configuration that says what it keeps (docs/MEMORY.md, docs/BASELINES.md).

| preset             | keeps (latent frames, 1 block = 3)                                | at a new prompt          |
|--------------------|-------------------------------------------------------------------|--------------------------|
| echo-forcing       | anchors 12 + compressed 3 + recent 3 + block 3, scene memory      | smooth/hard cut/recall   |
| echo-forcing-paper | the same with the paper's values (pool 18, eq. 1, lambda 2, M 5)  | as above, paper offsets  |
| self-forcing       | rolling 21 (18 + block), absolute positions                       | new text only            |
| longlive           | sink 3 + rolling 9 (6 + block), absolute positions                | KV re-cache of 12 frames |
| rolling-sink       | sink 15 (replayed pool of frames 0..17) + recent 3 + block 3      | new text only            |
| deep-forcing       | deep sink 12 + 9 frames of participative compression (5 + 4)      | new text only            |
| infinity-rope      | rolling 21, block-relative positions                              | KV flush at a hard cut   |
| tethercache        | sink 3 + memory 14 (GRAB, TAME) + recent 4 (1 + block), slots     | new text only            |

``make_policy(name, **options)`` builds a preset's policy; options are the fields of its config (and, for
Echo-Forcing, ``encode_text``, ``pool`` and ``storage`` of ``EchoMemory``).

Positions: ``rope="unified"`` (the unified relative RoPE recipe, memory/unified_rope.py) is an option of the
presets whose positions would otherwise leave the trained range or that share its layout: self-forcing,
longlive (absolute by default) and tethercache (slots by default; the same ids with its 21-frame budget).
The others have their own position rules (echo-forcing and infinity-rope are slot-relative already;
rolling-sink replays its sink at positions its walk assigns; deep-forcing stores keys rotated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from .config import (
    AnchorOrder,
    ConfigError,
    DecayStrategy,
    EchoMemoryConfig,
    JumpStrategy,
    MatchMethod,
    MatchScope,
    RopeJumpConfig,
    Transition,
)
from .deep_forcing import DeepForcingCacheConfig
from .echo_memory import EchoMemory
from .infinity_rope import InfinityRopeCacheConfig
from .krea_realtime import KreaCacheConfig
from .kv_storage import AUTO, COMPUTE, FP8_E4M3, KV_STORAGES, KVStorageError, check_kv_storage
from .longlive import LongLiveCacheConfig
from .longlive2 import LongLive2CacheConfig
from .reward_forcing import RewardForcingCacheConfig
from .rolling_forcing import RollingForcingCacheConfig
from .rolling_sink import RollingSinkCacheConfig
from .self_forcing import SelfForcingCacheConfig
from .tethercache import TetherCacheConfig


def echo_paper_config() -> EchoMemoryConfig:
    """The paper's stated defaults where they differ from the official code (docs/MEMORY.md)."""
    base = EchoMemoryConfig(
        anchor_pool_frames=18,  # pool of 18 frames, 12 active (#1)
        anchor_order=AnchorOrder.PAPER,  # eq. (1) (#2)
        drift_gate_lambda=2.0,  # best in Table 8 (#3)
        recall_source_frames=10,  # M = 5 candidates (#10): frames 0, 2, 4, 6, 8 of the scene
        recall_stride=2,
        recall_base_frame_weight=0.0,  # pure softmax fusion (#11)
        exclude_previous_scene=True,  # i* != t - 1 (#17)
    )
    return base.with_mode(Transition.RECALL, rope_jump=RopeJumpConfig(JumpStrategy.PAPER))  # (#18)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    keeps: str
    factory: Callable[..., object]

    def build(self, **options):
        return self.factory(**options)


def _echo(config_factory: Callable[[], EchoMemoryConfig]) -> Callable[..., EchoMemory]:
    def build(encode_text=None, pool=None, storage=None, kv_storage=COMPUTE, **options) -> EchoMemory:
        config = config_factory()
        names = {f.name for f in fields(EchoMemoryConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown Echo-Forcing option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return EchoMemory(replace(config, **options) if options else config, encode_text, pool, storage, kv_storage)
    return build


def _plain(cls, **defaults) -> Callable[..., object]:
    def build(**options):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(names))}")
        return cls(**{**defaults, **options})
    return build


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("echo-forcing", "Echo-Forcing (official code defaults)",
           "anchors 12 + compressed 3 + recent 3 + block 3; scene pool, recall frames, decay",
           _echo(EchoMemoryConfig)),
    Preset("echo-forcing-paper", "Echo-Forcing (paper defaults)",
           "anchors 12 from a pool of 18 (eq. 1) + compressed 3 (lambda 2) + recent 3 + block 3; recall frames "
           "from 5 candidates, pure fusion; recall offsets min(45, 10 x scenes back)",
           _echo(echo_paper_config)),
    Preset("self-forcing", "Self-Forcing (R21)", "rolling 21 frames (18 previous + block), absolute positions",
           _plain(SelfForcingCacheConfig, local_attn_size=21)),
    Preset("longlive", "LongLive (S3 + R9)",
           "sink 3 (frames 0..2) + rolling 9 (6 previous + block); KV re-cache of the last 12 frames at a new prompt",
           _plain(LongLiveCacheConfig)),
    Preset("rolling-sink", "Rolling Sink (S15 + R6)",
           "sink 15 replaying frames 0..17 back and forth + recent 3 + block 3",
           _plain(RollingSinkCacheConfig)),
    Preset("deep-forcing", "Deep Forcing (S12 + C9)",
           "deep sink 12 re-aligned in time + 9 frames of participative compression (5 compressed + 4 recent)",
           _plain(DeepForcingCacheConfig)),
    Preset("infinity-rope", "Infinity-RoPE (R21)",
           "rolling 21 frames with block-relative positions; KV flush to sink + last frame at a hard cut",
           _plain(InfinityRopeCacheConfig)),
    Preset("reward-forcing", "Reward Forcing (S3 EMA + R6)",
           "EMA sink 3 (frames 0..2, blended with every frame that leaves) + rolling 6 (previous block + block), "
           "slot positions",
           _plain(RewardForcingCacheConfig)),
    Preset("sgf", "SGF / SGF+ chunk-wise (S3 + R9, slot positions)",
           "sink 3 (frames 0..2) + rolling 9 (6 previous + block), positions 0..11 in slot order, no re-cache: the "
           "released long-video cache of Self Gradient Forcing and SGF+ (SGF+'s memory expert comes with the model)",
           _plain(LongLiveCacheConfig, local_attn_size=12, sink_size=3, recache_frames=0, rope="unified",
                  rope_frames=12)),
    Preset("sgf-framewise", "SGF / SGF+ frame-wise (S4 + R17, slot positions)",
           "sink 4 (frames 0..3) + rolling 17 (16 previous + the frame), positions 0..20 in slot order; for "
           "1-frame blocks",
           _plain(LongLiveCacheConfig, local_attn_size=21, sink_size=4, recache_frames=0, rope="unified",
                  rope_frames=21)),
    Preset("rolling-forcing", "Rolling Forcing (S3 + R21, joint windows)",
           "a window of as many blocks as steps (5) denoised in one call at staggered noise levels; cache: sink "
           "block 0 + the latest clean blocks (24 frames), absolute positions; official noise order only",
           _plain(RollingForcingCacheConfig)),
    Preset("longlive2", "LongLive 2.0 (S8 + R24, multi-shot)",
           "sink 8 (block 0) + rolling 24 of 8-frame blocks, absolute positions + 8 per new shot (a hard cut or "
           "recall), the first block of the latest shot pinned as a second sink",
           _plain(LongLive2CacheConfig)),
    Preset("krea", "Krea Realtime (re-computed context 3)",
           "no rolling cache: before every block the first frame and the 2 latest are re-encoded clean at positions "
           "0..2, the block denoised at 3..5; no context pass; with the VAE, the first is re-encoded from decoded "
           "pixels",
           _plain(KreaCacheConfig)),
    Preset("tethercache", "TetherCache (S3 + M14 + R4)",
           "sink 3 + memory 14 chosen by GRAB (attention mass + 0.35 x temporal diversity) and edited by TAME "
           "(0.35 blend towards the sink and memory statistics) + recent 4 (1 previous + block), slot positions",
           _plain(TetherCacheConfig)),
)}

RECALL_SCOPES = {"whole video": MatchScope.VIDEO, "shots so far": MatchScope.SO_FAR}
"""The recall-matching scopes as artists name them."""
UNIFIED_ROPE_PRESETS = ("self-forcing", "longlive", "tethercache")
"""Presets with the ``rope="unified"`` option (see the module docstring)."""
ROPE_CHOICES = ("unified",)
CHOICE_OPTIONS: dict[str, tuple[str, ...]] = {
    "recall_matching": tuple(m.value for m in MatchMethod),
    "compression": ("on", "off"),
    "decay": ("difference-aware", "off"),
    "rope": ROPE_CHOICES,
    "recall_scope": tuple(RECALL_SCOPES),
}
"""What each option of a ``PresetChoice`` may be, besides ``PRESET_DEFAULT`` (the node menus list exactly these)."""


def preset_names() -> list[str]:
    return list(PRESETS)


def make_policy(name: str, **options):
    """The cache policy of preset ``name`` with some config fields changed."""
    preset = PRESETS.get(str(name).lower())
    if preset is None:
        raise ConfigError(f"unknown cache preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return preset.build(**options)


PRESET_DEFAULT = "preset default"


@dataclass(frozen=True)
class PresetChoice:
    """A preset plus the few options artists change (what the Echo Memory Config node outputs).

    Options left at ``"preset default"`` (or 0 for ``pool_size``) keep the preset's value. The options
    are Echo-Forcing's; a baseline preset ignores them and ``ignored`` lists the ones that were set.
    """

    preset: str = "echo-forcing"
    recall_matching: str = PRESET_DEFAULT
    """"similar" (text-encoder features) or "idf" (word statistics, no encoder)."""
    compression: str = PRESET_DEFAULT
    """"on" or "off": drift-gated phase compression of the frames leaving the recent window."""
    decay: str = PRESET_DEFAULT
    """"difference-aware" or "off" (old memory keeps full weight until it is evicted)."""
    pool_size: int = 0
    """Most scenes the scene pool keeps (0 = preset default)."""
    rope: str = PRESET_DEFAULT
    """"unified": the unified relative RoPE recipe, for the presets in ``UNIFIED_ROPE_PRESETS``."""
    recall_scope: str = PRESET_DEFAULT
    """"whole video" (official: matching statistics over every prompt) or "shots so far" (a shot's recall
    never depends on later shots, so shots before an edit or an appended shot can be reused)."""
    kv_storage: str = AUTO
    """How the memory keeps keys and values (``memory.kv_storage``): "compute", "fp8_e4m3", or "auto" (the
    run's memory plan picks the first that fits, ``pipeline.memory_need``)."""
    attention_bias: float = 0.0
    """The krea preset's weight of the past context frames in attention (0 = the preset's, 1 = none)."""

    def __post_init__(self):
        if str(self.preset).lower() not in PRESETS:
            raise ConfigError(f"unknown cache preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        object.__setattr__(self, "preset", str(self.preset).lower())
        for name, allowed in CHOICE_OPTIONS.items():
            value = getattr(self, name)
            if value not in (PRESET_DEFAULT, *allowed):
                raise ConfigError(f"{name} must be {PRESET_DEFAULT!r} or one of {', '.join(allowed)}; got {value!r}")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or not 0 <= self.pool_size <= 1024:
            raise ConfigError(f"pool_size must be 0 (preset default) or 1..1024, got {self.pool_size!r}")
        try:
            check_kv_storage(self.kv_storage)
        except KVStorageError as err:
            raise ConfigError(str(err)) from None
        if isinstance(self.attention_bias, bool) or not isinstance(self.attention_bias, (int, float)) \
                or not 0.0 <= self.attention_bias <= 1.0:
            raise ConfigError(f"attention_bias must be 0 (preset default) or a number in (0, 1], got "
                              f"{self.attention_bias!r}")
        if self.kv_storage == FP8_E4M3 and not self.is_echo:
            raise ConfigError(f"kv_storage {FP8_E4M3} is available for the echo-forcing presets; {self.preset} keeps "
                              "its cache in the compute dtype (choose auto or compute)")

    @staticmethod
    def menu(option: str) -> list[str]:
        """The node menu of one option: the preset default, then its values."""
        return [PRESET_DEFAULT, *CHOICE_OPTIONS[option]]

    @property
    def is_echo(self) -> bool:
        return self.preset.startswith("echo-forcing")

    def options(self) -> dict:
        """The options that were set (not left at the preset default)."""
        out = {n: getattr(self, n) for n in CHOICE_OPTIONS
               if getattr(self, n) != PRESET_DEFAULT}
        if self.pool_size:
            out["pool_size"] = self.pool_size
        if self.attention_bias:
            out["attention_bias"] = self.attention_bias
        return out

    @property
    def ignored(self) -> list[str]:
        """The options that were set but do not apply to this preset."""
        applies = {"rope"} if self.preset in UNIFIED_ROPE_PRESETS else {"attention_bias"} if self.preset == "krea" \
            else set()
        if self.is_echo:
            applies = {"recall_matching", "compression", "decay", "pool_size", "recall_scope"}
        return sorted(set(self.options()) - applies)

    def kv_options(self) -> tuple[str, ...]:
        """The KV storages this choice allows, in the order ``auto`` tries them (the reference first)."""
        if self.kv_storage != AUTO:
            return (self.kv_storage,)
        return KV_STORAGES if self.is_echo else (COMPUTE,)

    def build(self, encode_text=None, pool=None, storage=None):
        """The cache policy (Echo-Forcing also gets the text encoder, the scene pool, the storage device and
        the first KV storage this choice allows; the run plan swaps in the one that fits)."""
        if not self.is_echo:
            unified = self.rope != PRESET_DEFAULT and self.preset in UNIFIED_ROPE_PRESETS
            options = {"rope": self.rope} if unified else {}
            if self.attention_bias and self.preset == "krea":
                options["attention_bias"] = float(self.attention_bias)
            return make_policy(self.preset, **options)
        policy = make_policy(self.preset, encode_text=encode_text, pool=pool, storage=storage,
                             kv_storage=self.kv_options()[0])
        cfg = policy.config
        changes = {}
        if self.recall_matching != PRESET_DEFAULT:
            changes["match_method"] = self.recall_matching
        if self.compression != PRESET_DEFAULT:
            changes["compression"] = self.compression == "on"
        if self.pool_size:
            changes["pool_size"] = self.pool_size
        if self.recall_scope != PRESET_DEFAULT:
            changes["match_scope"] = RECALL_SCOPES[self.recall_scope]
        cfg = replace(cfg, **changes) if changes else cfg
        if self.decay == "off":
            for mode in Transition.modes():
                cfg = cfg.with_mode(mode, decay=replace(cfg.mode(mode).decay, strategy=DecayStrategy.FIXED,
                                                        fixed_rate=1.0))
        elif self.decay == "difference-aware":
            for mode in Transition.modes():
                cfg = cfg.with_mode(mode, decay=replace(cfg.mode(mode).decay, strategy=DecayStrategy.DIFF))
        return replace(policy, config=cfg)
