"""Parity of the ``rolling-forcing`` preset (memory/rolling_forcing.py, pipeline/rolling_windows.py) with the
official Rolling Forcing inference (TencentARC/RollingForcing @ a1477d0) on CPU, float32.

Golden fixtures in tests/fixtures/rolling_forcing/ (its README says how they were made, with the official call
log): the Self-Forcing fixture's tiny weights, text embedding and seed, 5 steps (1000, 800, 600, 400, 200 warped
at shift 5), T = 30 (all frames) and T = 36 (frames 24..35): the start, steady-state and end windows, the cache
roll from block 8, the context pass without the sink from block 7, 40 and 52 re-noising draws in the official
order. Measured against the reference's full-precision latents (all 60x104 values): 2.2e-6 at T = 30, the pack's
complex64 RoPE as in the other parity tests.
"""

from __future__ import annotations

import pytest
from echo_forcing_tests.parity_fixtures import FIXTURES, assert_parity, load_golden, tiny_reference

from echo_forcing.memory.presets import make_policy
from echo_forcing.pipeline import RolloutSettings, rollout

GOLDEN = FIXTURES / "rolling_forcing"
REFERENCE_COMMIT = "a1477d09e85dc759a6a6728f55f77f59342ce388"
STEPS = (1000, 800, 600, 400, 200)

pytestmark = pytest.mark.slow  # 10 and 12 blocks of 15-frame windows: ~1-2 min each on 2 cores


@pytest.mark.parametrize("name, frames", [("golden_rolling_t30.npz", 30), ("golden_rolling_t36_tail.npz", 36)])
def test_rolling_forcing_matches_the_official_sampler(name, frames):
    golden, scale, data = load_golden(GOLDEN / name)
    assert str(data["reference_commit"]) == REFERENCE_COMMIT and int(data["num_frames"]) == frames
    model, text, seed = tiny_reference()
    assert int(data["seed"]) == seed
    settings = RolloutSettings(num_frames=frames, height=480, width=832, seed=seed, noise="official", steps=STEPS)
    latents = rollout(model, text, settings, make_policy("rolling-forcing")).latents
    stride = int(data["stride_hw"])
    assert_parity(latents[:, data["frames"].tolist(), :, ::stride, ::stride], golden, scale)
