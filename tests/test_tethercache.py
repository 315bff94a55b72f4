"""The TetherCache preset (GRAB, TAME, its sink / memory / recent layout) and the unified relative RoPE option:
layout and positions block by block, the scoring and editing formulas against their written-out definitions,
validation, bounded memory and end-to-end runs. Parity with the TetherCache code: test_parity_tethercache.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echo_forcing.memory import PresetChoice, make_policy
from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.footprint import memory_footprint
from echo_forcing.memory.frame_cache import CacheLengthError
from echo_forcing.memory.longlive import LongLiveCacheConfig
from echo_forcing.memory.self_forcing import SelfForcingCacheConfig
from echo_forcing.memory.tethercache import (
    TetherCacheConfig,
    attention_mass,
    channel_stats,
    grab_keep,
    tame,
    temporal_diversity,
)
from echo_forcing.memory.unified_rope import newest_id, unified_slot_times
from echo_forcing.models import BlockCall, CausalWan, WanDiT
from echo_forcing.pipeline.rollout import RolloutScene, RolloutSettings, rollout

GRID = (1, 2)
P = 2
STEPS = (1000.0, 937.5, 833.33, 625.0)


def _tagged(start: int, frames: int, heads: int = 1, dim: int = 4, seed: int | None = None):
    """Keys whose channel 0 is the frame index (to read the layout back), the rest random."""
    gen = torch.Generator().manual_seed(seed if seed is not None else start)
    k = torch.randn(1, frames * P, heads, dim, generator=gen)
    k[0, :, :, 0] = torch.arange(start, start + frames, dtype=torch.float32).repeat_interleave(P)[:, None]
    return k


def _frames(window) -> list[int]:
    return window.k[0, ::P, 0, 0].round().long().tolist()


def _block(layers, start: int, seed: int = 0):
    """4 denoising calls and the context pass on every layer; layer 0's windows (copies)."""
    windows = []
    for t in (*STEPS, 0.0):
        out = []
        for i, layer in enumerate(layers):
            k = _tagged(start, 3, seed=seed + 97 * start + i + int(t))
            q = torch.randn(k.shape, generator=torch.Generator().manual_seed(start + 1000 * i))
            w = layer.update(q, k, -k, BlockCall(start, 3, t, t == 0.0, GRID))
            out.append(replace(w, k=w.k.clone(), v=w.v.clone()))
        windows.append(out[0])
    return windows


# --- layout --------------------------------------------------------------------------------------------------

def test_layout_block_by_block_sink_memory_recent_and_pending_frames():
    state = TetherCacheConfig(tau=0.0).create(2)  # TAME off: the keys keep their frame tags
    memory_before = None
    for b in range(14):
        s = 3 * b
        windows = _block(state.layers, s)
        layer = state.layers[0]
        for w in windows:
            assert w.k_time.tolist() == list(range(len(_frames(w))))
            assert w.q_time.tolist() == list(range(len(_frames(w)) - 3, len(_frames(w))))
        if s + 3 <= 21:  # warm-up: every frame so far, at its own position
            assert all(_frames(w) == list(range(s + 3)) for w in windows)
            assert layer.filled == (s + 3 == 21) and layer.memory_frames() == (list(range(3, 17)) if s == 18 else [])
        else:
            # the denoising calls: sink, the memory as it was, the newest frame before the block, the block;
            # the three frames before it (s-4..s-2) wait as pending frames and are not attended
            for w in windows[:4]:
                assert _frames(w) == [0, 1, 2, *memory_before, s - 1, s, s + 1, s + 2]
            memory = layer.memory_frames()
            assert len(memory) == 14 and memory == sorted(memory) and set(memory) <= set(range(3, s - 1))
            assert set(memory) - set(memory_before) <= {s - 4, s - 3, s - 2}  # only pending frames come in
            assert layer.last_admitted == len(set(memory) - set(memory_before))
            assert _frames(windows[4]) == [0, 1, 2, *memory, s - 1, s, s + 1, s + 2]  # admission before attention
            assert layer.last_scores.shape == (17,) and torch.isfinite(layer.last_scores).all()
        memory_before = state.layers[0].memory_frames()
    assert state.end_block(0, False, False).notes["memory_frames"] == memory_before


@pytest.mark.parametrize("tau", [0.0, 0.6])
def test_members_keep_their_keys_and_only_admitted_frames_are_edited(tau):
    state = TetherCacheConfig(budget_size=12, sink_size=3, recent_size=3, tau=tau).create(1)
    layer = state.layers[0]
    clean, held, edited = {}, {}, 0
    for b in range(12):
        s = 3 * b
        _block(state.layers, s)
        keys = _tagged(s, 3, seed=97 * s)  # what the context pass wrote for frames s..s+2
        clean.update({s + i: keys[:, i * P:(i + 1) * P] for i in range(3)})
        now = {f: layer.k[:, (3 + i) * P:(4 + i) * P].clone() for i, f in enumerate(layer.memory_frames())}
        for frame, k in now.items():
            if frame in held:  # a member kept from an earlier block is not edited again
                assert torch.equal(k, held[frame])
            elif tau == 0 or b == 3:  # no edit, or the memory seeded from the frames in place at the fill
                assert torch.equal(k, clean[frame])
            else:  # newly admitted: moved towards the sink and memory statistics
                assert not torch.allclose(k, clean[frame])
                edited += 1
        held = now
    assert edited > 0 if tau else edited == 0


def test_admitted_frame_is_tame_of_the_pending_keys_with_the_trusted_statistics():
    cfg = TetherCacheConfig(budget_size=9, sink_size=3, recent_size=3, tau=0.4)
    state = cfg.create(1)
    layer = state.layers[0]
    for b in range(3):
        _block(state.layers, 3 * b)
    s = 9
    for t in STEPS:  # the block's denoising calls: frames 6..8 wait as pending frames
        k = _tagged(s, 3, seed=5)
        layer.update(k, k, -k, BlockCall(s, 3, t, False, GRID))
    pending_k = layer.k[:, 9 * P:12 * P].clone()
    pending_v = layer.v[:, 9 * P:12 * P].clone()
    trusted_k = channel_stats(layer.k[:, :6 * P])  # sink 0..2 + memory 3..5 before the admission
    trusted_v = channel_stats(layer.v[:, :6 * P])
    k = _tagged(s, 3, seed=6)
    layer.update(k, k, -k, BlockCall(s, 3, 0.0, True, GRID))
    memory = layer.memory_frames()
    assert len(memory) == 3
    for slot, frame in enumerate(memory):
        if frame >= 6:
            i = frame - 6
            want_k = tame(pending_k[:, i * P:(i + 1) * P], trusted_k, 0.4)
            want_v = tame(pending_v[:, i * P:(i + 1) * P], trusted_v, 0.4)
            assert torch.equal(layer.k[:, (3 + slot) * P:(4 + slot) * P], want_k)
            assert torch.equal(layer.v[:, (3 + slot) * P:(4 + slot) * P], want_v)


# --- the formulas --------------------------------------------------------------------------------------------

def test_attention_mass_is_the_softmax_of_the_mean_logit_over_heads_queries_and_frame_tokens():
    gen = torch.Generator().manual_seed(3)
    b, n, h, d, c, p = 2, 30, 3, 16, 5, 7
    q = torch.randn(b, n, h, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(b, c * p, h, d, generator=gen, dtype=torch.float64)
    logits = torch.einsum("bnhd,bkhd->bhnk", q, keys) / math.sqrt(d)
    want = torch.softmax(logits.reshape(b, h, n, c, p).mean(dim=(1, 2, 4)) / 0.7, dim=-1)
    got = attention_mass(q, keys.reshape(b, c, p, h, d).mean(dim=2), 0.7)
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-6)


def test_temporal_diversity_and_grab_keep_written_out():
    frames = torch.tensor([0, 1, 10])
    mass = torch.tensor([[0.2, 0.3, 0.5]])
    sigma = 5.5  # extent 11 / 2
    sim = {(i, j): math.exp(-abs(int(frames[i]) - int(frames[j])) / sigma) for i in range(3) for j in range(3)}
    want = [max(0.0, 1 - max(sim[i, j] * float(mass[0, j]) for j in range(3) if j != i)) for i in range(3)]
    assert torch.allclose(temporal_diversity(frames, mass)[0], torch.tensor(want), atol=1e-7)
    assert temporal_diversity(torch.tensor([4, 4]), torch.tensor([[0.5, 0.5]])).tolist() == [[0.5, 0.5]]
    assert grab_keep(torch.tensor([0.1, 0.9, 0.3, 0.5]), 2) == [1, 3]  # the best two, in candidate order
    assert grab_keep(torch.tensor([0.1, 0.9]), 2) == [0, 1]


def test_tame_is_the_adain_blend_per_head_and_channel():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 12, 2, 4, generator=gen) * 3 + 1
    trusted = torch.randn(1, 40, 2, 4, generator=gen)
    stats = channel_stats(trusted)
    out = tame(x, stats, 0.35)
    mx, sx = x.mean(dim=(0, 1)), x.std(dim=(0, 1), unbiased=False)
    mt, st = trusted.mean(dim=(0, 1)), trusted.std(dim=(0, 1), unbiased=False)
    assert torch.allclose(out, 0.65 * x + 0.35 * (st * (x - mx) / sx + mt), atol=1e-5)
    assert torch.equal(tame(x, stats, 0.0), x)
    assert torch.allclose(tame(x, stats, 1.0).mean(dim=(0, 1)), mt, atol=1e-5)


# --- validation and memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "match"), [
    (lambda: TetherCacheConfig(sink_size=21), r"sink_size must lie in 0\.\.20"),
    (lambda: TetherCacheConfig(recent_size=19), r"recent_size must lie in 1\.\.18"),
    (lambda: TetherCacheConfig(tau=1.5), r"tau must lie in 0\.\.1"),
    (lambda: TetherCacheConfig(alpha=-0.1), "alpha must be >= 0"),
    (lambda: TetherCacheConfig(score_temperature=0), "score_temperature must be > 0"),
    (lambda: TetherCacheConfig(alpha=float("nan")), "alpha must be a finite number"),
    (lambda: TetherCacheConfig(rope="absolute"), "rope must be one of slot, unified"),
    (lambda: SelfForcingCacheConfig(rope="slot"), "rope must be one of absolute, unified"),
    (lambda: LongLiveCacheConfig(rope_frames=0), "rope_frames must be >= 1"),
    (lambda: make_policy("tethercache", gamma=1), "unknown TetherCacheConfig option"),
])
def test_bad_configs_name_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_check_length_needs_a_recent_window_that_holds_a_block_and_a_budget_of_whole_blocks():
    TetherCacheConfig().check_length(3 * 1000, 3)
    assert TetherCacheConfig().memory_size == 14
    with pytest.raises(CacheLengthError, match="recent_size >= 3"):
        TetherCacheConfig(recent_size=2).check_length(30, 3)
    with pytest.raises(CacheLengthError, match="use a multiple of 3"):
        TetherCacheConfig(budget_size=20).check_length(30, 3)


def test_memory_is_bounded_and_matches_the_footprint():
    sizes = []
    for blocks in (8, 30):
        state = TetherCacheConfig().create(1)
        for b in range(blocks):
            _block(state.layers, 3 * b)
        sizes.append(state.device_bytes)
    frame = P * 1 * 4 * 4
    assert sizes[0] == sizes[1] == 2 * (21 + 3) * frame  # budget + 3 slots for the pending frames
    assert memory_footprint(TetherCacheConfig(), 1, 1, 4, torch.float32, GRID).device_bytes == sizes[0]


# --- unified relative RoPE -----------------------------------------------------------------------------------

def test_newest_id_grows_to_the_trained_range_then_stays():
    assert [newest_id(f, 12) for f in (0, 11, 19, 20, 21, 500)] == [0, 11, 19, 20, 20, 20]
    assert newest_id(500, 30) == 29  # a window longer than the range keeps distinct ids
    assert unified_slot_times(12, 3, 40).tolist() == [0, 1, 2, *range(12, 21)]
    assert unified_slot_times(12, 3, 11).tolist() == list(range(12))
    assert unified_slot_times(21, 3, 80).tolist() == list(range(21))


@pytest.fixture(scope="module")
def model(tiny_state_dict):
    return CausalWan(WanDiT.from_state_dict(tiny_state_dict))


def _texts(model, n):
    gen = torch.Generator().manual_seed(5)
    return [model.encode_text(torch.randn(1, 4, model.config.text_dim, generator=gen)) for _ in range(n)]


def _run(model, policy, blocks, scenes=1):
    per = [blocks // scenes] * scenes
    per[-1] += blocks - sum(per)
    plan = [RolloutScene(t, n, f"shot {i}", None if i == 0 else "smooth") for i, (t, n) in
            enumerate(zip(_texts(model, scenes), per, strict=True))]
    return rollout(model, plan, RolloutSettings(num_frames=3 * blocks, height=32, width=32, seed=11), policy)


@pytest.mark.parametrize("policy", [
    SelfForcingCacheConfig(local_attn_size=21, sink_size=3, rope="unified"),
    LongLiveCacheConfig(rope="unified"),
    TetherCacheConfig(budget_size=12, sink_size=3, recent_size=3, rope="unified"),
], ids=["self-forcing", "longlive", "tethercache-12"])
def test_unified_positions_over_a_long_rollout(model, policy, recording):
    rec = recording(policy)
    _run(model, rec, blocks=40, scenes=3)  # 120 latent frames, two prompt switches (LongLive re-caches)
    newest_seen = []
    slot_ids = isinstance(policy, TetherCacheConfig)  # its memory frames are not contiguous in time
    for call, k_time, q_time, frames in rec.log:
        newest = call.end_frame - 1
        assert k_time[:3] == [0, 1, 2]  # the sink at 0..2
        assert max(k_time) == max(q_time) == min(newest, 20)  # the newest frame's id stops at 20
        assert k_time == sorted(k_time) and len(set(k_time)) == len(k_time)
        if call.num_frames == 3:
            assert q_time == k_time[-3:]  # queries where the block's own keys sit
        if newest < 21 and (not slot_ids or newest < 12):
            assert k_time == frames  # the absolute frame indices while the video is inside the range
        shift = {f - t for t, f in zip(k_time[3:], frames[3:], strict=True)}
        if slot_ids:
            assert k_time[3:] == list(range(max(k_time) - len(k_time) + 4, max(k_time) + 1))
        else:
            assert len(shift) <= 1  # every frame after the sink keeps its distance to the newest frame
        newest_seen.append(max(q_time))
    assert newest_seen[-1] == 20 and max(newest_seen) == 20


def test_unified_is_absolute_until_the_range_is_full_and_tethercache_21_is_its_own_recipe(model):
    absolute = _run(model, SelfForcingCacheConfig(local_attn_size=21), blocks=10).latents
    unified = _run(model, SelfForcingCacheConfig(local_attn_size=21, rope="unified"), blocks=10).latents
    assert torch.equal(absolute[:, :21], unified[:, :21])  # ids are the frame indices up to frame 20
    assert not torch.equal(absolute[:, 21:], unified[:, 21:])  # then the window moves back into 0..20
    slot = _run(model, TetherCacheConfig(), blocks=10).latents
    assert torch.equal(slot, _run(model, TetherCacheConfig(rope="unified"), blocks=10).latents)


def test_tethercache_preset_and_the_rope_option_of_the_config_node():
    assert isinstance(make_policy("tethercache"), TetherCacheConfig)
    assert PresetChoice("longlive", rope="unified").build().rope == "unified"
    assert PresetChoice("self-forcing", rope="unified").build().rope == "unified"
    assert PresetChoice("tethercache", rope="unified").build().rope == "unified"
    assert PresetChoice("tethercache").build() == TetherCacheConfig()
    assert PresetChoice("rolling-sink", rope="unified").ignored == ["rope"]
    assert PresetChoice("echo-forcing", rope="unified").ignored == ["rope"]
    assert PresetChoice("tethercache", compression="off").ignored == ["compression"]
    with pytest.raises(ConfigError, match="rope must be 'preset default' or one of unified"):
        PresetChoice("longlive", rope="absolute")
