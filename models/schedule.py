"""Few-step flow-matching schedule of the causal Wan students.

The training table has 1000 entries: raw sigmas ``linspace(1, 0, 1001)[:-1]`` shifted by
``shift*s / (1 + (shift-1)*s)``, timestep = 1000 * sigma, built in float32 as the official code does.
With ``warp`` the requested step list ``1000, 750, 500, 250`` is read through that table at index
``1000 - step``, giving t = 1000, 937.5, 833.33, 625 at shift 5. The network predicts the flow
``v = noise - x0``; ``x0 = x_t - sigma_t * v`` is computed in float64, and between steps the block is
re-noised with fresh Gaussian noise: ``x = (1 - sigma_next) * x0 + sigma_next * eps``. A last step 0 (Krea
Realtime's list ends with one) reads the table's appended 0: the model is told timestep 0 while its sigma is the
nearest table entry's, 0.00498, for the re-noising before it and the clean estimate after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0


def evenly_spaced_steps(count: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """``count`` denoising steps spread evenly down from the top: 4 -> (1000, 750, 500, 250), Self-Forcing's list."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_train_timesteps:
        raise ValueError(f"the number of denoising steps must be an integer in 1..{num_train_timesteps}, got {count!r}")
    return tuple(round(num_train_timesteps * (count - i) / count) for i in range(count))


def steps_down_to_zero(count: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """``count`` steps from the top down to a final 0, as Krea Realtime lists them (``linspace`` in float32, then
    truncated): 5 -> (1000, 750, 500, 250, 0), 4 -> (1000, 666, 333, 0)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= num_train_timesteps:
        raise ValueError(f"a step list ending at 0 needs 2..{num_train_timesteps} steps, got {count!r}")
    return tuple(int(x) for x in torch.linspace(num_train_timesteps, 0, count, dtype=torch.float32).tolist())


class FlowMatchSchedule:
    """The timestep/sigma table and the few-step update rules."""

    def __init__(self, shift: float = DEFAULT_SHIFT, num_train_timesteps: int = 1000):
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        raw = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float32)[:-1]
        self.sigmas = self.shift * raw / (1 + (self.shift - 1) * raw)  # [1000] float32, 1.0 ... ~0.005
        self.timesteps = self.sigmas * num_train_timesteps

    def denoising_timesteps(self, steps: Sequence[int] = DEFAULT_STEPS, warp: bool = True) -> torch.Tensor:
        """The timesteps of the denoising calls, float32 ``[len(steps)]``."""
        steps = [int(s) for s in steps]
        if not steps:
            raise ValueError("the denoising step list is empty")
        bad = [s for i, s in enumerate(steps) if not (0 < s or (s == 0 and i == len(steps) - 1 and i > 0))
               or s > self.num_train_timesteps]
        if bad:
            raise ValueError(f"denoising steps must lie in 1..{self.num_train_timesteps} (the last may be 0, a final "
                             f"call at timestep 0 as Krea's), got {bad}")
        if any(a <= b for a, b in pairwise(steps)):
            raise ValueError(f"denoising steps must be strictly decreasing, got {steps}")
        if not warp:
            return torch.tensor(steps, dtype=torch.float32)
        table = torch.cat([self.timesteps, torch.zeros(1)])
        return table[[self.num_train_timesteps - s for s in steps]]

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Sigma of the nearest table timestep, float32, same shape as ``timesteps``."""
        flat = timesteps.reshape(-1).to(torch.float64).cpu()
        idx = (self.timesteps.to(torch.float64)[None, :] - flat[:, None]).abs().argmin(dim=1)
        return self.sigmas[idx].reshape(timesteps.shape)

    def x0_from_flow(self, flow: torch.Tensor, xt: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 = x_t - sigma_t * flow`` in float64; ``timesteps`` has one entry per leading index of ``flow``."""
        sigma = self.sigma(timesteps).to(device=flow.device, dtype=torch.float64)
        sigma = sigma.reshape(*sigma.shape, *([1] * (flow.dim() - sigma.dim())))
        return (xt.double() - sigma * flow.double()).to(flow.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Re-noise a clean prediction to ``timestep``: ``(1 - sigma) * x0 + sigma * noise`` (float32 sigma)."""
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(1)
        sigma = self.sigma(t).to(noise.device)
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)
