"""Parity with the official Causal Forcing inference (thu-ml/Causal-Forcing @ 1fc7bbc) on CPU, float32.

Golden fixtures in tests/fixtures/causal_forcing/ (see its README for how they were produced). They reuse the
Self-Forcing fixture's tiny weights, text embedding and seed (tests/fixtures/self_forcing/), with the real 30x52
token grid per latent frame and T = 6 latent frames:

* frame-wise Causal Forcing: 1 frame per block, steps [1000, 750, 500, 250] for every block;
* Causal Forcing++ 2-step: 1 frame per block, steps [1000, 750, 500, 250] for block 0, then [1000, 500];
* Causal Forcing++ 2-step image-to-video: a 1-frame ``initial_latent`` (a random latent from the fixture's
  ``initial_latent_seed``) as frame 0, then 5 generated frames, [1000, 750, 500, 250] for frame 1 (the first
  denoised block), [1000, 500] after.

The text-to-video runs draw the whole initial noise [1, 6, 16, 60, 104] first and then one [1, 16, 60, 104] draw
per non-final step of every frame, which is the pack's ``noise="official"`` order with ``frames_per_block=1``. The
image-to-video run draws noise [1, 5, 16, 60, 104] for the generated frames only and no step noise for the given
frame, which is what that order does for frames given by a start latent.
Outputs are stored as 16-bit fixed point with step ``scale`` (error <= scale / 2 ~ 1e-4). The issue's budget is
max |ours - reference| <= 1e-3; we hold ourselves to 1e-5 beyond the quantisation bound. Measured against the
reference's full-precision latents on the development machine (2-core x86 CPU, torch 2.13.0+cpu): 2.5e-6
(frame-wise), 2.4e-6 (Causal Forcing++) and 2.4e-6 (image-to-video), float32 rounding of the same arithmetic done
in another order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from echo_forcing_tests.parity_fixtures import assert_parity, load_golden, tiny_reference

from echo_forcing.memory import SelfForcingCacheConfig
from echo_forcing.models import FlowMatchSchedule
from echo_forcing.pipeline import RolloutScene, RolloutSettings, rollout

FIXTURES = Path(__file__).parent / "fixtures" / "causal_forcing"
"""Allowed |ours - reference| on top of the fixture's quantisation error (issue budget: 1e-3)."""
FOUR_STEPS = (1000, 750, 500, 250)
TWO_STEPS = (1000, 500)


def _golden(name: str) -> tuple[torch.Tensor, float, np.lib.npyio.NpzFile]:
    return load_golden(FIXTURES / name)


@pytest.fixture(scope="module")
def reference_setup():
    return tiny_reference()


_assert_parity = assert_parity


def _frame_wise(seed: int, **steps) -> RolloutSettings:
    return RolloutSettings(num_frames=6, height=480, width=832, seed=seed, frames_per_block=1, noise="official",
                           **steps)


def test_step_lists_match_the_reference_bit_for_bit():
    sched = FlowMatchSchedule(5.0)
    framewise = np.load(FIXTURES / "golden_framewise_4step.npz")
    plus = np.load(FIXTURES / "golden_cfpp_2step.npz")
    assert np.array_equal(sched.denoising_timesteps(FOUR_STEPS).numpy(), framewise["denoising_step_list"])
    assert np.array_equal(sched.denoising_timesteps(FOUR_STEPS).numpy(), plus["denoising_step_list_first_chunk"])
    assert np.array_equal(sched.denoising_timesteps(TWO_STEPS).numpy(), plus["denoising_step_list"])
    i2v = np.load(FIXTURES / "golden_i2v_cfpp_2step.npz")
    assert np.array_equal(sched.denoising_timesteps(FOUR_STEPS).numpy(), i2v["denoising_step_list_first_chunk"])
    assert np.array_equal(sched.denoising_timesteps(TWO_STEPS).numpy(), i2v["denoising_step_list"])


def test_frame_wise_4_steps_matches_causal_forcing(reference_setup):
    model, text, seed = reference_setup
    golden, scale, _ = _golden("golden_framewise_4step.npz")
    ours = rollout(model, text, _frame_wise(seed, steps=FOUR_STEPS), SelfForcingCacheConfig()).latents
    assert ours.shape == golden.shape == (1, 6, 16, 60, 104)
    _assert_parity(ours, golden, scale)


def test_causal_forcing_pp_2_steps_matches_causal_forcing(reference_setup):
    model, text, seed = reference_setup
    golden, scale, data = _golden("golden_cfpp_2step.npz")  # frames 1..5: the blocks with 2 steps
    first, first_scale, _ = _golden("golden_framewise_4step.npz")
    settings = _frame_wise(seed, steps=TWO_STEPS, first_block_steps=FOUR_STEPS)
    ours = rollout(model, text, settings, SelfForcingCacheConfig()).latents
    assert ours.shape == (1, 6, 16, 60, 104) and golden.shape == (1, 5, 16, 60, 104)
    _assert_parity(ours[:, 1:], golden, scale)
    # Frame 0 (4 steps, the same noise and step draws) was bit-identical to the frame-wise run's in the reference.
    assert float(data["frame0_equals_framewise_maxdiff"]) == 0.0
    _assert_parity(ours[:, :1], first[:, :1], first_scale)


def _initial_latent(data: np.lib.npyio.NpzFile) -> torch.Tensor:
    """The image-to-video run's given frame: float32 [1, 1, 16, 60, 104] from a fresh CPU generator."""
    generator = torch.Generator(device="cpu").manual_seed(int(data["initial_latent_seed"]))
    latent = torch.randn([1, 1, 16, 60, 104], generator=generator, dtype=torch.float32)
    assert latent.double().sum().item() == pytest.approx(float(data["initial_latent_sum"]), abs=1e-9)
    return latent


def test_i2v_causal_forcing_pp_2_steps_matches_causal_forcing(reference_setup):
    model, text, seed = reference_setup
    golden, scale, data = _golden("golden_i2v_cfpp_2step.npz")  # frames 1..5: the generated ones
    image = _initial_latent(data)
    settings = _frame_wise(seed, steps=TWO_STEPS, first_block_steps=FOUR_STEPS)
    ours = rollout(model, [RolloutScene(text, settings.num_blocks, start=image)], settings,
                   SelfForcingCacheConfig()).latents
    assert ours.shape == (1, 6, 16, 60, 104) and golden.shape == (1, 5, 16, 60, 104)
    assert torch.equal(ours[:, :1], image)  # the given frame is passed through, as the official output[:, :1]
    _assert_parity(ours[:, 1:], golden, scale)
