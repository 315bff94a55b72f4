"""Rolling Forcing's joint-window rollout (pipeline/rolling_windows.py) and its cache (memory/rolling_forcing.py):
the windows, per-frame timesteps, re-noising draws and context passes, what each call attends at which positions,
and what the mode refuses. Parity with the official code: tests/test_parity_rolling_forcing.py (slow)."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory.frame_cache import CacheLengthError
from echo_forcing.memory.presets import make_policy
from echo_forcing.memory.rolling_forcing import RollingForcingCacheConfig
from echo_forcing.models import BlockCall, CausalWan, FlowMatchSchedule
from echo_forcing.pipeline import RolloutInputError, RolloutScene, RolloutSettings, rollout

STEPS = (1000, 800, 600, 400, 200)
GRID = (2, 3)


class _Recorder(CausalWan):
    """Predicts zero flow (so x0 = x_t) and records every call."""

    def __init__(self, dit):
        super().__init__(dit)
        self.calls = []

    def __call__(self, latents, timesteps, text, memories, call):
        self.calls.append((call, latents.clone(), timesteps.clone(), text))
        for memory in memories:  # the cache sees every call, as with the real forward
            memory.update(*(torch.zeros(latents.shape[0], call.num_frames * call.frame_tokens, 2, 128),) * 3, call)
        return torch.zeros_like(latents)


def _text(model, value=0.0):
    return model.encode_text(torch.full((1, 4, model.config.text_dim), value))


def test_windows_timesteps_noise_draws_and_context_passes(tiny_dit):
    model = _Recorder(tiny_dit)
    blocks, k = 7, len(STEPS)
    settings = RolloutSettings(num_frames=3 * blocks, height=32, width=48, seed=11, steps=STEPS)
    result = rollout(model, _text(model), settings, make_policy("rolling-forcing"))
    schedule = FlowMatchSchedule(5.0)
    ts = schedule.denoising_timesteps(STEPS)
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(1, 3 * blocks, 16, 4, 6, generator=gen)
    noisy, calls, final = {}, iter(model.calls), {}
    for w in range(blocks + k - 1):
        oldest, newest = max(0, w - k + 1), min(blocks - 1, w)
        if w < blocks:
            noisy[w] = noise[:, 3 * w:3 * w + 3]
        call, x, t, _ = next(calls)
        assert (call.start_frame, call.num_frames, call.context_pass) == (3 * oldest, 3 * (newest - oldest + 1), False)
        want_t = torch.cat([torch.full((1, 3), float(ts[w - i])) for i in range(oldest, newest + 1)], dim=1)
        assert torch.equal(t, want_t)
        assert torch.allclose(x, torch.cat([noisy[i] for i in range(oldest, newest + 1)], dim=1), atol=1e-6)
        for i in range(oldest, newest + 1):
            if w - i == k - 1:
                final[i] = x[:, 3 * (i - oldest):3 * (i - oldest) + 3]
                continue
            eps = torch.randn((newest - oldest + 1) * 3, 16, 4, 6, generator=gen).unsqueeze(0)
            rows = slice(3 * (i - oldest), 3 * (i - oldest) + 3)
            noisy[i] = schedule.add_noise(x[:, rows], eps[:, rows], ts[w - i + 1])
        if w < blocks + k - 2:
            call, x, t, _ = next(calls)
            assert (call.start_frame, call.num_frames, call.context_pass) == (3 * oldest, 3, True)
            assert torch.equal(t, torch.zeros(1, 3)) and torch.allclose(x, (final.get(oldest, x)), atol=1e-6)
    assert next(calls, None) is None and len(model.calls) == 2 * (blocks + k - 1) - 1
    for i in range(blocks):  # a block's output is its estimate at its last step, as the window's oldest block
        assert torch.allclose(result.latents[:, 3 * i:3 * i + 3], final[i], atol=1e-6)
    assert len(result.block_reports) == blocks and result.end is None


def test_a_short_video_takes_every_step_once_per_block(tiny_dit):
    """Fewer blocks than steps: every block still goes 1000 -> ... -> 200 once (the official code repeats its
    first windows there)."""
    model = _Recorder(tiny_dit)
    rollout(model, _text(model), RolloutSettings(num_frames=6, height=32, width=48, steps=STEPS),
            make_policy("rolling-forcing"))
    ts = [float(t) for t in FlowMatchSchedule(5.0).denoising_timesteps(STEPS)]
    seen = {0: [], 1: []}
    for call, _, t, _ in model.calls:
        if not call.context_pass:
            for j in range(call.num_frames // 3):
                seen[call.start_frame // 3 + j].append(float(t[0, 3 * j]))
    assert seen == {0: ts, 1: ts}


def test_the_window_text_is_the_newest_blocks_and_the_context_pass_text_its_own(tiny_dit):
    model = _Recorder(tiny_dit)
    a, b = _text(model, 0.0), _text(model, 1.0)
    scenes = [RolloutScene(a, 3, "a"), RolloutScene(b, 3, "b")]
    result = rollout(model, scenes, RolloutSettings(num_frames=18, height=32, width=48, steps=STEPS),
                     make_policy("rolling-forcing"))
    for call, _, _, text in model.calls:
        first, last = call.start_frame // 3, (call.end_frame - 1) // 3
        assert text is ((b if last >= 3 else a) if not call.context_pass else (b if first >= 3 else a))
    assert [s["scene"] for s in result.switches] == [1] and result.shots_done == 2


def _cache_window(cache, start, frames, context):
    call = BlockCall(start, frames, 0.0 if context else 1000.0, context, GRID)
    k = torch.full((1, frames * 6, 2, 128), float(start))
    return cache.update(k, k, k.clone(), call)


def test_what_each_call_attends_and_at_which_positions():
    layer = make_policy("rolling-forcing").create(1).layers[0]
    blocks, k = 12, 5
    for w in range(blocks + k - 1):
        oldest, newest = max(0, w - k + 1), min(blocks - 1, w)
        n = newest - oldest + 1
        window = _cache_window(layer, 3 * oldest, 3 * n, False)
        s = oldest
        if s == 0:
            assert window.k_time.tolist() == list(range(3 * n))
        else:
            cached = min(s - 1, (21 - 3 - 3 * n) // 3) * 3
            sink, before = 3 * s - cached - 3, 3 * s - cached
            want = [*range(sink, sink + 3), *range(before, 3 * s), *range(3 * s, 3 * s + 3 * n)]
            assert window.k_time.tolist() == want, (w, window.k_time.tolist())
            assert window.k.shape[1] == 6 * len(want) <= 6 * 21
        assert window.q_time.tolist() == list(range(3 * s, 3 * s + 3 * n))
        window = _cache_window(layer, 3 * s, 3, True)
        end = 3 * s + 3
        assert window.k_time.tolist() == list(range(max(0, end - 21), end)), (w, window.k_time.tolist())
    assert layer.local_end == 24 and layer.frame_pos[:3].tolist() == [0, 1, 2]  # the sink stayed
    assert layer.frame_pos[3:].tolist() == list(range(15, 36))


def test_what_the_mode_refuses(tiny_dit):
    model = CausalWan(tiny_dit)
    text = _text(model)
    base = {"num_frames": 6, "height": 32, "width": 48, "steps": STEPS}
    policy = make_policy("rolling-forcing")
    with pytest.raises(RolloutInputError, match="use the official noise order"):
        rollout(model, text, RolloutSettings(**base, noise="per-shot"), policy)
    with pytest.raises(RolloutInputError, match="cannot start a shot from given frames"):
        rollout(model, [RolloutScene(text, 2, start=torch.zeros(1, 1, 16, 4, 6))], RolloutSettings(**base), policy)
    with pytest.raises(RolloutInputError, match="a separate first-block step list does not apply"):
        rollout(model, text, RolloutSettings(**base, first_block_steps=(1000, 500)), policy)
    with pytest.raises(CacheLengthError, match="7 blocks and the sink are 24 frames, over the 21-frame attention"):
        rollout(model, text, RolloutSettings(**{**base, "steps": (1000, 900, 800, 700, 600, 500, 400)}), policy)
    with pytest.raises(CacheLengthError, match="keeps 3-frame blocks"):
        rollout(model, text, RolloutSettings(**base, frames_per_block=1), policy)
    with pytest.raises(ValueError, match="cache_frames must"):
        RollingForcingCacheConfig(cache_frames=20)


def test_the_plan_takes_the_card_and_the_official_noise_and_refuses_what_cannot_work():
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding
    from echo_forcing.memory import PresetChoice
    from echo_forcing.models import WanConfig
    from echo_forcing.models.model_cards import by_name
    from echo_forcing.pipeline import SceneList
    from echo_forcing.pipeline.run_plan import plan_run

    shots = SceneList()
    for prompt, seconds in (("a fox in the snow", 3.0), ("a city at night", 2.0)):
        shots = shots.then(prompt, stand_in_text_embedding([prompt], 16), seconds, "hard cut")
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
    card = by_name("rolling-forcing")
    base = {"width": 48, "height": 32, "dtype": torch.float32, "choice": PresetChoice(preset=card.presets[0])}
    plan = plan_run(shots, cfg, card=card, **base)
    assert plan.settings.noise == "official" and plan.settings.steps == STEPS
    assert any(n.startswith("noise: official order (Rolling Forcing denoises") for n in plan.notes)
    with pytest.raises(RolloutInputError, match="cannot stop after a shot"):
        plan_run(shots, cfg, card=card, stop_after_shot=1, **base)
    with pytest.raises(CacheLengthError, match="over the 21-frame attention budget"):
        plan_run(shots, cfg, card=card, steps=7, **base)
    started = SceneList(tuple(__import__("dataclasses").replace(s, start=torch.zeros(1, 1, 16, 4, 6))
                              for s in shots.shots))
    with pytest.raises(RolloutInputError, match="cannot start a shot from given frames"):
        plan_run(started, cfg, card=card, **base)


def test_no_shot_boundary_is_offered_or_taken(tiny_dit):
    """A window spans shots: the run hands out no boundary, keeps no end state, and refuses to resume from one."""
    from echo_forcing.pipeline.shot_boundary import ShotBoundary

    model = CausalWan(tiny_dit)
    a, b = _text(model, 0.0), _text(model, 1.0)
    scenes = [RolloutScene(a, 2, "a"), RolloutScene(b, 2, "b")]
    run = RolloutSettings(num_frames=12, height=32, width=48, steps=STEPS)
    handed = []
    result = rollout(model, scenes, run, make_policy("rolling-forcing"), on_boundary=handed.append, keep_end=True,
                     stop_after=lambda shot: True)
    assert handed == [] and result.end is None and result.shots_done == 2 and result.latents.shape[1] == 12
    boundary = rollout(model, scenes, run, make_policy("self-forcing"), keep_end=True).end
    assert isinstance(boundary, ShotBoundary)
    with pytest.raises(RolloutInputError, match="cannot resume at a shot boundary"):
        rollout(model, scenes, run, make_policy("rolling-forcing"), resume_from=boundary)
