"""The flow-matching UniPC solver LongLive 2.0 samples each block with (in place of Self-Forcing's re-noising).

Wan2.2's ``FlowUniPCMultistepScheduler`` settings as LongLive 2.0 runs them: order 2, the ``bh2`` variant, the
model output turned into a clean estimate (``x0 = x - sigma * flow``), a first-order last step, final sigma 0, and
a fresh solver per block. It is deterministic: nothing is drawn between steps.

Schedule for ``n`` steps at shift ``s``: sigmas ``linspace(0.999, 0, n + 1)[:-1]`` shifted by
``s*x / (1 + (s-1)*x)`` then a final 0 (float32); the model is given the integer timesteps ``int(1000 * sigma)``
(999, 937, 833, 624 for 4 steps at shift 5) while the solver uses the unrounded sigmas. With
``alpha = 1 - sigma`` and ``lambda = log(alpha) - log(sigma)``, step ``i`` evaluates the model at ``x_i``
(``x_0`` the block's noise), takes ``m_i = x_i - sigma_i * flow_i``, corrects ``x_i`` with the new estimate (from
step 1 on; the UniC corrector of the order of the previous step), and predicts ``x_{i+1}`` (the UniP predictor of
order 1, then 2, and 1 again for the last step). The block's output is the last clean estimate ``m_{n-1}``
(what the predictor to sigma 0 gives as well).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

SIGMA_MAX = 0.999
ORDER = 2


def unipc_sigmas(steps: int, shift: float) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The float32 sigmas ``[steps + 1]`` (the last 0) and the integer timesteps the model is given."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of UniPC steps must be a positive integer, got {steps!r}")
    raw = np.linspace(SIGMA_MAX, 0.0, steps + 1)[:-1]
    shifted = shift * raw / (1 + (shift - 1) * raw)
    timesteps = tuple(int(t) for t in (shifted * 1000).astype(np.int64))
    return torch.from_numpy(np.concatenate([shifted, [0.0]]).astype(np.float32)), timesteps


def unipc_timesteps(steps: int, shift: float) -> tuple[int, ...]:
    """The timesteps the model is given for ``steps`` UniPC steps: 4 at shift 5 -> (999, 937, 833, 624)."""
    return unipc_sigmas(steps, shift)[1]


def solve_block(x: torch.Tensor, steps: int, shift: float,
                flow: Callable[[torch.Tensor, float], torch.Tensor],
                hold: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Denoise one block from its noise ``x`` (``[B, F, C, h, w]``) in ``steps`` UniPC steps; ``flow(x, t)`` is the
    model at the integer timestep ``t``; ``hold`` rewrites given frames after every update (a start latent held
    clean). Returns the last clean estimate."""
    sigmas, timesteps = unipc_sigmas(steps, shift)
    alphas = 1 - sigmas
    lambdas = torch.log(alphas) - torch.log(sigmas)  # +inf at the final sigma 0 (never used)
    estimates: list[torch.Tensor] = []
    previous: torch.Tensor | None = None  # the corrected sample the last predictor started from
    for i, t in enumerate(timesteps):
        x0 = x - sigmas[i] * flow(x, float(t))
        if hold is not None:
            x0 = hold(x0)
        if i > 0:
            x = _correct(x0, estimates, previous, sigmas, alphas, lambdas, i, order=1 if i == 1 else ORDER)
            if hold is not None:
                x = hold(x)
        estimates.append(x0)
        if i + 1 == steps:
            return x0
        previous = x
        x = _predict(x, estimates, sigmas, alphas, lambdas, i, order=min(ORDER, i + 1, steps - i))
        if hold is not None:
            x = hold(x)
    raise AssertionError("unreachable")


def _predict(x: torch.Tensor, estimates: list[torch.Tensor], sigmas, alphas, lambdas, i: int,
             order: int) -> torch.Tensor:
    """UniP (bh2): ``x_{i+1}`` from the corrected ``x_i`` and the estimates ``m_i`` (and ``m_{i-1}``)."""
    h = lambdas[i + 1] - lambdas[i]
    phi = torch.expm1(-h)
    out = (sigmas[i + 1] / sigmas[i]) * x - (alphas[i + 1] * phi) * estimates[i]
    if order == 2:
        r = (lambdas[i - 1] - lambdas[i]) / h
        out = out - alphas[i + 1] * phi * (0.5 * ((estimates[i - 1] - estimates[i]) / r))
    return out


def _correct(x0: torch.Tensor, estimates: list[torch.Tensor], previous: torch.Tensor, sigmas, alphas, lambdas,
             i: int, order: int) -> torch.Tensor:
    """UniC (bh2): ``x_i`` corrected with its own estimate ``x0`` (= ``m_i``), from the sample the last predictor
    started from and the earlier estimates."""
    h = lambdas[i] - lambdas[i - 1]
    hh = -h
    phi = torch.expm1(hh)
    base = (sigmas[i] / sigmas[i - 1]) * previous - (alphas[i] * phi) * estimates[i - 1]
    d1_t = x0 - estimates[i - 1]
    if order == 1:
        return base - alphas[i] * phi * (0.5 * d1_t)
    r = (lambdas[i - 2] - lambdas[i - 1]) / h
    d1 = (estimates[i - 2] - estimates[i - 1]) / r
    b1 = (phi / hh - 1) / phi
    b2 = 2 * ((phi / hh - 1) / hh - 0.5) / phi
    rhos = torch.linalg.solve(torch.stack([torch.stack([torch.ones(()), torch.ones(())]),
                                           torch.stack([r, torch.ones(())])]), torch.stack([b1, b2]))
    return base - alphas[i] * phi * (rhos[0] * d1 + rhos[1] * d1_t)
