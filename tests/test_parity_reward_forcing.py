"""Parity of the ``reward-forcing`` preset with the official Reward Forcing inference
(JaydenLyh/Reward-Forcing @ 4317f5a, "[fix] ema sink") on CPU, float32.

Golden fixtures in tests/fixtures/reward_forcing/ (its README says how they were made): the Self-Forcing
fixture's tiny weights, text embedding and seed, T = 18 latent frames, so the 9-frame cache rolls and its EMA
sink blends at blocks 3, 4 and 5 (frames 9..17). Two official runs: the released alpha 0.999 (all 18 frames)
and alpha 0.5 (frames 9..17; frames 0..8 equal the 0.999 run's bit for bit). Frames are stored at every
second row and column (one latent value of every 2x2 token) as 16-bit fixed point (error <= scale / 2 ~ 9e-5).

The issue's budget is max |ours - reference| <= 1e-3; we hold ourselves to 1e-5 beyond the quantisation bound,
which also tells the released alpha from a frozen sink (alpha 1 moves frames 9..17 by 2e-4..6.7e-4).
Measured on the development machine against the reference's full-precision latents (all 60x104 values):
2.4e-6 for both runs. The whole difference is the pack's RoPE, which rotates float32 keys in complex64 where
the reference rotates in complex128 (with a complex128 rotation both runs are bit-exact).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from echo_forcing_tests.parity_fixtures import TOLERANCE, tiny_reference

from echo_forcing.memory.presets import make_policy
from echo_forcing.pipeline import RolloutSettings, rollout

FIXTURES = Path(__file__).parent / "fixtures" / "reward_forcing"
REFERENCE_COMMIT = "4317f5a0d29d1cee6a0f2e80ed5f5724bee97c66"
EMA_FRAMES = slice(9, 18)
"""The frames of blocks 3..5: the blocks after the first roll, which attend to a blended sink."""

pytestmark = pytest.mark.slow  # two 18-frame rollouts: ~30 s on 2 cores


class Golden:
    def __init__(self, name: str):
        data = np.load(FIXTURES / name)
        self.scale = float(data["scale"])
        self.latents = torch.from_numpy(data["latents_q"].astype(np.float64) * self.scale)
        self.frames = data["frames"].tolist()
        self.stride = int(data["stride_hw"])
        self.alpha = float(data["ema_alpha"])
        self.seed = int(data["seed"])
        self.num_frames = int(data["num_frames"])
        self.commit = str(data["reference_commit"])
        self.data = data

    def select(self, latents: torch.Tensor) -> torch.Tensor:
        """The stored part of a full ``[1, T, 16, 60, 104]`` rollout."""
        return latents[:, self.frames, :, ::self.stride, ::self.stride]

    def max_diff(self, latents: torch.Tensor) -> float:
        return (self.select(latents).double() - self.latents).abs().max().item()


@pytest.fixture(scope="module")
def goldens() -> dict[float, Golden]:
    runs = {0.999: Golden("golden_ema_0999.npz"), 0.5: Golden("golden_ema_05.npz")}
    for alpha, golden in runs.items():
        assert golden.alpha == alpha and golden.commit == REFERENCE_COMMIT and golden.num_frames == 18
    return runs


@pytest.fixture(scope="module")
def rollouts(goldens) -> dict[float, torch.Tensor]:
    """The pack's latents with the preset's alpha and with alpha 0.5, from the Self-Forcing fixture's inputs."""
    model, text, seed = tiny_reference()
    assert all(golden.seed == seed for golden in goldens.values())
    settings = RolloutSettings(num_frames=18, height=480, width=832, seed=seed, noise="official")
    preset = make_policy("reward-forcing")
    assert preset.ema_alpha == 0.999 and (preset.local_attn_size, preset.sink_size) == (9, 3)
    return {alpha: rollout(model, text, settings, policy).latents
            for alpha, policy in ((0.999, preset), (0.5, make_policy("reward-forcing", ema_alpha=0.5)))}


def _assert_parity(ours: torch.Tensor, golden: Golden) -> float:
    diff = golden.max_diff(ours)
    bound = golden.scale / 2 + TOLERANCE
    assert diff <= bound, f"max |delta| {diff:.3e} exceeds {bound:.3e}"
    return diff


def test_the_golden_runs_show_the_ema_sink(goldens):
    """The fixture itself: the alpha only matters once the cache rolls, and then clearly (even 0.999)."""
    released, half = goldens[0.999], goldens[0.5]
    assert released.frames == list(range(18)) and half.frames == list(range(9, 18))
    by_frame = half.data["vs_ema_0999_maxdiff_per_frame"]
    assert np.all(by_frame[:9] == 0.0) and np.all(by_frame[9:] > 0.04)
    assert (released.latents[:, EMA_FRAMES] - half.latents).abs().amax(dim=(0, 2, 3, 4)).min() > 0.04
    frozen = released.data["frozen_sink_maxdiff_per_frame"]  # the official code with alpha 1 (sink never moves)
    assert np.all(frozen[:9] == 0.0) and np.all(frozen[9:] > released.scale / 2 + TOLERANCE)


def test_reward_forcing_preset_matches_the_official_code(rollouts, goldens):
    ours = rollouts[0.999]
    assert ours.shape == (1, 18, 16, 60, 104)
    _assert_parity(ours, goldens[0.999])


def test_ema_alpha_half_matches_the_official_code_and_moves_the_sink(rollouts, goldens):
    released, half = rollouts[0.999], rollouts[0.5]
    _assert_parity(half, goldens[0.5])
    assert torch.equal(half[:, :9], released[:, :9])  # before the first roll the alpha plays no part
    moved = (half[:, EMA_FRAMES] - released[:, EMA_FRAMES]).abs().amax(dim=(0, 2, 3, 4))
    assert moved.min() > 0.04, f"alpha 0.5 barely moves frames 9..17 ({moved.tolist()}): is the EMA applied?"
