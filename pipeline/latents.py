"""Latent layouts at the pipeline boundary.

Inside the pipeline latents are *normalised* VAE latents ``[B, T, C, H/s, W/s]`` (``z = (mu - mean) / std`` per
channel). ComfyUI's LATENT holds *raw* VAE-space latents ``[B, C, T, H/s, W/s]`` (its latent format's
``process_out`` is ``z * std + mean``), so core VAEDecode works on what the sampler returns. Two layouts, told
apart by their channels: the Wan2.1 VAE's (16 channels, 8x spatial stride; every 1.3B and 14B student) and the
Wan2.2 VAE's (48 channels, 16x; Wan2.2-TI2V-5B and LongLive 2.0). Both compress time by 4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
"""The Wan2.2 VAE's per-channel statistics (as the official Wan2.2 / LongLive 2.0 code normalises with)."""
LATENT_CHANNELS = 16
VAE_STRIDE = (4, 8, 8)
"""Wan2.1 VAE compression (time, height, width): T latents decode to 4T - 3 video frames."""


@dataclass(frozen=True)
class LatentFormat:
    """One VAE's latent layout: channels, per-channel statistics, compression (time, height, width)."""

    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stride: tuple[int, int, int]

    @property
    def spatial_stride(self) -> int:
        return self.stride[1]

    def stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.mean, dtype=torch.float32, device=like.device),
                torch.tensor(self.std, dtype=torch.float32, device=like.device))


WAN21 = LatentFormat("Wan2.1", LATENT_CHANNELS, WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAE_STRIDE)
WAN22 = LatentFormat("Wan2.2", 48, WAN22_LATENT_MEAN, WAN22_LATENT_STD, (4, 16, 16))
LATENT_FORMATS = {f.channels: f for f in (WAN21, WAN22)}


def latent_format(channels: int) -> LatentFormat:
    """The layout of ``channels``-channel latents (16: Wan2.1 VAE, 48: Wan2.2 VAE)."""
    try:
        return LATENT_FORMATS[int(channels)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{channels}-channel latents are neither the Wan2.1 VAE's (16) nor the Wan2.2 VAE's (48)") \
            from None


def to_comfy_latent(latents: torch.Tensor) -> torch.Tensor:
    """Normalised ``[B, T, C, h, w]`` -> ComfyUI raw VAE-space ``[B, C, T, h, w]`` (float32), C = 16 or 48."""
    if latents.dim() != 5 or latents.shape[2] not in LATENT_FORMATS:
        raise ValueError(f"expected normalised latents [B, T, 16 or 48, h, w], got {list(latents.shape)}")
    mean, std = latent_format(latents.shape[2]).stats(latents)
    raw = latents.float() * std.view(1, 1, -1, 1, 1) + mean.view(1, 1, -1, 1, 1)
    return raw.permute(0, 2, 1, 3, 4).contiguous()


def from_comfy_latent(samples: torch.Tensor) -> torch.Tensor:
    """ComfyUI raw VAE-space ``[B, C, T, h, w]`` -> normalised ``[B, T, C, h, w]`` (float32), C = 16 or 48."""
    if samples.dim() != 5 or samples.shape[1] not in LATENT_FORMATS:
        raise ValueError(f"expected a Wan video LATENT [B, 16 or 48, T, h, w], got {list(samples.shape)}")
    mean, std = latent_format(samples.shape[1]).stats(samples)
    z = (samples.float() - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return z.permute(0, 2, 1, 3, 4).contiguous()


def video_frames(latent_frames: int) -> int:
    """Video frames the Wan VAE decodes from ``latent_frames`` latents (first latent -> 1 frame, others -> 4)."""
    return 0 if latent_frames <= 0 else VAE_STRIDE[0] * (latent_frames - 1) + 1


LATENT_KEYS = ("samples", "latent_tensor")
"""Where a latent file keeps its raw latents: the pack's ``latents.safetensors`` (render, demo) and core
SaveLatent's ``.latent`` file."""


def read_latent_file(path: str | os.PathLike) -> torch.Tensor:
    """Raw Wan latents ``[B, 16 or 48, T, h, w]`` from a latent file (safetensors; nothing is unpickled): the pack's
    own ``latents.safetensors`` or a core SaveLatent ``.latent`` file. ``ValueError`` says what is wrong."""
    _, tensors = read_tensor_file(path, "latent", ValueError)
    name = os.path.basename(os.fspath(path))
    found = [tensors[k] for k in LATENT_KEYS if k in tensors]
    if not found:
        raise ValueError(f"{name} holds no latents (no {' or '.join(repr(k) for k in LATENT_KEYS)} tensor); give a "
                         "render's latents.safetensors or a SaveLatent .latent file")
    samples = found[0]
    if samples.dim() != 5 or samples.shape[1] not in LATENT_FORMATS or not samples.is_floating_point():
        raise ValueError(f"{name} holds latents {list(samples.shape)} {samples.dtype}; expected Wan video latents "
                         f"[batch, 16 or 48, frames, height/8 or /16, width/8 or /16]")
    return samples.float()
