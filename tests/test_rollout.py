"""The block-wise rollout: RNG draw order, call sequence, events, cancel, and input validation."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory import CacheLengthError, SelfForcingCacheConfig
from echo_forcing.models import CausalWan, FlowMatchSchedule
from echo_forcing.pipeline import (
    RolloutInputError,
    RolloutScene,
    RolloutSettings,
    from_comfy_latent,
    rollout,
    to_comfy_latent,
    video_frames,
)
from echo_forcing.pipeline.latents import WAN21_LATENT_MEAN, WAN21_LATENT_STD


class _Recorder(CausalWan):
    """A CausalWan whose forward predicts zero flow (so x0 = x_t) and records every call."""

    def __init__(self, dit):
        super().__init__(dit)
        self.calls = []

    def __call__(self, latents, timesteps, text, memories, call):
        self.calls.append((call, latents.clone(), timesteps.clone()))
        return torch.zeros_like(latents)


def _text(model, batch=1):
    return model.encode_text(torch.zeros(batch, 4, model.config.text_dim))


def test_rng_draw_order_and_call_sequence(tiny_dit):
    model = _Recorder(tiny_dit)
    settings = RolloutSettings(num_frames=6, height=32, width=48, seed=123)
    result = rollout(model, _text(model), settings, SelfForcingCacheConfig())

    gen = torch.Generator().manual_seed(123)
    noise = torch.randn(1, 6, 16, 4, 6, generator=gen)
    ts = FlowMatchSchedule(5.0).denoising_timesteps()
    sigmas = FlowMatchSchedule(5.0).sigma(ts)
    expected_blocks = []
    for block in range(2):
        x = noise[:, 3 * block:3 * block + 3]
        inputs = [x]
        for i in range(3):
            eps = torch.randn(3, 16, 4, 6, generator=gen).unsqueeze(0)
            x = ((1 - sigmas[i + 1]) * x + sigmas[i + 1] * eps)
            inputs.append(x)
        expected_blocks.append(inputs)

    assert len(model.calls) == 10  # 4 denoising calls + 1 context pass per block
    for block in range(2):
        calls = model.calls[5 * block:5 * block + 5]
        assert [c.timestep for c, _, _ in calls] == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-3)
        assert [c.context_pass for c, _, _ in calls] == [False] * 4 + [True]
        assert all(c.start_frame == 3 * block and c.grid == (2, 3) for c, _, _ in calls)
        for (_, x_in, t), x_expected in zip(calls[:4], expected_blocks[block], strict=True):
            assert torch.allclose(x_in, x_expected, atol=1e-6)
            assert t.shape == (1, 3)
        # the context pass sees the block's final x0, which is also the output
        assert torch.allclose(calls[4][1], expected_blocks[block][3], atol=1e-6)
        assert torch.allclose(result.latents[:, 3 * block:3 * block + 3], expected_blocks[block][3], atol=1e-6)


def test_same_seed_same_video_and_other_seed_differs(tiny_dit):
    model = CausalWan(tiny_dit)
    text = model.encode_text(torch.randn(1, 5, model.config.text_dim, generator=torch.Generator().manual_seed(0)))

    def run(seed):
        settings = RolloutSettings(num_frames=3, height=32, width=32, seed=seed)
        return rollout(model, text, settings, SelfForcingCacheConfig()).latents

    a, b, c = run(2**64 - 1), run(2**64 - 1), run(0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_events_report_every_block_in_order(tiny_dit):
    model = CausalWan(tiny_dit)
    events = []
    result = rollout(model, _text(model), RolloutSettings(num_frames=9, height=32, width=32),
                     SelfForcingCacheConfig(), on_block=events.append)
    assert [(e.index, e.total, e.start_frame) for e in events] == [(0, 3, 0), (1, 3, 3), (2, 3, 6)]
    for e in events:
        assert torch.equal(e.latents, result.latents[:, e.start_frame:e.start_frame + 3])
    assert len(result.block_seconds) == 3 and result.cache_bytes > 0


def test_interrupt_stops_between_blocks(tiny_dit):
    model = _Recorder(tiny_dit)
    seen = []

    class Cancelled(Exception):
        pass

    def interrupt():
        if len(seen) == 2:
            raise Cancelled
        seen.append(len(model.calls))

    with pytest.raises(Cancelled):
        rollout(model, _text(model), RolloutSettings(num_frames=12, height=32, width=32), SelfForcingCacheConfig(),
                interrupt=interrupt)
    assert len(model.calls) == 10  # two whole blocks, nothing of the third


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 850}, "multiple of 16.*nearest valid: 848"),
    ({"height": 8}, "multiple of 16"),
    ({"height": 0}, "multiple of 16"),
    ({"num_frames": 0}, "at least one block"),
    ({"num_frames": 7}, "multiple of the block size 3; use 9"),
    ({"seed": -1}, "0..2\\^64-1"),
    ({"seed": 2**64}, "0..2\\^64-1"),
    ({"seed": True}, "integer"),
    ({"seed": 1.5}, "integer"),
    ({"steps": (250, 500)}, "decreasing"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings_are_refused_with_a_clear_message(kwargs, match):
    base = {"num_frames": 3, "height": 32, "width": 32}
    with pytest.raises(RolloutInputError, match=match):
        RolloutSettings(**{**base, **kwargs})


def test_impossible_requests_fail_before_any_forward(tiny_dit):
    model = _Recorder(tiny_dit)
    with pytest.raises(CacheLengthError):
        rollout(model, _text(model), RolloutSettings(num_frames=24, height=32, width=32), SelfForcingCacheConfig())
    with pytest.raises(RolloutInputError, match="batch"):
        rollout(model, _text(model, batch=2), RolloutSettings(num_frames=3, height=32, width=32),
                SelfForcingCacheConfig())
    assert model.calls == []


def test_comfy_latent_round_trip_and_layout():
    z = torch.randn(2, 5, 16, 3, 4)
    raw = to_comfy_latent(z)
    assert raw.shape == (2, 16, 5, 3, 4)
    expected = z[1, 2, 7, 1, 3].item() * WAN21_LATENT_STD[7] + WAN21_LATENT_MEAN[7]
    assert raw[1, 7, 2, 1, 3].item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(from_comfy_latent(raw), z, atol=1e-5)
    with pytest.raises(ValueError):
        to_comfy_latent(torch.zeros(1, 16, 5, 3, 4))
    with pytest.raises(ValueError):
        from_comfy_latent(torch.zeros(1, 5, 16, 3, 4))
    assert [video_frames(t) for t in (0, 1, 21, 240)] == [0, 1, 81, 957]


def test_the_first_denoised_block_can_have_its_own_steps(tiny_dit):
    """Causal Forcing++: four steps for the first block the video denoises, then fewer; the step noise follows
    the calls (one draw between two calls). With a start latent the first denoised block is the one after it."""
    model = _Recorder(tiny_dit)
    settings = RolloutSettings(num_frames=9, height=32, width=48, seed=5, steps=(1000, 500),
                               first_block_steps=(1000, 750, 500, 250))
    rollout(model, _text(model), settings, SelfForcingCacheConfig())
    per_block = [[c.timestep for c, _, _ in model.calls if c.start_frame == 3 * b] for b in range(3)]
    assert per_block[0] == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-3)
    assert per_block[1] == per_block[2] == pytest.approx([1000.0, 833.3333, 0.0], abs=1e-3)

    model.calls.clear()
    start = torch.zeros(1, 3, 16, 4, 6)
    scene = RolloutScene(_text(model), 3, start=start)
    rollout(model, [scene], settings, SelfForcingCacheConfig())
    per_block = [[c.timestep for c, _, _ in model.calls if c.start_frame == 3 * b] for b in range(3)]
    assert per_block[0] == [0.0] and len(per_block[1]) == 5 and len(per_block[2]) == 3
    with pytest.raises(RolloutInputError, match="strictly decreasing"):
        RolloutSettings(num_frames=3, first_block_steps=(500, 1000))


def test_frame_wise_blocks_run_with_the_self_forcing_cache(tiny_dit):
    """Frame-wise students (Causal Forcing): one latent frame per block, each denoised then written by its clean
    pass."""
    model = _Recorder(tiny_dit)
    result = rollout(model, _text(model), RolloutSettings(num_frames=4, height=32, width=48, frames_per_block=1),
                     SelfForcingCacheConfig())
    assert result.latents.shape[1] == 4 and len(model.calls) == 4 * 5
    assert [c.start_frame for c, _, _ in model.calls[::5]] == [0, 1, 2, 3]
    assert all(c.num_frames == 1 for c, _, _ in model.calls)
