"""Load Causal DiT: a research checkpoint (Self-Forcing / CausVid ``.pt``, LongLive base + LoRA, repackaged
or fp8 safetensors) converted to plain Wan2.1 names and handed to ComfyUI's own diffusion-model loader, so
the result is a core MODEL: ComfyUI's LoRA nodes, weight dtypes and low-VRAM loading all apply."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.sd
import torch
from comfy_api.latest import io

from ..models import CheckpointError, load_wan_checkpoint, model_cards, registry
from . import host
from .sockets import CATEGORY
from .validation import CombosChecked, shown

COMFY_TEXT_DIM = 4096
"""ComfyUI builds every Wan2.1 DiT for umT5-XXL's 4096-wide text (its model detection fixes this)."""

WEIGHT_DTYPES = {
    "default": {},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}
"""The same choices (and meaning) as core Load Diffusion Model's ``weight_dtype``."""

WEIGHTS = ["auto", "ema", "generator"]
KNOWN_DITS = registry.files_in("diffusion_models", kind="dit")
"""The registry's checkpoints (``python -m echo_forcing models list``), named in the tooltip and the errors."""
KNOWN_LORAS = registry.files_in("loras", kind="lora")
AUTO_CARD = "auto"
CARD_OPTION = "echo_forcing_model_card"
"""Where the MODEL carries its card (``model_options``, which ModelPatcher clones copy, so core LoRA nodes keep it):
``(card name or None, how it was found)``; the sampler reads it (``sampler.model_card``)."""
MEMORY_EXPERT_OPTION = "echo_forcing_memory_expert"
"""Where the MODEL of an SGF+ file carries its memory expert (``models.memory_expert``): a second core MODEL of
the same shape, which the sampler runs for the clean context passes (core LoRA nodes patch the first only)."""


def _models_dir() -> str:
    """ComfyUI's models folder for a download command (a placeholder when unknown or too long to show)."""
    folder = getattr(host.folder_paths, "models_dir", None)
    return folder if isinstance(folder, str) and 0 < len(folder) <= 100 else "<ComfyUI>/models"


def known_checkpoints() -> str:
    """The registry's checkpoints and the command that downloads one, for the tooltip and the errors."""
    names = ", ".join(m.name for m in KNOWN_DITS)
    return (f"Known checkpoints, by NAME: {names} (python -m echo_forcing models list says which file each "
            f"writes); get one with: {registry.download_command('NAME', _models_dir())}")


def missing_checkpoint(ckpt_name: str) -> str:
    """What to do about a checkpoint that is not in the model folders."""
    known = registry.by_file("diffusion_models", ckpt_name)
    if known is not None:
        return (f"Load Causal DiT: ckpt_name {shown(ckpt_name)} is not in models/diffusion_models yet; download it "
                f"with: {registry.download_command(known.name, _models_dir())}, then press R to refresh")
    return (f"Load Causal DiT: ckpt_name {shown(ckpt_name)} was not found in models/causal_dit or "
            "models/diffusion_models; put the checkpoint there and press R to refresh, or pick one from the list. "
            + known_checkpoints())


class LoadCausalDiT(CombosChecked, io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingLoadCausalDiT",
            display_name="Load Causal DiT",
            category=CATEGORY,
            description=(
                "Loads a causal Wan text-to-video student (Self-Forcing, CausVid, LongLive, Causal Forcing, Reward "
                "Forcing, Rolling Forcing, SGF/SGF+ on Wan2.1; LongLive 2.0 on Wan2.2-TI2V-5B) from "
                "models/diffusion_models or models/causal_dit. Research .pt files, LongLive's base + LoRA pair and "
                "repackaged or fp8 safetensors are converted to ComfyUI's Wan model, so the MODEL it returns works "
                "with core LoRA nodes and low-VRAM loading. Plain Wan2.1 files also load with core Load Diffusion "
                "Model."),
            inputs=[
                io.Combo.Input("ckpt_name", options=host.dit_files(),
                               tooltip="The causal Wan2.1-T2V-1.3B checkpoint (a research .pt or a safetensors "
                                       "file). Put files in models/diffusion_models or models/causal_dit, then "
                                       "press R to refresh the list. " + known_checkpoints() + "."),
                io.Combo.Input("weights", options=WEIGHTS, default="auto",
                               tooltip="Which weights of a research checkpoint to use. auto: the EMA generator if "
                                       "the file has one (the published default), the plain generator when a "
                                       "LongLive LoRA is given. Ignored for plain model files."),
                io.Combo.Input("lora_name", options=host.lora_files(), default=host.NO_LORA,
                               tooltip="LongLive's LoRA file (models/loras), merged into the base once at load time; "
                                       + "; ".join(f"{registry.download_command(m.name, _models_dir())} writes {m.file}"
                                                   for m in KNOWN_LORAS)
                                       + ". For ordinary LoRAs you can also use core LoRA nodes after this one."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="How ComfyUI stores the weights: default picks the best for your GPU; fp8 "
                                       "halves the memory (slightly lower quality), as in core Load Diffusion "
                                       "Model."),
                io.Combo.Input("model_card", options=[AUTO_CARD, *model_cards.names()], default=AUTO_CARD,
                               optional=True,
                               tooltip="How this student was trained, which the sampler follows: frames per block "
                                       "and denoising steps (Causal Forcing frame-wise: 1-frame blocks; Causal "
                                       "Forcing++: 4 steps for the first frame, then 2 or 1). auto: recognised by "
                                       "the file's registry name or size, else the Self-Forcing settings of its "
                                       "architecture (the report says which). The 1.3B students share one layout, "
                                       "so a renamed file needs its card chosen here."),
            ],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="A core MODEL; connect it to the Autoregressive Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str | None = None):
        # only the file name: weights, lora_name and weight_dtype are combos ComfyUI checks itself, each on its
        # own input; a missing ckpt_name is ComfyUI's "Required input is missing", a linked one is checked on run
        if ckpt_name is None:
            return True
        if not isinstance(ckpt_name, str) or not ckpt_name.strip():
            return f"Load Causal DiT: ckpt_name {shown(ckpt_name)} is not a file name; pick a checkpoint from the list"
        try:
            host.dit_path(ckpt_name)
        except (FileNotFoundError, ValueError, TypeError, OSError):
            return missing_checkpoint(ckpt_name)
        return True

    @classmethod
    def execute(cls, ckpt_name: str, weights: str, lora_name: str, weight_dtype: str,
                model_card: str = AUTO_CARD) -> io.NodeOutput:
        # float32 when ComfyUI runs on the CPU; bfloat16 (the published precision) otherwise
        dtype = torch.float32 if mm.get_torch_device().type == "cpu" else torch.bfloat16
        ckpt = load_wan_checkpoint(host.dit_path(ckpt_name), lora=host.lora_path(lora_name), weights=weights,
                                   dtype=dtype)
        if ckpt.config.text_dim != COMFY_TEXT_DIM:
            raise CheckpointError(f"{ckpt_name} takes {ckpt.config.text_dim}-wide text, but ComfyUI's Wan model "
                                  f"is built for umT5-XXL ({COMFY_TEXT_DIM}); this is not a Wan2.1 T2V model")
        card = card_of(ckpt_name, model_card, ckpt.config, ckpt.memory_expert is not None)
        patcher = comfy.sd.load_diffusion_model_state_dict(ckpt.state_dict, model_options=dict(
            WEIGHT_DTYPES[weight_dtype]))
        if patcher is None:
            raise CheckpointError(f"ComfyUI did not recognise {ckpt_name} as a Wan2.1 model after conversion")
        patcher.model_options[CARD_OPTION] = card
        if ckpt.memory_expert is not None:
            expert = comfy.sd.load_diffusion_model_state_dict(ckpt.memory_expert, model_options=dict(
                WEIGHT_DTYPES[weight_dtype]))
            if expert is None:
                raise CheckpointError(f"ComfyUI did not recognise the memory expert of {ckpt_name} as a Wan2.1 model")
            patcher.model_options[MEMORY_EXPERT_OPTION] = expert
        return io.NodeOutput(patcher)


def card_of(ckpt_name: str, model_card: str, config, memory_expert: bool = False) -> tuple[str | None, str]:
    """The card the MODEL carries: the one chosen (checked against the weights) or, with auto, the file's."""
    shape = (config.dim, config.num_layers, config.in_dim, memory_expert)
    if model_card == AUTO_CARD:
        card, how = model_cards.card_for_file(host.dit_path(ckpt_name), *shape)
        return (None if card is None else card.name), how
    card = model_cards.by_name(model_card)
    card.check_weights(*shape)
    return card.name, f"chosen on Load Causal DiT for {ckpt_name}"
