"""What the parity tests against official code share: the Self-Forcing fixture's tiny model and inputs (every
official run was made with them), the 16-bit golden files and the parity bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from echo_forcing.models import CausalWan, WanDiT

FIXTURES = Path(__file__).parent / "fixtures"
TINY_MODEL = FIXTURES / "self_forcing"
"""``tiny_wan.safetensors`` and ``inputs.safetensors``: the weights, text embedding and seed of every official run."""
TOLERANCE = 1e-5
"""Allowed |ours - reference| on top of a golden file's 16-bit storage error (the issues' budget is 1e-3)."""


def load_golden(path: Path) -> tuple[torch.Tensor, float, np.lib.npyio.NpzFile]:
    """A golden file's latents (float64, dequantised), its storage scale and the whole file."""
    data = np.load(path)
    scale = float(data["scale"])
    return torch.from_numpy(data["latents_q"].astype(np.float64) * scale), scale, data


def tiny_reference() -> tuple[CausalWan, object, int]:
    """The tiny model (float32, CPU), the encoded text and the noise seed of the official runs."""
    weights = {k: v.float() for k, v in load_file(TINY_MODEL / "tiny_wan.safetensors").items()}
    model = CausalWan(WanDiT.from_state_dict(weights), dtype=torch.float32, device="cpu")
    with safe_open(TINY_MODEL / "inputs.safetensors", "pt") as f:
        seed = int(f.metadata()["seed"])
        text = model.encode_text(f.get_tensor("text_embeds"))
    return model, text, seed


def assert_parity(ours: torch.Tensor, golden: torch.Tensor, scale: float) -> float:
    """max |ours - golden| within half a storage step plus :data:`TOLERANCE`; returns it."""
    diff = (ours.double() - golden).abs().max().item()
    bound = scale / 2 + TOLERANCE
    assert diff <= bound, f"max |delta| {diff:.3e} exceeds {bound:.3e}"
    return diff
