"""Shared test fixtures: a tiny Wan config with the real head dim (128) and random weights."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.models import WanConfig, WanDiT, random_wan_state_dict


@pytest.fixture(scope="session")
def tiny_config() -> WanConfig:
    """Two heads of 128 (the real head dim and RoPE split), two layers, small FFN and text width."""
    return WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


@pytest.fixture(scope="session")
def tiny_state_dict(tiny_config) -> dict[str, torch.Tensor]:
    return random_wan_state_dict(tiny_config, seed=7)


@pytest.fixture()
def tiny_dit(tiny_state_dict) -> WanDiT:
    return WanDiT.from_state_dict(tiny_state_dict)
