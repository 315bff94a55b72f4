"""SGF+'s memory expert: a second complete set of Wan weights that writes the KV cache, while the base weights
(the "generation expert") denoise.

SGF+ (Self Gradient Forcing Plus, "Decoupling Gradient Flows for AR Video Generation"; code
Zihan-Su/Self_Gradient_Forcing_Plus) trains two roles apart: the generation expert predicts the clean block, the
memory expert encodes finished frames into the cache the later blocks attend to. At inference the choice is per
call and covers the whole model: every denoising call runs the generation expert, every clean context pass (the
call at t = 0 that writes a finished block, or given start frames, into the cache) runs the memory expert, from
the patch embedding through every layer's projections, norms and modulation to the head, with its own text
keys and values. Nothing is blended. The context pass's output is discarded, so the memory expert only ever
shapes the cache.

Checkpoint layout. Next to the plain Wan names, every parameter has a twin: a module's ``weight`` / ``bias``
become ``memory_weight`` / ``memory_bias`` (``blocks.N.self_attn.q.memory_weight``, ``blocks.N.norm3.memory_bias``,
``blocks.N.cross_attn.norm_k.memory_weight``), ``blocks.N.modulation`` becomes ``blocks.N.memory_modulation``,
and the top-level modules get a ``memory_`` prefix (``memory_patch_embedding.weight``,
``memory_text_embedding.0.bias``, ``memory_time_projection.1.weight``, ``memory_head.head.weight``,
``memory_head.modulation``). :func:`split_memory_expert` turns those into a second plain Wan state dict of the
same shapes, so both experts load, validate, cast and run exactly as any Wan DiT does (in ComfyUI as two core
models).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

MEMORY_PREFIX = "memory_"
_SUFFIXES = {".memory_weight": ".weight", ".memory_bias": ".bias", ".memory_modulation": ".modulation"}


class MemoryExpertError(ValueError):
    """A memory expert that does not mirror the base weights (missing, extra or mis-shaped twins)."""


def base_name(key: str) -> str | None:
    """The plain Wan name a memory-expert tensor stands in for, or None for a base tensor."""
    if key.startswith(MEMORY_PREFIX):
        return key[len(MEMORY_PREFIX):]
    for suffix, plain in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)] + plain
    return None


_TOP_LEVEL = ("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "head.")


def memory_name(key: str) -> str:
    """The checkpoint name of the memory expert's twin of the plain Wan tensor ``key`` (inverse of
    :func:`base_name`)."""
    if key.startswith(_TOP_LEVEL):
        return MEMORY_PREFIX + key
    for suffix, plain in _SUFFIXES.items():
        if key.endswith(plain):
            return key[: -len(plain)] + suffix
    raise ValueError(f"{key!r} is not a Wan parameter name")


def has_memory_expert(keys) -> bool:
    """Whether a state dict's names include SGF+ memory-expert twins."""
    return any(base_name(k) is not None for k in keys)


def split_memory_expert(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                  dict[str, torch.Tensor] | None]:
    """``(base, expert)``: the generation expert's tensors and the memory expert's under the same plain Wan names
    (None when the file has no memory expert). The expert must mirror the base exactly, name for name and shape
    for shape; anything else is refused with what differs."""
    base = {k: v for k, v in sd.items() if base_name(k) is None}
    twins = {k: v for k, v in sd.items() if base_name(k) is not None}
    if not twins:
        return base, None
    expert: dict[str, torch.Tensor] = {}
    for key, value in twins.items():
        expert[base_name(key)] = value
    missing = sorted(set(base) - set(expert))
    extra = sorted(set(expert) - set(base))
    shapes = [f"{k}: {list(expert[k].shape)} vs {list(base[k].shape)}" for k in sorted(set(base) & set(expert))
              if expert[k].shape != base[k].shape]
    problems = [f"{len(items)} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                for label, items in (("base tensors without a memory twin", missing),
                                     ("memory tensors without a base tensor", extra),
                                     ("shape mismatches (memory vs base)", shapes)) if items]
    if problems:
        raise MemoryExpertError("the checkpoint's SGF+ memory expert does not mirror its weights: "
                                + "; ".join(problems) + ". The file is damaged or a partial merge; nothing was "
                                "loaded")
    return base, expert
