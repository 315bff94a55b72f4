"""The rollout: blocks, RNG, events, and the latent layouts at the ComfyUI boundary. No ComfyUI imports."""

from .latents import from_comfy_latent, to_comfy_latent, video_frames
from .rollout import BlockEvent, RolloutInputError, RolloutResult, RolloutSettings, rollout

__all__ = ["BlockEvent", "RolloutInputError", "RolloutResult", "RolloutSettings", "from_comfy_latent",
           "rollout", "to_comfy_latent", "video_frames"]
