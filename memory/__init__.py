"""Cache policies behind the DiT's memory seam (models.seam): what each layer keeps, recalls and forgets.

Echo-Forcing's scene memory (docs/MEMORY.md) and the baselines it is compared with (docs/BASELINES.md),
selectable by name through ``memory.presets``.
"""

from .config import ConfigError, EchoMemoryConfig, TransitionMode
from .echo_memory import EchoMemory, SceneMemoryError
from .footprint import MemoryFootprint, memory_footprint
from .presets import PRESET_DEFAULT, PRESETS, PresetChoice, make_policy, preset_names
from .scene_pool import PoolEntry, PoolSignature, ScenePool, ScenePoolError, pool_file, pool_names
from .self_forcing import CacheLengthError, SelfForcingCacheConfig, SelfForcingLayerCache
from .state import MemoryState, SceneInfo

__all__ = [
    "PRESETS",
    "PRESET_DEFAULT",
    "CacheLengthError",
    "ConfigError",
    "EchoMemory",
    "EchoMemoryConfig",
    "MemoryFootprint",
    "MemoryState",
    "PoolEntry",
    "PoolSignature",
    "PresetChoice",
    "SceneInfo",
    "SceneMemoryError",
    "ScenePool",
    "ScenePoolError",
    "SelfForcingCacheConfig",
    "SelfForcingLayerCache",
    "TransitionMode",
    "make_policy",
    "memory_footprint",
    "pool_file",
    "pool_names",
    "preset_names",
]
