"""Latent layouts at the pipeline boundary.

Inside the pipeline latents are *normalised* Wan2.1 VAE latents ``[B, T, 16, H/8, W/8]``
(``z = (mu - mean) / std`` per channel). ComfyUI's LATENT holds *raw* VAE-space latents
``[B, 16, T, H/8, W/8]`` (its Wan21 latent format's ``process_out`` is ``z * std + mean``), so core
VAEDecode works on what the sampler returns.
"""

from __future__ import annotations

import os

import torch

from ..memory.files import read_tensor_file

WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
LATENT_CHANNELS = 16
VAE_STRIDE = (4, 8, 8)
"""Wan2.1 VAE compression (time, height, width): T latents decode to 4T - 3 video frames."""


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=like.device)
    std = torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=like.device)
    return mean, std


def to_comfy_latent(latents: torch.Tensor) -> torch.Tensor:
    """Normalised ``[B, T, 16, h, w]`` -> ComfyUI raw VAE-space ``[B, 16, T, h, w]`` (float32)."""
    if latents.dim() != 5 or latents.shape[2] != LATENT_CHANNELS:
        raise ValueError(f"expected normalised latents [B, T, 16, h, w], got {list(latents.shape)}")
    mean, std = _stats(latents)
    raw = latents.float() * std.view(1, 1, -1, 1, 1) + mean.view(1, 1, -1, 1, 1)
    return raw.permute(0, 2, 1, 3, 4).contiguous()


def from_comfy_latent(samples: torch.Tensor) -> torch.Tensor:
    """ComfyUI raw VAE-space ``[B, 16, T, h, w]`` -> normalised ``[B, T, 16, h, w]`` (float32)."""
    if samples.dim() != 5 or samples.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"expected a Wan video LATENT [B, 16, T, h, w], got {list(samples.shape)}")
    mean, std = _stats(samples)
    z = (samples.float() - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return z.permute(0, 2, 1, 3, 4).contiguous()


def video_frames(latent_frames: int) -> int:
    """Video frames the Wan VAE decodes from ``latent_frames`` latents (first latent -> 1 frame, others -> 4)."""
    return 0 if latent_frames <= 0 else VAE_STRIDE[0] * (latent_frames - 1) + 1


LATENT_KEYS = ("samples", "latent_tensor")
"""Where a latent file keeps its raw latents: the pack's ``latents.safetensors`` (render, demo) and core
SaveLatent's ``.latent`` file."""


def read_latent_file(path: str | os.PathLike) -> torch.Tensor:
    """Raw Wan2.1 latents ``[B, 16, T, h, w]`` from a latent file (safetensors; nothing is unpickled): the pack's
    own ``latents.safetensors`` or a core SaveLatent ``.latent`` file. ``ValueError`` says what is wrong."""
    _, tensors = read_tensor_file(path, "latent", ValueError)
    name = os.path.basename(os.fspath(path))
    found = [tensors[k] for k in LATENT_KEYS if k in tensors]
    if not found:
        raise ValueError(f"{name} holds no latents (no {' or '.join(repr(k) for k in LATENT_KEYS)} tensor); give a "
                         "render's latents.safetensors or a SaveLatent .latent file")
    samples = found[0]
    if samples.dim() != 5 or samples.shape[1] != LATENT_CHANNELS or not samples.is_floating_point():
        raise ValueError(f"{name} holds latents {list(samples.shape)} {samples.dtype}; expected Wan2.1 video latents "
                         f"[batch, {LATENT_CHANNELS}, frames, height/8, width/8]")
    return samples.float()
