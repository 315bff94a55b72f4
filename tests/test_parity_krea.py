"""Parity of Krea Realtime (the ``krea`` preset, memory/krea_realtime.py, with the step list ending at timestep 0)
with the official Krea Realtime session loop (krea-ai/realtime-video @ acf4b7b) on CPU, float32.

Golden fixtures in tests/fixtures/krea_realtime/ (its README says how they were made): the Self-Forcing fixture's
tiny weights, text embedding and seed, T = 15 latent frames (5 blocks), a 3-frame re-computed context with the
video's first frame kept (``keep_first_frame``), 5 steps (1000, 937.5, 833.3, 625, 0) and 4 steps (1000, 908.8,
714.0, 0). The two differ by 5..8 per frame, so the step list is pinned; every block after the first reads the
re-computed context. A third run adds the attention bias 0.3 of the release's remote code (the scope port's
semantics without its zero-padding bug): frames 3..14 move by 0.08..0.11.
"""

from __future__ import annotations

import pytest
from echo_forcing_tests.parity_fixtures import FIXTURES, assert_parity, load_golden, tiny_reference

from echo_forcing.memory.presets import make_policy
from echo_forcing.pipeline import RolloutSettings, rollout

GOLDEN = FIXTURES / "krea_realtime"
REFERENCE_COMMIT = "acf4b7b4e1a3049a0e04782e751d12203334038d"


@pytest.mark.parametrize("name, steps, bias", [("golden_krea_keep_first.npz", (1000, 750, 500, 250, 0), 1.0),
                                               ("golden_krea_4step.npz", (1000, 666, 333, 0), 1.0),
                                               ("golden_krea_bias03.npz", (1000, 750, 500, 250, 0), 0.3)])
def test_krea_matches_the_official_session_loop(name, steps, bias):
    golden, scale, data = load_golden(GOLDEN / name)
    assert str(data["reference_commit"]) == REFERENCE_COMMIT and bool(data["keep_first_frame"])
    assert int(data["kv_cache_num_frames"]) == 3 and float(data["kv_cache_attention_bias"]) == pytest.approx(bias)
    model, text, seed = tiny_reference()
    assert int(data["seed"]) == seed
    settings = RolloutSettings(num_frames=int(data["num_frames"]), height=480, width=832, seed=seed,
                               noise="official", steps=steps)
    latents = rollout(model, text, settings, make_policy("krea", attention_bias=bias)).latents
    stride = int(data["stride_hw"])
    assert_parity(latents[:, data["frames"].tolist(), :, ::stride, ::stride], golden, scale)
