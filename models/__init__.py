"""The causal Wan2.1 DiT in plain torch: config, module, RoPE, schedule, block forward, checkpoint loading.

Nothing here knows about cache policies; each layer talks to its memory through ``models.seam``.
"""

from .block_forward import CausalWan, TextContext
from .checkpoints import CheckpointError, load_wan_checkpoint, load_wan_experts, load_wan_model
from .config import WAN21_T2V_1_3B, WAN21_T2V_14B, WanConfig, WanConfigError
from .schedule import DEFAULT_SHIFT, DEFAULT_STEPS, FlowMatchSchedule, evenly_spaced_steps
from .seam import AttentionWindow, BlockCall, LayerMemory
from .wan import WanDiT, random_wan_state_dict

__all__ = [
    "DEFAULT_SHIFT",
    "DEFAULT_STEPS",
    "WAN21_T2V_1_3B",
    "WAN21_T2V_14B",
    "AttentionWindow",
    "BlockCall",
    "CausalWan",
    "CheckpointError",
    "FlowMatchSchedule",
    "LayerMemory",
    "TextContext",
    "WanConfig",
    "WanConfigError",
    "WanDiT",
    "evenly_spaced_steps",
    "load_wan_checkpoint",
    "load_wan_experts",
    "load_wan_model",
    "random_wan_state_dict",
]
