"""Pixels back into latents during a run: every block decoded as it is made, single frames re-encoded on request.

A memory that re-encodes pixels (Krea Realtime's release default, ``memory.krea_realtime``; its policy says
``needs_pixels``) asks, before a block, for the latent of one decoded pixel frame (``reencoded_context``). This
module owns what that takes:

* a streaming decode of the video (``models.wan_vae_decoder``): each block's latents, de-normalised to the raw VAE
  space, go through the Wan2.1 decoder with its history kept, so the pixels are those one decode of the whole
  video gives (clamped to [-1, 1]);
* the last decoded pixel frame of each recent latent frame (latent 0 decodes to one pixel frame, every later one
  to four, so latent ``j``'s last is pixel frame ``4j``), nothing older than ``keep`` latent frames;
* the encoding of one such pixel frame on its own (a fresh encoder history: one pixel frame, one latent frame),
  normalised like every latent of the pipeline.

Resuming at a shot boundary replays the decode over the latents so far (:meth:`PixelReencoding.replay`): the
decoder's history is a function of those latents, so nothing else needs storing.
"""

from __future__ import annotations

import torch

from ..models.wan_vae import encode_pixels
from ..models.wan_vae_decoder import StreamingDecode, WanVAE
from .latents import VAE_STRIDE, from_comfy_latent, to_comfy_latent


class PixelReencoding:
    """One run's decoded pixels and their re-encoding (see the module docstring)."""

    def __init__(self, vae: WanVAE, keep: int):
        self.vae, self.keep = vae, max(1, keep)
        self._stream = StreamingDecode(vae.decoder)
        self._last_pixels: dict[int, torch.Tensor] = {}  # latent frame -> its last pixel frame [B, 3, H, W]

    def add(self, latents: torch.Tensor) -> None:
        """Decode the next latent frames ``[B, k, 16, h, w]`` (normalised, following those already added)."""
        first = self._stream.latent_frames
        pixels = self._stream.decode(to_comfy_latent(latents))
        step = VAE_STRIDE[0]
        for i in range(latents.shape[1]):
            j = first + i
            last = step * i + (0 if first == 0 else step - 1)  # latent 0 is pixel 0; the others, four each
            self._last_pixels[j] = pixels[:, :, last].clone()
        for j in [j for j in self._last_pixels if j < first + latents.shape[1] - self.keep]:
            del self._last_pixels[j]

    def replay(self, latents: torch.Tensor) -> None:
        """Start over and decode ``latents`` ``[B, T, 16, h, w]`` (a resumed run's frames so far)."""
        self._stream = StreamingDecode(self.vae.decoder)
        self._last_pixels.clear()
        if latents.shape[1]:
            self.add(latents)

    def encode(self, latent_frame: int) -> torch.Tensor:
        """The normalised latent ``[B, 1, 16, h, w]`` (float32, CPU) of ``latent_frame``'s last decoded pixel frame,
        encoded on its own."""
        if latent_frame not in self._last_pixels:
            raise KeyError(f"latent frame {latent_frame} was not decoded or is older than the {self.keep} kept")
        pixels = self._last_pixels[latent_frame].unsqueeze(2)  # [B, 3, 1, H, W]
        return from_comfy_latent(encode_pixels(self.vae.encoder, pixels)).cpu()
