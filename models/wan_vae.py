"""The Wan2.1 VAE *encoder*: pixels to raw latents, for shots that start from an image or a clip.

Inside ComfyUI core VAE Encode does this job; the standalone command line (``render --image``) has no VAE, so
the pack carries the encoder half of the Wan2.1 3-D causal VAE and reads it from the file users already have:
``wan_2.1_vae.safetensors`` (Comfy-Org/Wan_2.1_ComfyUI_repackaged) or the official ``Wan2.1_VAE.pth``. Both
hold the official ``WanVAE_`` state dict under the same names: ``encoder.*``, ``conv1`` (to mean and
log-variance), ``conv2`` and ``decoder.*``. The official ``_video_vae`` loads the ``.pth`` strictly into
``WanVAE_``; ComfyUI's ``comfy/ldm/wan/vae.py`` (commit ``a125cd84``) keeps that module tree, names and all,
detects the Wan2.1 VAE by ``decoder.middle.0.residual.0.gamma`` and loads the file's keys as they are. (The
released files themselves were not opened here; that argument, and ``cli/tiny_files.py``'s layout test against
ComfyUI's modules, is the evidence.) Only ``encoder.*`` and ``conv1`` are loaded.

The network (official ``wan/modules/vae.py``, ``_video_vae``: dim 96, z_dim 16, dim_mult [1, 2, 4, 4], two
residual blocks a stage, no attention in the stages, temporal down-sampling in stages 2 and 3):

* ``encoder.conv1``: causal 3x3x3 conv 3 -> 96;
* ``encoder.downsamples.0..10``: per stage two residual blocks (channel RMS norm, SiLU, causal conv, RMS norm,
  SiLU, causal conv, plus a 1x1x1 shortcut where the width changes), then (stages 1-3) a spatial /2 (pad right
  and bottom by one, 3x3 conv, stride 2) and, in stages 2 and 3, a temporal /2 (``time_conv``: 3x1x1, stride 2);
* ``encoder.middle``: residual block, single-head attention over each frame's pixels, residual block;
* ``encoder.head``: RMS norm, SiLU, causal conv 384 -> 32; ``conv1``: 1x1x1 conv 32 -> 32, split into
  mu (first 16 channels) and log-variance.

**Chunking** follows the official ``WanVAE_.encode``: the first frame is encoded alone, then the frames in
chunks of four, each causal convolution keeping the last two frames of its input from the previous chunk (the
official ``feat_cache``, here :class:`_ChunkCache`) and each temporal down-sampler its last frame. The first
chunk's frame passes the temporal down-samplers untouched, a 4-frame chunk leaves two frames after the first
and one after the second: ``T = 1 + 4k`` video frames give ``1 + k`` latent frames. Other frame counts are
refused (the official code silently drops the frames of an incomplete last chunk).

**Raw mu.** The official ``encode`` returns ``(mu - mean) / std`` with the Wan2.1 latent statistics. This module
returns the *raw* mu ``[B, 16, T', H/8, W/8]``, which is what ComfyUI's VAE Encode puts in a LATENT; callers
normalise with ``pipeline.latents.from_comfy_latent`` (the same statistics), exactly as for a LATENT from
ComfyUI. Pixels are ``[B, 3, T, H, W]`` in [-1, 1] (the official convention; ComfyUI's ``process_input`` maps
its [0, 1] images the same way), ``H`` and ``W`` multiples of 8.

**Verified** against the official code: ``wan/modules/vae.py`` of github.com/Wan-Video/Wan2.1 at commit
``9737cba9c1c3c4d04b33fcad41c111989865d315`` (the file is unchanged since ``65386b2e``), run on CPU in float32
with the weights of :func:`random_wan_vae_state_dict` at the real size (dim 96, loaded strictly into the
official ``WanVAE_``, so the full key layout is the official one too), for a batch of two 1-frame images and
a 9-frame clip at 32x48: max |Δ| of mu = 0 (bit-identical) for both, and 1.2e-7 between the official
normalised output and ``from_comfy_latent`` of this mu; two more inputs (``[2, 3, 13, 64, 64]``,
``[1, 3, 5, 40, 24]``) were bit-identical too. The first two are kept in ``tests/fixtures/wan_vae/`` (its
README says how they were made) and checked by ``tests/test_wan_vae.py``.

Weights may be float32, float16 or bfloat16. :func:`encode_pixels` runs under ``torch.inference_mode`` in the
encoder's dtype (bfloat16 on a GPU for real use, as ComfyUI does; the parity check uses float32) and returns
float32. Files are read through ``models.checkpoints.read_tensors``: safetensors, or a pickle opened with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, check_finite, read_tensors
from .registry import by_name, download_command

WAN21_VAE_DIM = 96
WAN21_VAE_Z_DIM = 16
"""Latent channels of the Wan2.1 VAE (the DiT's in/out channels; Wan2.2's TI2V-5B VAE has 48)."""
DIM_MULT = (1, 2, 4, 4)
NUM_RES_BLOCKS = 2
TEMPORAL_DOWNSAMPLE = (False, True, True)
"""Which stage transitions halve time (official ``temperal_downsample`` of ``_video_vae``)."""
CHUNK_FRAMES = 4
"""Frames per chunk after the first frame (the official encode's 1, 4, 4, ... split)."""
SPATIAL_STRIDE = 8
CACHE_FRAMES = 2
"""Frames of context a causal 3x3x3 convolution needs before a chunk (official ``CACHE_T``)."""
STORED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_IMAGE_PIXELS = 1 << 26
"""Largest picture :func:`read_image` decodes (64 Mpx): a bigger one is refused before it is decoded."""
_PIXEL_SLACK = 1e-3
_LIST = 10
_OTHER_FILES = (
    ("encoder.down_blocks.", "a diffusers-format VAE"),
    ("encoder.conv_in.", "a 2-D image VAE (Stable Diffusion 1.x/2.x/XL, Flux, SD3)"),
    ("blocks.0.self_attn.", "a Wan diffusion model (DiT), not its VAE"),
    ("diffusion_model.", "a diffusion model checkpoint"),
    ("encoder.block.0.", "a T5 / umT5 text encoder"),
)


def _wan21_vae_file() -> str:
    entry = by_name("wan21-vae")
    return (f"{entry.file} ({entry.repo}, {entry.path}; `{download_command(entry.name)}` fetches it) or the "
            "official Wan2.1_VAE.pth")


class _ChunkCache:
    """What each causal layer keeps from the previous chunk (the official ``feat_cache``), keyed by layer."""

    def __init__(self):
        self._kept: dict[nn.Module, torch.Tensor] = {}

    def exchange(self, layer: nn.Module, keep: torch.Tensor) -> torch.Tensor | None:
        """Store ``keep`` for ``layer``'s next chunk; return what the previous chunk stored (None: first chunk)."""
        previous = self._kept.get(layer)
        self._kept[layer] = keep
        return previous

    def previous(self, layer: nn.Module) -> torch.Tensor | None:
        """What the previous chunk stored for ``layer`` (None: this is the first chunk)."""
        return self._kept.get(layer)

    def numel(self) -> int:
        """Elements kept, all layers together."""
        return sum(t.numel() for t in self._kept.values())


class CausalConv3d(nn.Conv3d):
    """A 3x3x3 convolution, zero-padded by one pixel in space and causal in time.

    Before the first chunk two zero frames are padded; before a later chunk the previous chunk's last frames
    (one or two, the cache's) and zeros for the rest, so the chunked result is the causal convolution of the
    whole sequence. What it keeps: its input's last two frames, or, for a 1-frame input after a first chunk,
    the previous chunk's last frame and this one.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3)

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        previous = cache.previous(self)
        keep = x[:, :, -CACHE_FRAMES:]
        if previous is not None and keep.shape[2] < CACHE_FRAMES:
            keep = torch.cat([previous[:, :, -1:], keep], 2)
        cache.exchange(self, keep.clone())
        if previous is not None:
            x = torch.cat([previous, x], 2)
        pad_t = CACHE_FRAMES - (0 if previous is None else previous.shape[2])
        return super().forward(F.pad(x, (1, 1, 1, 1, pad_t, 0)))


class RMSNorm(nn.Module):
    """Channel RMS norm: ``x / ||x||_channels * sqrt(C) * gamma`` (official ``RMS_norm``, no bias).

    ``gamma`` is ``[C, 1, 1, 1]`` for video tensors ``[B, C, T, H, W]`` and ``[C, 1, 1]`` for images (inside the
    attention), as stored in the file.
    """

    def __init__(self, channels: int, images: bool = False):
        super().__init__()
        self.scale = channels ** 0.5
        self.gamma = nn.Parameter(torch.ones(channels, *(1,) * (2 if images else 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B*T, C, H, W]`` (frames as a batch of images)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _as_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B*T, C, H, W]`` -> ``[B, C, T, H, W]``."""
    bt, c, h, w = x.shape
    return x.reshape(bt // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class ResidualBlock(nn.Module):
    """``x + residual(x)`` or ``shortcut(x) + residual(x)``; ``residual`` keeps the official ``nn.Sequential``
    indices (0 norm, 2 conv, 3 norm, 6 conv; 1 and 4 were SiLU, 5 a dropout of 0)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.ModuleDict({"0": RMSNorm(c_in), "2": CausalConv3d(c_in, c_out),
                                       "3": RMSNorm(c_out), "6": CausalConv3d(c_out, c_out)})
        self.shortcut = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        r = self.residual
        h = r["2"](F.silu(r["0"](x)), cache)
        h = r["6"](F.silu(r["3"](h)), cache)
        return h + self.shortcut(x)


class Downsample(nn.Module):
    """Spatial /2 per frame (``resample``: pad right and bottom by one, 3x3 conv of stride 2), then, where the
    stage halves time, ``time_conv`` (3x1x1, stride 2) over the previous chunk's last frame and this chunk's.

    The first chunk's single frame skips ``time_conv``; a chunk of ``2n`` frames leaves ``n``.
    """

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))
        self.time_conv = nn.Conv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        x = _as_video(self.resample(_as_images(x)), x.shape[2])
        if self.time_conv is None:
            return x
        previous = cache.exchange(self, x[:, :, -1:].clone())
        return x if previous is None else self.time_conv(torch.cat([previous, x], 2))


class AttentionBlock(nn.Module):
    """Single-head self-attention among one frame's pixels (official ``AttentionBlock``), plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels, images=True)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        images = self.norm(_as_images(x))
        # [B*T, 3C, H, W] -> [B*T, 1 head, H*W, 3C] -> q, k, v [B*T, 1, H*W, C]
        qkv = self.to_qkv(images).reshape(b * t, 1, 3 * c, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, H*W, C]
        out = self.proj(out.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return _as_video(out, t) + x


class Encoder3d(nn.Module):
    """The official ``Encoder3d`` for one chunk: ``[B, 3, T, H, W]`` -> ``[B, 2*z_dim, T', H/8, W/8]``."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__()
        widths = [dim * m for m in (1, *DIM_MULT)]
        self.conv1 = CausalConv3d(3, widths[0])
        layers: list[nn.Module] = []
        for stage, (c_in, c_out) in enumerate(pairwise(widths)):
            for block in range(NUM_RES_BLOCKS):
                layers.append(ResidualBlock(c_in if block == 0 else c_out, c_out))
            if stage < len(DIM_MULT) - 1:
                layers.append(Downsample(c_out, TEMPORAL_DOWNSAMPLE[stage]))
        self.downsamples = nn.ModuleList(layers)
        c = widths[-1]
        self.middle = nn.ModuleList([ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c)])
        self.head = nn.ModuleDict({"0": RMSNorm(c), "2": CausalConv3d(c, out_channels)})  # 1 was SiLU

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        x = self.middle[0](x, cache)
        x = self.middle[1](x)
        x = self.middle[2](x, cache)
        return self.head["2"](F.silu(self.head["0"](x)), cache)


def check_pixels(pixels: torch.Tensor) -> None:
    """``ValueError`` unless ``pixels`` is ``[B, 3, T, H, W]`` with ``T = 1 + 4k`` and ``H, W`` multiples of 8."""
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 5 or pixels.shape[1] != 3:
        shape = list(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"the VAE encodes pixels [batch, 3, frames, height, width]; got {shape} (an image is "
                         "1 frame: pixels_from_image makes that tensor from a file or an RGB array)")
    b, _, t, h, w = pixels.shape
    if b < 1:
        raise ValueError(f"the pixels hold an empty batch {list(pixels.shape)}")
    if t < 1 or (t - 1) % CHUNK_FRAMES:
        below = 1 + CHUNK_FRAMES * ((t - 1) // CHUNK_FRAMES) if t >= 1 else None
        near = f"use {below} or {below + CHUNK_FRAMES} frames" if below else "give at least one frame"
        raise ValueError(f"the Wan2.1 VAE encodes 1 + 4k frames (the first alone, then chunks of 4); got {t} "
                         f"frame(s): {near}")
    if h < SPATIAL_STRIDE or w < SPATIAL_STRIDE or h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
        fit = f"{max(SPATIAL_STRIDE, h // SPATIAL_STRIDE * SPATIAL_STRIDE)}x" \
              f"{max(SPATIAL_STRIDE, w // SPATIAL_STRIDE * SPATIAL_STRIDE)}"
        raise ValueError(f"height and width must be positive multiples of {SPATIAL_STRIDE} (the VAE's spatial "
                         f"stride); got {h}x{w} (height x width): resize or crop to e.g. {fit}")


class WanVAEEncoder(nn.Module):
    """Encoder half of the Wan2.1 VAE plus ``conv1``; ``state_dict()`` keys are the official (and ComfyUI) names.

    ``forward(pixels [B, 3, T, H, W] in [-1, 1])`` returns the raw mu ``[B, 16, 1 + (T-1)/4, H/8, W/8]`` in the
    pixels' dtype (not normalised; see the module docstring). Use :func:`encode_pixels` to encode.
    """

    def __init__(self, dim: int = WAN21_VAE_DIM, z_dim: int = WAN21_VAE_Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = Encoder3d(dim, 2 * z_dim)
        self.conv1 = nn.Conv3d(2 * z_dim, 2 * z_dim, 1)  # to (mu, log-variance)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels)
        cache = _ChunkCache()
        chunks = [pixels[:, :, :1]]
        chunks += [pixels[:, :, i:i + CHUNK_FRAMES] for i in range(1, pixels.shape[2], CHUNK_FRAMES)]
        features = torch.cat([self.encoder(chunk, cache) for chunk in chunks], 2)
        return self.conv1(features)[:, :self.z_dim]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> WanVAEEncoder:
        """Build for ``state_dict`` (encoder and ``conv1`` tensors, checked by :func:`encoder_state_dict`) and
        load it strictly; built on the meta device, so no memory goes to weights that are overwritten."""
        dim = state_dict["encoder.conv1.weight"].shape[0]
        z_dim = state_dict["conv1.weight"].shape[0] // 2
        with torch.device("meta"):
            model = cls(dim, z_dim)
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
        model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)


def encoder_shapes(dim: int = WAN21_VAE_DIM, z_dim: int = WAN21_VAE_Z_DIM) -> dict[str, tuple[int, ...]]:
    """Every tensor :class:`WanVAEEncoder` loads (``encoder.*`` and ``conv1.*``) with its shape."""
    with torch.device("meta"):
        model = WanVAEEncoder(dim, z_dim)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _decoder_shapes(dim: int, z_dim: int) -> dict[str, tuple[int, ...]]:
    """The tensors of the official ``Decoder3d`` and ``conv2`` (never loaded here; they make files complete).

    Stages mirror the encoder (widths 4, 4, 2, 1 times ``dim``) with three residual blocks each; an upsampler's
    2-D conv halves the width, and where it also doubles time its ``time_conv`` (3x1x1) doubles the channels.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, *kernel: int) -> None:
        shapes[name + ".weight"] = (c_out, c_in, *kernel)
        shapes[name + ".bias"] = (c_out,)

    def residual(p: str, c_in: int, c_out: int) -> None:
        shapes[p + "residual.0.gamma"] = (c_in, 1, 1, 1)
        conv(p + "residual.2", c_out, c_in, 3, 3, 3)
        shapes[p + "residual.3.gamma"] = (c_out, 1, 1, 1)
        conv(p + "residual.6", c_out, c_out, 3, 3, 3)
        if c_in != c_out:
            conv(p + "shortcut", c_out, c_in, 1, 1, 1)

    conv("conv2", z_dim, z_dim, 1, 1, 1)
    widths = [dim * m for m in (DIM_MULT[-1], *reversed(DIM_MULT))]
    conv("decoder.conv1", widths[0], z_dim, 3, 3, 3)
    residual("decoder.middle.0.", widths[0], widths[0])
    shapes["decoder.middle.1.norm.gamma"] = (widths[0], 1, 1)
    conv("decoder.middle.1.to_qkv", 3 * widths[0], widths[0], 1, 1)
    conv("decoder.middle.1.proj", widths[0], widths[0], 1, 1)
    residual("decoder.middle.2.", widths[0], widths[0])
    index = 0
    for stage, (c_in, c_out) in enumerate(pairwise(widths)):
        c_in = c_in // 2 if stage > 0 else c_in  # the previous upsampler halved the width
        for _ in range(NUM_RES_BLOCKS + 1):
            residual(f"decoder.upsamples.{index}.", c_in, c_out)
            c_in, index = c_out, index + 1
        if stage < len(DIM_MULT) - 1:
            conv(f"decoder.upsamples.{index}.resample.1", c_out // 2, c_out, 3, 3)
            if TEMPORAL_DOWNSAMPLE[::-1][stage]:
                conv(f"decoder.upsamples.{index}.time_conv", 2 * c_out, c_out, 3, 1, 1)
            index += 1
    shapes["decoder.head.0.gamma"] = (widths[-1], 1, 1, 1)
    conv("decoder.head.2", 3, widths[-1], 3, 3, 3)
    return shapes


def wan_vae_shapes(dim: int = WAN21_VAE_DIM, z_dim: int = WAN21_VAE_Z_DIM,
                   decoder: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Wan2.1 VAE file (the official ``WanVAE_`` state dict, 194 tensors at any ``dim``, 126.9M
    parameters at 96), or only the 86 of the encoder and ``conv1`` (53.6M at 96)."""
    shapes = encoder_shapes(dim, z_dim)
    return {**shapes, **_decoder_shapes(dim, z_dim)} if decoder else shapes


def random_wan_vae_state_dict(seed: int = 0, dim: int = WAN21_VAE_DIM, *, decoder: bool = True,
                              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the Wan2.1 VAE file layout (``dim`` 96 is the real size; a smaller one keeps every
    stage and name, for fast tests): conv weights ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), RMS norm gains
    ~ 1 + N(0, 0.1^2), so every layer matters and activations stay of order one.

    Deterministic: each tensor is drawn from its own CPU generator seeded from SHA-256(seed, name), so a
    tensor's values depend only on ``seed``, ``dim`` and its name, never on which other tensors are drawn
    (``decoder=False`` gives the same encoder as the full file). The parity fixtures depend on this.
    """
    out = {}
    for name, shape in sorted(wan_vae_shapes(dim, WAN21_VAE_Z_DIM, decoder).items()):
        digest = hashlib.sha256(f"wan_vae/{seed}/{name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        t = torch.randn(shape, generator=gen)
        if name.endswith(".gamma"):
            t = 1.0 + 0.1 * t
        elif name.endswith(".bias"):
            t = 0.02 * t
        else:
            t = t / math.prod(shape[1:]) ** 0.5
        out[name] = t.to(dtype)
    return out


def _other_file_hint(keys: list[str]) -> str:
    for marker, what in _OTHER_FILES:
        if any(k.startswith(marker) or f".{marker}" in k for k in keys):
            return f" The keys look like {what}."
    return ""


def _prefix(keys: list[str]) -> str | None:
    """The prefix under which the file keeps the VAE (``""`` for the official and ComfyUI files)."""
    anchor = "encoder.conv1.weight"
    found = sorted((k[: -len(anchor)] for k in keys if k.endswith(anchor)), key=len)
    found = [p for p in found if p == "" or p.endswith(".")]
    return found[0] if found else None


def _check_latent_channels(sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse a VAE of another latent width (Wan2.2's 48 channels) or input layout, naming the tensor."""
    for name, wide in (("conv1.weight", 2), ("conv2.weight", 1)):
        conv = sd.get(name)
        if conv is not None and (conv.dim() != 5 or conv.shape[0] != wide * WAN21_VAE_Z_DIM):
            z = conv.shape[0] // wide
            which = " (the Wan2.2 TI2V-5B VAE)" if z == 48 else ""
            raise CheckpointError(
                f"{what} is a VAE with {z} latent channels{which}: {name} is {list(conv.shape)}, the Wan2.1 VAE's is "
                f"[{wide * WAN21_VAE_Z_DIM}, {wide * WAN21_VAE_Z_DIM}, 1, 1, 1] ({WAN21_VAE_Z_DIM} channels, what "
                f"the Wan2.1 models Echo-Forcing runs take). Use {_wan21_vae_file()}.")
    first = sd.get("encoder.conv1.weight")
    if first is not None and (first.dim() != 5 or first.shape[1] != 3):
        which = " (a 2x2-patchified input, as the Wan2.2 VAE)" if first.dim() == 5 and first.shape[1] == 12 else ""
        raise CheckpointError(
            f"{what} is not a Wan2.1 VAE: encoder.conv1.weight is {list(first.shape)}{which}; the Wan2.1 VAE's is "
            f"[{WAN21_VAE_DIM}, 3, 3, 3, 3]. Use {_wan21_vae_file()}.")


def _layout_problems(sd: Mapping[str, torch.Tensor], prefix: str,
                     expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The tensors of ``expected`` that ``sd`` lacks, has in excess or has in the wrong shape, one line per kind
    (names as in the file, with ``prefix``)."""
    missing = [prefix + k for k in expected if k not in sd]
    unexpected = sorted(prefix + k for k in sd if k not in expected)
    mismatched = [f"{prefix}{k}: file {list(sd[k].shape)} vs expected {list(s)}"
                  for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)):
        if items:
            more = f" ... (+{len(items) - _LIST} more)" if len(items) > _LIST else ""
            problems.append(f"{len(items)} {label}: {'; '.join(items[:_LIST])}{more}")
    return problems


_PARTS = {"encoder": (("encoder.", "conv1."), "encoder.conv1.weight", 0),
          "decoder": (("decoder.", "conv2."), "decoder.head.0.gamma", 0)}
"""Each half of the VAE: its key prefixes, and the tensor whose first dimension is the VAE's width."""


def _vae_part(tensors: Mapping, what: str, part: str) -> dict[str, torch.Tensor]:
    """One half of a Wan2.1 VAE state dict (see :func:`encoder_state_dict`), checked against its shapes."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{what} holds a {type(tensors).__name__}, not a dict of tensors")
    named = {str(k): v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    keys = sorted(named)
    prefix = _prefix(keys)
    if prefix is None:
        raise CheckpointError(
            f"{what} is not a Wan2.1 VAE: it has no encoder.conv1.weight.{_other_file_hint(keys)} Found {len(keys)} "
            f"tensors, e.g. {', '.join(keys[:_LIST]) or 'none'}. Use {_wan21_vae_file()}.")
    starts, width_of, axis = _PARTS[part]
    sd = {k[len(prefix):]: v for k, v in named.items() if k.startswith(prefix) and k[len(prefix):].startswith(starts)}
    _check_latent_channels(sd, what)
    width = sd.get(width_of)
    if width is None or width.dim() < 1:
        raise CheckpointError(f"{what} holds no Wan2.1 VAE {part}: {prefix}{width_of} is missing. A file with the "
                              f"encoder alone cannot decode; use {_wan21_vae_file()}.")
    dim = width.shape[axis]
    expected = encoder_shapes(dim, WAN21_VAE_Z_DIM) if part == "encoder" else _decoder_shapes(dim, WAN21_VAE_Z_DIM)
    problems = _layout_problems(sd, prefix, expected)
    if problems:
        raise CheckpointError(f"{what} does not hold a complete Wan2.1 VAE {part}:\n  " + "\n  ".join(problems)
                              + "\nIt is another model or a partial file; nothing was loaded. Use "
                              + f"{_wan21_vae_file()}.")
    odd = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.dtype not in STORED_DTYPES})
    if odd:
        raise CheckpointError(f"{what} stores the VAE as {', '.join(odd)}; use a float32, float16 or bfloat16 file")
    check_finite(sd, what)
    return sd


def encoder_state_dict(tensors: Mapping, what: str = "the file") -> dict[str, torch.Tensor]:
    """The encoder's and ``conv1``'s tensors of a Wan2.1 VAE state dict, checked name by name and shape by shape.

    ``tensors`` is a whole VAE file (the decoder and ``conv2`` are ignored; a file with the encoder alone is
    accepted), possibly under a prefix (``first_stage_model.``). :class:`CheckpointError` names what is missing,
    unexpected or of the wrong shape, all at once, and what the file looks like instead, before anything is built.
    """
    return _vae_part(tensors, what, "encoder")


def decoder_state_dict(tensors: Mapping, what: str = "the file") -> dict[str, torch.Tensor]:
    """The decoder's and ``conv2``'s tensors of a whole Wan2.1 VAE state dict, checked as
    :func:`encoder_state_dict` checks the encoder (for ``models.wan_vae_decoder``)."""
    return _vae_part(tensors, what, "decoder")


def load_wan_vae_encoder(path: str | os.PathLike, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> WanVAEEncoder:
    """The Wan2.1 VAE encoder from a ``.safetensors`` or ``.pth`` VAE file (``weights_only`` pickles only),
    checked before anything is built; ``dtype`` bfloat16 on a GPU for real use, float32 on a CPU."""
    what = f"the VAE file {os.path.basename(os.fspath(path))}"
    sd = encoder_state_dict(read_tensors(path), what)
    return WanVAEEncoder.from_state_dict(sd, device=device, dtype=dtype)


def encode_pixels(encoder: WanVAEEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """Raw mu ``[B, 16, 1 + (T-1)/4, H/8, W/8]`` (float32, on the encoder's device) of ``pixels``
    ``[B, 3, T, H, W]`` in [-1, 1], computed under ``torch.inference_mode`` in the encoder's dtype.

    Normalise with ``pipeline.latents.from_comfy_latent`` before handing the latents to the pipeline.
    ``ValueError`` for a wrong shape, frame count or size, non-float or out-of-range pixels.
    """
    check_pixels(pixels)
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be floats in [-1, 1], got {pixels.dtype} (pixels_from_image converts an "
                         "RGB uint8 image)")
    weight = encoder.conv1.weight
    with torch.inference_mode():
        x = pixels.to(device=weight.device)
        low, high = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(low) and math.isfinite(high)) or low < -1 - _PIXEL_SLACK or high > 1 + _PIXEL_SLACK:
            raise ValueError(f"pixels must be in [-1, 1] (the official convention); got values from {low:g} to "
                             f"{high:g}: map [0, 1] images with x * 2 - 1, clamp overshoot, or use pixels_from_image")
        return encoder(x.to(weight.dtype)).float()


def read_image(path: str | os.PathLike):
    """The first picture of an image file (PNG, JPEG, WebP, ... whatever FFmpeg decodes) as an RGB uint8 numpy
    array ``[H, W, 3]``, through PyAV (imported here only); alpha is dropped. EXIF orientation is *not* applied
    (ComfyUI's Load Image applies it): rotate such a photo before use."""
    try:
        import av
    except ImportError:
        raise ValueError("reading an image file needs PyAV: pip install av") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"image file not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{os.path.basename(path)} holds no picture")
            codec = container.streams.video[0].codec_context
            if codec.width * codec.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{os.path.basename(path)} is {codec.width}x{codec.height}, over the "
                                 f"{MAX_IMAGE_PIXELS >> 20} Mpx this reader decodes; downscale it first")
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration) as e:
        raise ValueError(f"{os.path.basename(path)} could not be read as an image ({type(e).__name__}: {e})") from None


def pixels_from_image(image, width: int, height: int) -> torch.Tensor:
    """An image file, an RGB uint8 array ``[H, W, 3]`` or frames ``[T, H, W, 3]`` (numpy or torch) as pixels
    ``[1, 3, T, height, width]`` float32 in [-1, 1] for :func:`encode_pixels`.

    Resized as ComfyUI's Wan image-to-video nodes do (``comfy.utils.common_upscale(..., "bilinear", "center")``):
    the largest centred crop of the target aspect ratio (offsets rounded half to even, as Python's ``round``),
    then bilinear interpolation (``align_corners=False``, no antialiasing) of the [0, 1] values to
    ``height x width``, then ``x * 2 - 1``. ``width`` and ``height`` must be positive multiples of 8.
    """
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % SPATIAL_STRIDE:
            raise ValueError(f"{name} must be a positive multiple of {SPATIAL_STRIDE}, got {size!r}")
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    frames = torch.as_tensor(image)
    if frames.dim() == 3:
        frames = frames.unsqueeze(0)
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8 or 0 in frames.shape:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3] or frames [T, H, W, 3], got "
                         f"{list(frames.shape)} {frames.dtype}")
    x = frames.permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W] in [0, 1]
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    left = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    top = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    x = x[:, :, top:old_h - top, left:old_w - left]
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return (x * 2.0 - 1.0).permute(1, 0, 2, 3).unsqueeze(0).contiguous()  # [1, 3, T, H, W]
