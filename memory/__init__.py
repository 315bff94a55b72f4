"""Cache policies behind the DiT's memory seam (models.seam): what each layer keeps, recalls and forgets.

Echo-Forcing's scene memory (docs/MEMORY.md) and the baselines it is compared with (docs/BASELINES.md),
selectable by name through ``memory.presets``.
"""

from ..lazy_package import install

# name -> the module of this package that defines it (loaded on first use: ``memory.config``, which holds the
# transition vocabulary the torch-free scene-script parser uses, must import without torch)
_EXPORTS = {
    **dict.fromkeys(("ConfigError", "EchoMemoryConfig", "SceneMemoryError", "Transition"), "config"),
    "EchoMemory": "echo_memory",
    "CacheLengthError": "frame_cache",
    **dict.fromkeys(("MemoryFootprint", "memory_footprint"), "footprint"),
    **dict.fromkeys(("PRESET_DEFAULT", "PRESETS", "PresetChoice", "make_policy", "preset_names"), "presets"),
    **dict.fromkeys(("PoolEntry", "PoolSignature", "ScenePool", "ScenePoolError", "pool_file", "pool_names"),
                    "scene_pool"),
    **dict.fromkeys(("SelfForcingCacheConfig", "SelfForcingLayerCache"), "self_forcing"),
    **dict.fromkeys(("MemoryState", "SceneInfo"), "state"),
    "CachePolicy": "policy",
}

install(__name__, _EXPORTS)

__all__ = [
    "PRESETS",
    "PRESET_DEFAULT",
    "CacheLengthError",
    "CachePolicy",
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
    "Transition",
    "make_policy",
    "memory_footprint",
    "pool_file",
    "pool_names",
    "preset_names",
]
