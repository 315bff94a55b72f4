"""Where a block's noise comes from: the official order, or noise of its own for every shot.

Two modes, both drawn on the CPU in float32 (so a seed gives the same video on any device):

* ``official``: one generator seeded with the seed draws the whole initial noise ``[B, T, C, h, w]``
  first, then one ``[B*F, C, h, w]`` draw per non-final denoising step of every block, in order. Frames given
  by a start latent draw nothing (the initial noise covers the generated frames only, in order, and a block
  given whole makes no step draw), as the official pipelines' ``initial_latent`` runs do. This is the
  official Self-Forcing / Echo-Forcing order, so the parity fixtures reproduce with it. Every block's noise
  depends on the video's total length and on every block before it, so shots before an edit can be reused
  only while the total length stays the same.
* ``per-shot``: every block has a generator of its own, seeded from (the shot's seed, the block's index in
  its shot); it draws the block's initial noise ``[B, F, C, h, w]`` and then its step noise in the same order.
  A shot's seed is its Scene Prompt's ``shot_seed``, else one derived from the sampler's seed and the shot's
  index. A shot's noise then depends on nothing that comes after it, nor on the length of any other shot:
  shots 1..k are the same whatever follows them, and one shot can be re-rolled alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

OFFICIAL = "official"
PER_SHOT = "per-shot"
NOISE_MODES = (PER_SHOT, OFFICIAL)
MAX_SEED = 2**64 - 1


def derived_seed(seed: int, *indices: int) -> int:
    """A 64-bit seed for ``indices`` under ``seed`` (SHA-256 of their decimal forms), the same on every machine."""
    text = ":".join(str(int(x)) for x in (seed, *indices)).encode()
    return int.from_bytes(hashlib.sha256(b"echo-forcing:" + text).digest()[:8], "little")


def shot_seeds(seed: int, explicit: Sequence[int | None]) -> list[int]:
    """Each shot's seed: its own where given, else derived from ``seed`` and the shot's index."""
    return [derived_seed(seed, i) if s is None else int(s) for i, s in enumerate(explicit)]


class BlockNoise:
    """The noise of one rollout: ``initial(block)`` before a block's first call and ``step()`` between calls."""

    def __init__(self, mode: str, seed: int, shape: Sequence[int], shot_seeds: Sequence[int] = (),
                 given: Sequence[bool] = ()):
        if mode not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {mode!r}; choose one of: {', '.join(NOISE_MODES)}")
        self.mode = mode
        self.shape = tuple(shape)  # [B, T, C, h, w]
        self.shot_seeds = list(shot_seeds)
        self.generator = torch.Generator(device="cpu")
        self.noise = None
        if mode == OFFICIAL:  # given frames (start latents) draw nothing, as in the official initial_latent runs
            given = list(given) + [False] * (self.shape[1] - len(given))
            drawn = torch.tensor([not g for g in given[:self.shape[1]]])
            self.generator.manual_seed(seed)
            b, _, *rest = self.shape
            self.noise = torch.zeros(self.shape, dtype=torch.float32)
            self.noise[:, drawn] = torch.randn((b, int(drawn.sum()), *rest), generator=self.generator,
                                               dtype=torch.float32)

    def initial(self, start_frame: int, frames: int, shot: int, block_in_shot: int) -> torch.Tensor:
        """The initial noise ``[B, F, C, h, w]`` of the block at ``start_frame`` (zeros at given frames with the
        official order)."""
        if self.noise is not None:
            return self.noise[:, start_frame:start_frame + frames]
        self.generator.manual_seed(derived_seed(self.shot_seeds[shot], block_in_shot))
        b, _, *rest = self.shape
        return torch.randn((b, frames, *rest), generator=self.generator, dtype=torch.float32)

    def step(self, frames: int) -> torch.Tensor:
        """Fresh noise ``[B, F, C, h, w]`` for re-noising between two denoising calls."""
        b, _, *rest = self.shape
        return torch.randn((b * frames, *rest), generator=self.generator, dtype=torch.float32).unflatten(0, (b, frames))

    def state(self) -> torch.Tensor | None:
        """What a shot boundary must keep to go on: the official generator's state (None per shot)."""
        return self.generator.get_state() if self.mode == OFFICIAL else None

    def resume(self, state: torch.Tensor | None) -> None:
        if self.mode == OFFICIAL:
            self.generator.set_state(state)
