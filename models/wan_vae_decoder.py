"""The Wan2.1 VAE *decoder*, streaming: latents to pixels a block at a time, for memories that re-encode pixels.

Krea Realtime's release default re-encodes the first frame of its context from the pixels it has just decoded
(``memory.krea_realtime``), so the sampler decodes every block as it is made. A causal decoder that keeps each
layer's last input frames between calls gives, block by block, exactly the pixels of one decode of the whole
video, which is how the official ``WanVAE_.decode`` works anyway (one latent frame per call, the ``feat_cache``
carried over). ComfyUI's ``comfy/ldm/wan/vae.py`` keeps the official module tree and names, so the weights come
from core's VAE object or from the same file as :mod:`models.wan_vae`'s encoder.

The network (official ``Decoder3d`` of ``_video_vae``: dim 96, z_dim 16, dim_mult [1, 2, 4, 4], three residual
blocks a stage, temporal up-sampling in the first two up-samplers):

* ``conv2`` (1x1x1, on the raw latents), then ``decoder.conv1``: causal 3x3x3 conv 16 -> 384;
* ``decoder.middle``: residual block, single-head attention over each frame's pixels, residual block;
* ``decoder.upsamples.0..14``: per stage three residual blocks, then (stages 0-2) an up-sampler: where the stage
  doubles time, ``time_conv`` (causal 3x1x1, C -> 2C) whose two halves become frames ``2t`` and ``2t + 1``; then
  nearest-neighbour x2 in space and a 3x3 conv halving the width (``resample.1``);
* ``decoder.head``: RMS norm, SiLU, causal conv 96 -> 3; the result is clamped to [-1, 1] (official
  ``WanVAE.decode``).

**Streaming.** Latent frames go through one at a time, every causal layer keeping its last two input frames
(:class:`models.wan_vae._ChunkCache`). The first latent frame makes one pixel frame: the time up-samplers pass
it untouched and keep nothing, so their history starts with zeros at the second latent frame (the official
``"Rep"`` marker). Every later latent frame makes four. ``T`` latent frames give ``4T - 3`` pixel frames
whatever blocks they arrive in.

**Verified** by Krea Realtime's re-encoding parity (``tests/test_parity_krea.py``, run D' of
``tests/fixtures/krea_realtime``), whose reference decodes with this loop of github.com/Wan-Video/Wan2.1
``wan/modules/vae.py`` @ ``9737cba9``; Krea's own streaming decoder differs in its first time up-sampler's cache
(the fixture README says how), and ComfyUI's VAE, like this module, is Wan2.1's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import read_tensors
from .wan_vae import (
    CACHE_FRAMES,
    DIM_MULT,
    NUM_RES_BLOCKS,
    TEMPORAL_DOWNSAMPLE,
    WAN21_VAE_DIM,
    WAN21_VAE_Z_DIM,
    AttentionBlock,
    CausalConv3d,
    ResidualBlock,
    RMSNorm,
    WanVAEEncoder,
    _as_images,
    _as_video,
    _ChunkCache,
    decoder_state_dict,
    encoder_state_dict,
)


class TimeUpsample(nn.Conv3d):
    """``time_conv``: a causal 3x1x1 convolution C -> 2C whose halves become two frames each.

    The first latent frame passes untouched and leaves nothing behind; from the second on, the convolution runs
    over this chunk after the previous chunks' last two frames (zeros before the second chunk).
    """

    def __init__(self, channels: int):
        super().__init__(channels, 2 * channels, (3, 1, 1))

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        previous = cache.previous(self)
        if previous is None:  # the first chunk: one frame stays one frame; the history starts after it
            cache.exchange(self, x.new_zeros((*x.shape[:2], CACHE_FRAMES, *x.shape[3:])))
            return x
        keep = torch.cat([previous, x], 2)[:, :, -CACHE_FRAMES:].clone()
        cache.exchange(self, keep)
        y = super().forward(torch.cat([previous, x], 2))  # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        # the two halves of the channels are frames 2t and 2t + 1
        return y.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


class Upsample(nn.Module):
    """Where the stage doubles time, :class:`TimeUpsample`; then nearest x2 in space and a 3x3 conv C -> C/2."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.resample = nn.ModuleDict({"1": nn.Conv2d(channels, channels // 2, 3, padding=1)})  # 0: the x2
        self.time_conv = TimeUpsample(channels) if temporal else None

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        if self.time_conv is not None:
            x = self.time_conv(x, cache)
        frames = x.shape[2]
        images = F.interpolate(_as_images(x).float(), scale_factor=2.0, mode="nearest-exact").type_as(x)
        return _as_video(self.resample["1"](images), frames)


class Decoder3d(nn.Module):
    """The official ``Decoder3d`` for one chunk: ``[B, z_dim, T, h, w]`` -> ``[B, 3, T', 8h, 8w]``."""

    def __init__(self, dim: int, z_dim: int):
        super().__init__()
        widths = [dim * m for m in (DIM_MULT[-1], *reversed(DIM_MULT))]
        self.conv1 = CausalConv3d(z_dim, widths[0])
        c = widths[0]
        self.middle = nn.ModuleList([ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c)])
        layers: list[nn.Module] = []
        temporal = TEMPORAL_DOWNSAMPLE[::-1]
        for stage, (c_in, c_out) in enumerate(pairwise(widths)):
            c_in = c_in // 2 if stage > 0 else c_in  # the previous up-sampler halved the width
            for block in range(NUM_RES_BLOCKS + 1):
                layers.append(ResidualBlock(c_in if block == 0 else c_out, c_out))
            if stage < len(DIM_MULT) - 1:
                layers.append(Upsample(c_out, temporal[stage]))
        self.upsamples = nn.ModuleList(layers)
        self.head = nn.ModuleDict({"0": RMSNorm(widths[-1]), "2": CausalConv3d(widths[-1], 3)})  # 1 was SiLU

    def forward(self, x: torch.Tensor, cache: _ChunkCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = self.middle[0](x, cache)
        x = self.middle[1](x)
        x = self.middle[2](x, cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return self.head["2"](F.silu(self.head["0"](x)), cache)


class WanVAEDecoder(nn.Module):
    """``conv2`` and the decoder half of the Wan2.1 VAE; ``state_dict()`` keys are the official (and ComfyUI)
    names. Stateless: a :class:`StreamingDecode` carries the history between blocks."""

    def __init__(self, dim: int = WAN21_VAE_DIM, z_dim: int = WAN21_VAE_Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.conv2 = nn.Conv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> WanVAEDecoder:
        """Build for ``state_dict`` (``conv2`` and ``decoder.*``, checked by
        :func:`models.wan_vae.decoder_state_dict`) and load it strictly, on the meta device first."""
        dim = state_dict["decoder.head.0.gamma"].shape[0]
        z_dim = state_dict["conv2.weight"].shape[0]
        with torch.device("meta"):
            model = cls(dim, z_dim)
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
        model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)


class StreamingDecode:
    """One video's decode, block by block: :meth:`decode` takes the next raw latent frames and returns their
    pixels ``[B, 3, T', H, W]`` in [-1, 1] (float32, on the decoder's device), the same as one decode of all
    frames so far would give for them."""

    def __init__(self, decoder: WanVAEDecoder):
        self.decoder = decoder
        self.cache = _ChunkCache()
        self.latent_frames = 0

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """``raw`` ``[B, z_dim, T, h, w]``: the next ``T`` latent frames in raw VAE space (not normalised)."""
        weight = self.decoder.conv2.weight
        if raw.dim() != 5 or raw.shape[1] != self.decoder.z_dim:
            raise ValueError(f"the Wan2.1 VAE decodes latents [batch, {self.decoder.z_dim}, frames, h, w]; got "
                             f"{list(raw.shape)}")
        with torch.inference_mode():
            x = self.decoder.conv2(raw.to(device=weight.device, dtype=weight.dtype))
            frames = [self.decoder.decoder(x[:, :, i:i + 1], self.cache) for i in range(x.shape[2])]
        self.latent_frames += raw.shape[2]
        return torch.cat(frames, 2).float().clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class WanVAE:
    """Both halves of the Wan2.1 VAE, as a run that re-encodes pixels uses them."""

    encoder: WanVAEEncoder
    decoder: WanVAEDecoder

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for half in (self.encoder, self.decoder) for p in half.parameters())

    def decode_bytes(self, latent_size: tuple[int, int], batch: int = 1) -> int:
        """Device bytes of a streaming decode in the loop: the weights plus :func:`streaming_decode_bytes`."""
        return self.weight_bytes + streaming_decode_bytes(self.decoder, latent_size, batch)

    def to(self, device: torch.device | str) -> WanVAE:
        """Both halves on ``device`` (moved in place, as ``nn.Module.to``)."""
        self.encoder.to(device)
        self.decoder.to(device)
        return self


def wan_vae_from_tensors(tensors: Mapping, what: str = "the VAE", device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> WanVAE:
    """The whole Wan2.1 VAE of a state dict (a file's, or ComfyUI's ``first_stage_model``), both halves checked
    before anything is built (:class:`models.checkpoints.CheckpointError` says what is wrong)."""
    encoder = encoder_state_dict(tensors, what)
    decoder = decoder_state_dict(tensors, what)
    return WanVAE(WanVAEEncoder.from_state_dict(encoder, device, dtype),
                  WanVAEDecoder.from_state_dict(decoder, device, dtype))


def load_wan_vae(path: str | os.PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> WanVAE:
    """The whole Wan2.1 VAE from a ``.safetensors`` or ``.pth`` file (``weights_only`` pickles only)."""
    return wan_vae_from_tensors(read_tensors(path), f"the VAE file {os.path.basename(os.fspath(path))}", device, dtype)


PEAK_ACTIVATIONS = 3
"""Working tensors of a decode call counted as this many of its largest activation (a residual block's input,
its normalised copy and its convolution's padded input)."""


def streaming_decode_bytes(decoder: WanVAEDecoder, latent_size: tuple[int, int], batch: int = 1) -> int:
    """Device bytes a streaming decode of ``batch`` videos of ``latent_size`` latents needs besides the weights:
    what every causal layer keeps for the whole run, plus :data:`PEAK_ACTIVATIONS` times the largest activation
    of one call (measured by running the decoder on the meta device: exact shapes, no memory)."""
    dim, z_dim = decoder.decoder.head["0"].gamma.shape[0], decoder.z_dim
    item = decoder.conv2.weight.element_size()
    largest = [0]

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    with torch.device("meta"):
        model = WanVAEDecoder(dim, z_dim)
    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        stream = StreamingDecode(model)
        latents = torch.empty((batch, z_dim, 2, *latent_size), device="meta")
        with torch.inference_mode():  # the first frame alone, then a later one: every history is full and
            x = model.conv2(latents)   # the largest call (four pixel frames) has run
            for i in range(2):
                model.decoder(x[:, :, i:i + 1], stream.cache)
    finally:
        for h in hooks:
            h.remove()
    return item * (stream.cache.numel() + PEAK_ACTIVATIONS * largest[0])
