"""The README's demo command: tiny built-in model end to end, files written whole."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from echo_forcing.cli.demo import preview_frames, run_demo


def test_demo_writes_video_latents_and_report(tmp_path):
    lines = []
    report = run_demo(tmp_path, "a red kite over the dunes", frames=6, width=64, height=48, seed=11, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.mp4", "latents.safetensors", "report.json"]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["settings"]["video_frames"] == 21 and len(report["blocks"]) == 2
    assert report["cache"]["bytes"] > 0 and report["generation_seconds"] > 0
    assert [line.split(":")[0] for line in lines[:2]] == ["block 1/2", "block 2/2"]

    latents = load_file(tmp_path / "latents.safetensors")["samples"]
    assert latents.shape == (1, 16, 6, 6, 8)  # raw ComfyUI LATENT layout [B, 16, T, H/8, W/8]

    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 21
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 64 and capture.get(cv2.CAP_PROP_FRAME_HEIGHT) == 48

    again = run_demo(tmp_path / "again", "a red kite over the dunes", frames=6, width=64, height=48, seed=11,
                     log=lambda _: None)
    assert torch.equal(load_file(tmp_path / "again" / "latents.safetensors")["samples"], latents)
    assert again["latent_stats"] == report["latent_stats"]


def test_preview_expands_time_like_the_wan_vae():
    raw = torch.randn(16, 4, 2, 3)
    video = preview_frames(raw)
    assert video.shape == (13, 16, 24, 3) and video.dtype == torch.uint8
    assert torch.equal(video[1], video[4]) and not torch.equal(video[0], video[1])


def test_demo_refuses_bad_sizes_with_exit_code_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "echo_forcing", "demo", "--out", str(tmp_path), "--width", "100"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "width must be a positive multiple of 16" in out.stderr
    assert not any(tmp_path.iterdir())
