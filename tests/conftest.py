"""Shared test fixtures: a tiny Wan config with the real head dim (128), random weights, a real ComfyUI host."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ComfyHost:
    """A real ComfyUI checkout to test against (set COMFYUI_DIR, optionally COMFYUI_PYTHON)."""

    comfy_dir: Path
    python: str
    env: dict[str, str]

    def run(self, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``script`` with ComfyUI's Python, ComfyUI's folder on sys.path and the pack as echo_forcing."""
        return subprocess.run([self.python, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=self.comfy_dir)


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory) -> ComfyHost:
    """Skips unless COMFYUI_DIR points at a ComfyUI checkout. COMFYUI_EXTRA_PYTHONPATH is prepended to
    PYTHONPATH for that Python (e.g. a torchvision stand-in on a CPU-only box)."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("real-host test: set COMFYUI_DIR (and COMFYUI_PYTHON) to a ComfyUI checkout to run it")
    comfy_dir = Path(comfy_dir)
    if not (comfy_dir / "comfy").is_dir():
        pytest.fail(f"COMFYUI_DIR={comfy_dir} is not a ComfyUI checkout (no comfy/ folder)")
    link_dir = tmp_path_factory.mktemp("pack")
    (link_dir / "echo_forcing").symlink_to(Path(__file__).resolve().parent.parent, target_is_directory=True)
    paths = [os.environ.get("COMFYUI_EXTRA_PYTHONPATH", ""), str(comfy_dir), str(link_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return ComfyHost(comfy_dir, os.environ.get("COMFYUI_PYTHON", sys.executable), env)
