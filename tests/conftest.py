"""Shared test fixtures: a tiny Wan config with the real head dim (128), random weights, a real ComfyUI host."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from echo_forcing.cli import tiny_models as tiny_command
from echo_forcing.models import WanConfig, WanDiT, random_wan_state_dict


def _register_helpers() -> None:
    """Make the tests' helper modules importable as ``echo_forcing_tests.<name>`` (pytest runs with
    --import-mode=importlib, so the tests folder is not on sys.path and is not a package)."""
    import importlib.util
    import types

    package = sys.modules.setdefault("echo_forcing_tests", types.ModuleType("echo_forcing_tests"))
    for name in ("fake_comfy", "parity_fixtures"):
        full = f"echo_forcing_tests.{name}"
        if full not in sys.modules:
            spec = importlib.util.spec_from_file_location(full, Path(__file__).with_name(f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            spec.loader.exec_module(module)
            setattr(package, name, module)


_register_helpers()


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


class LoggedCall(NamedTuple):
    call: object  # models.BlockCall
    k_time: list[int] | None
    q_time: list[int]
    frames: list[int] | None
    """The video frame in each window slot (the cache's per-slot frame array), when the cache keeps one."""


class RecordingPolicy:
    """Wraps a cache policy; logs every call of layer 0 as a ``LoggedCall`` in ``log``."""

    def __init__(self, policy):
        self.policy, self.log = policy, []

    def check_length(self, num_frames, frames_per_block):
        self.policy.check_length(num_frames, frames_per_block)

    def create(self, num_layers, scenes=None):
        state = self.policy.create(num_layers, scenes)
        layer = state.layers[0]
        inner = layer.update

        def update(q, k, v, call):
            window = inner(q, k, v, call)
            k_time = None if window.k_time is None else window.k_time.tolist()
            slots = getattr(layer, "frame_src", getattr(layer, "frame_pos", None))
            frames = None if slots is None or k_time is None else slots[:len(k_time)].tolist()
            self.log.append(LoggedCall(call, k_time, window.q_time.tolist(), frames))
            return window

        layer.update = update
        return state


@pytest.fixture()
def recording():
    """``recording(policy)``: the policy wrapped so that every call of layer 0 is logged (``.log``)."""
    return RecordingPolicy


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


@dataclass(frozen=True)
class ComfyServer:
    """A running ComfyUI with the pack loaded from this checkout and the tiny model files."""

    url: str
    output_dir: Path
    models_dir: Path
    log_path: Path
    screenshot_dir: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_MODELS = {key: Path(path).name for key, path in (
    ("dit", tiny_command.DIT_FILE), ("dit_pt", tiny_command.SELF_FORCING_FILE), ("lora", tiny_command.LORA_FILE),
    ("clip", tiny_command.CLIP_FILE), ("vae", tiny_command.VAE_FILE))}
"""The files ``python -m echo_forcing tiny-models`` writes (the CLIP-L one loads with CLIPLoader type sd3)."""


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, str]:
    return dict(TINY_MODELS)


def _input_files(folder: Path) -> None:
    """The files the image and clip workflows load from ComfyUI's input folder: ``example.png`` (every install has
    one) and ``clip.mp4`` (17 frames: 5 latent frames)."""
    from PIL import Image

    from echo_forcing.cli.video_file import write_h264

    folder.mkdir()
    gradient = torch.linspace(0, 255, 48).to(torch.uint8)
    grey = torch.full((40, 48), 90, dtype=torch.uint8)
    picture = torch.stack([gradient.expand(40, 48), gradient.flip(0).expand(40, 48), grey], -1)
    Image.fromarray(picture.numpy()).save(folder / "example.png")
    write_h264(torch.stack([picture.roll(4 * i, dims=1) for i in range(17)]), folder / "clip.mp4")


@pytest.fixture(scope="session")
def comfy_server(comfy_host, tmp_path_factory) -> ComfyServer:
    """Start a real ComfyUI on 127.0.0.1 (a free port) with the pack loaded from this checkout through an
    extra_model_paths entry, the tiny model files from the pack's own command, and outputs in a temp folder.
    Screenshots go to ECHO_SCREENSHOT_DIR if set (else a temp folder). COMFYUI_FRONTEND_ROOT names another
    frontend's static folder (e.g. the newest comfyui-frontend-package's) to serve instead of the pinned one."""
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("comfy_server")
    models = root / "models"
    made = subprocess.run([sys.executable, "-m", "echo_forcing", "tiny-models", str(models)], capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    _input_files(root / "input")
    packs = root / "custom_nodes"
    packs.mkdir()
    (root / "user").mkdir()
    (packs / "EchoForcingUnderTest").symlink_to(Path(__file__).resolve().parent.parent, target_is_directory=True)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text(tiny_command.extra_model_paths_snippet(models) + f"    custom_nodes: {packs}\n", encoding="utf-8")
    port = _free_port()
    log_path = root / "comfyui.log"
    screenshots = Path(os.environ.get("ECHO_SCREENSHOT_DIR") or root / "screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    env = dict(comfy_host.env)
    env["PYTHONPATH"] = os.environ.get("COMFYUI_EXTRA_PYTHONPATH", "")
    cmd = [comfy_host.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--extra-model-paths-config", str(yaml), "--output-directory",
           str(root / "output"), "--input-directory", str(root / "input"), "--user-directory", str(root / "user"),
           "--database-url", "sqlite:///:memory:"]
    if os.environ.get("COMFYUI_FRONTEND_ROOT"):  # another frontend than the one the ComfyUI pins (its static folder)
        cmd += ["--front-end-root", os.environ["COMFYUI_FRONTEND_ROOT"]]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(cmd, cwd=comfy_host.comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = ComfyServer(url, root / "output", models, log_path, screenshots, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode}:\n{server.log()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/system_stats", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within 120 s:\n{server.log()[-4000:]}")
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
