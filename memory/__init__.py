"""Cache policies behind the DiT's memory seam (models.seam): what each layer keeps, recalls and forgets."""

from .self_forcing import CacheLengthError, SelfForcingCacheConfig, SelfForcingLayerCache

__all__ = ["CacheLengthError", "SelfForcingCacheConfig", "SelfForcingLayerCache"]
