"""The baseline cache presets (LongLive, Rolling Sink, Deep Forcing, Infinity-RoPE): slot contents and RoPE
positions block by block against the [verified] window strings of docs/BASELINES.md, the scene hooks,
validation, bounded memory, and end-to-end rollouts with the tiny model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.deep_forcing import DeepForcingCacheConfig
from echo_forcing.memory.footprint import memory_footprint
from echo_forcing.memory.frame_cache import CacheLengthError
from echo_forcing.memory.infinity_rope import InfinityRopeCacheConfig
from echo_forcing.memory.longlive import LongLiveCacheConfig
from echo_forcing.memory.rolling_sink import RollingSinkCacheConfig
from echo_forcing.memory.self_forcing import SelfForcingCacheConfig
from echo_forcing.memory.state import SceneInfo
from echo_forcing.models import BlockCall, CausalWan, WanDiT
from echo_forcing.pipeline.rollout import RolloutScene, RolloutSettings, rollout

GRID = (1, 2)
P = 2  # tokens per latent frame in the frame-level tests
STEPS = (1000.0, 937.5, 833.33, 625.0)
CLEAN = 0.0  # call tag of a context pass (channel 1 of the tagged keys)
RECACHE = 9.0  # call tag of a LongLive re-cache call


# --- frame-level driving: each token of frame f carries f in channel 0 and its call's tag in channel 1 --------

def _kv(start: int, frames: int, tag: float):
    k = torch.zeros(1, frames * P, 1, 2)
    k[0, :, 0, 0] = torch.arange(start, start + frames, dtype=torch.float32).repeat_interleave(P)
    k[0, :, 0, 1] = tag
    return k, -k


def _call(layer, start: int, frames: int, t: float, ctx: bool, tag: float):
    k, v = _kv(start, frames, tag)
    return _snapshot(layer.update(k, k, v, BlockCall(start, frames, t, ctx, GRID)))


def _snapshot(window):
    """A copy of the window as the attention saw it (the memory returns views of its buffers)."""
    return replace(window, k=window.k.clone(), v=window.v.clone())


def _call_all(layers, start: int, frames: int, t: float, ctx: bool, tag: float):
    """One call on every layer (as the DiT makes it); the window of layer 0."""
    windows = [_call(m, start, frames, t, ctx, tag) for m in layers]
    return windows[0]


def _block(layers, start: int):
    """The 4 denoising calls (tags 1..4) and the clean context pass (tag 0); the windows of layer 0."""
    windows = [_call_all(layers, start, 3, t, False, step + 1.0) for step, t in enumerate(STEPS)]
    windows.append(_call_all(layers, start, 3, 0.0, True, CLEAN))
    return windows


def _frames(window) -> list[int]:
    return window.k[0, ::P, 0, 0].round().long().tolist()


def _tags(window) -> list[float]:
    return window.k[0, ::P, 0, 1].tolist()


def _drive(state, scenes_blocks, on_block=None):
    """Drive a memory state like pipeline.rollout does (hooks, re-cache call, 5 calls per block)."""
    start, reports = 0, []
    for scene, blocks in enumerate(scenes_blocks):
        if scene:
            reports.append(state.start_scene(scene, start))
            n = min(state.recache_frames(scene), start)
            if n:
                window = _call_all(state.layers, start - n, n, 0.0, True, RECACHE)
                if on_block:
                    on_block("recache", start, [window])
        for b in range(blocks):
            state.begin_block(b == 0)
            windows = _block(state.layers, start)
            state.end_block(scene, b == 0, b == blocks - 1)
            if on_block:
                on_block(scene, start, windows)
            start += 3
    return reports


def _check_every_call(windows, frames, k_time, q_time):
    for w in windows:
        assert _frames(w) == frames
        assert w.k_time.tolist() == k_time
        assert w.q_time.tolist() == q_time


# --- LongLive (BASELINES §2) -----------------------------------------------------------------------------------

def test_longlive_rolls_with_an_absolute_sink_verified_s21():
    state = LongLiveCacheConfig().create(1)
    seen = {}

    def check(scene, s, windows):
        expected = list(range(s + 3)) if s + 3 <= 12 else [0, 1, 2, *range(s - 6, s + 3)]
        _check_every_call(windows, expected, expected, [s, s + 1, s + 2])
        seen[s] = windows[-1]

    _drive(state, [10], check)
    # [verified] s = 21: f0@0 f1@1 f2@2 f15@15 ... f23@23
    assert _frames(seen[21]) == [0, 1, 2, *range(15, 24)]
    assert seen[21].k_time.tolist() == [0, 1, 2, *range(15, 24)]
    assert _tags(seen[21]) == [CLEAN] * 12  # the context pass overwrote the block's noisy keys


def test_longlive_recache_at_t42_writes_only_frames_33_to_41():
    state = LongLiveCacheConfig().create(1)
    layer = state.layers[0]
    log, pointers = {}, {}

    def record(scene, s, windows):
        log.setdefault((scene, s), windows)
        pointers.setdefault((scene, s), (layer.local_end, layer.global_end))

    _drive(state, [14, 1], record)
    assert pointers[("recache", 42)] == (12, 42)  # a recompute call does not move the end pointers
    recache = log[("recache", 42)][0]
    # [verified] t = 42: window f0@0 f1@1 f2@2 f33@33 ... f41@41 (33..41 new), queries 30..41
    assert _frames(recache) == [0, 1, 2, *range(33, 42)]
    assert recache.k_time.tolist() == [0, 1, 2, *range(33, 42)]
    assert recache.q_time.tolist() == list(range(30, 42))
    assert _tags(recache) == [CLEAN] * 3 + [RECACHE] * 9  # the sink keeps the first prompt's encoding
    # next block: f0..f2, f36..f41 (re-cached), f42..f44
    first = log[(1, 42)][0]
    assert _frames(first) == [0, 1, 2, *range(36, 45)]
    assert _tags(first)[:9] == [CLEAN] * 3 + [RECACHE] * 6
    assert layer.local_end == 12 and layer.global_end == 45


@pytest.mark.parametrize("t", [9, 12])
def test_longlive_recache_in_the_first_12_frames_re_encodes_the_sink(t):
    state = LongLiveCacheConfig().create(1)
    log = {}
    _drive(state, [t // 3, 1], lambda scene, s, w: log.setdefault((scene, s), w))
    recache = log[("recache", t)][0]
    assert _frames(recache) == list(range(t)) and recache.k_time.tolist() == list(range(t))
    assert recache.q_time.tolist() == list(range(t))
    assert _tags(recache) == [RECACHE] * t
    assert state.layers[0].global_end == t + 3


def test_longlive_without_global_sink_makes_the_recached_frames_the_sink():
    state = LongLiveCacheConfig(global_sink=False).create(1)
    log = {}
    reports = _drive(state, [14, 3], lambda scene, s, w: log.setdefault((scene, s), w))
    assert reports == [{"scene": 1, "mode": "smooth", "recache_frames": 12, "global_sink": False}]
    recache = log[("recache", 42)][0]
    assert _frames(recache) == list(range(30, 42)) and recache.k_time.tolist() == list(range(30, 42))
    assert _tags(recache) == [RECACHE] * 12
    after = log[(1, 45)][0]  # two rolls later: new sink f30..f32 at 30..32
    assert _frames(after) == [30, 31, 32, *range(39, 48)]
    assert after.k_time.tolist() == [30, 31, 32, *range(39, 48)]


def test_longlive_partial_recache_without_global_sink_keeps_only_the_recached_frames():
    state = LongLiveCacheConfig(global_sink=False, recache_frames=6).create(1)
    log = {}
    _drive(state, [14, 1], lambda scene, s, w: log.setdefault((scene, s), w))
    recache = log[("recache", 42)][0]
    assert _frames(recache) == list(range(36, 42)) and _tags(recache) == [RECACHE] * 6  # no zeroed slots attended
    assert _frames(log[(1, 42)][0]) == [*range(36, 42), 42, 43, 44]


def test_longlive_sink_longer_than_a_block_still_takes_its_clean_keys():
    state = LongLiveCacheConfig(sink_size=6).create(1)
    log = {}
    _drive(state, [6], lambda scene, s, w: log.setdefault(s, w))
    assert _frames(log[15][-1]) == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    assert _tags(log[15][-1]) == [CLEAN] * 12  # the context pass of block 1 overwrote its sink slots


def test_longlive_without_recache_restarts_the_buffer():
    state = LongLiveCacheConfig(global_sink=False, recache_frames=0).create(1)
    log = {}
    _drive(state, [6, 2], lambda scene, s, w: log.setdefault((scene, s), w))
    assert _frames(log[(1, 18)][0]) == [18, 19, 20]
    assert _frames(log[(1, 21)][0]) == [18, 19, 20, 21, 22, 23]


# --- Rolling Sink (BASELINES §3) ------------------------------------------------------------------------------

def _rolling_sink_run(blocks: int):
    state = RollingSinkCacheConfig().create(1)
    log = {}

    def check(scene, s, windows):
        for w in windows:  # the window is the same in all 5 calls of a block (insertion is after attention)
            assert _frames(w) == _frames(windows[0])
        log[s] = windows[0]

    _drive(state, [blocks], check)
    return log


def test_rolling_sink_windows_verified_s24_s42():
    log = _rolling_sink_run(16)
    for s in range(0, 21, 3):  # blocks 0..6: plain
        assert _frames(log[s]) == list(range(s + 3)) and log[s].k_time.tolist() == list(range(s + 3))
    # [verified] s = 24: f6@6 ... f17@17 f17@18 f16@19 f15@20 f21@21 ... f26@26
    assert _frames(log[24]) == [*range(6, 18), 17, 16, 15, *range(21, 27)]
    assert log[24].k_time.tolist() == list(range(6, 27))
    # [verified] s = 42: f11@24 ... f0@35 f0@36 f1@37 f2@38 | f39 f40 f41 | f42..f44
    assert _frames(log[42]) == [*range(11, -1, -1), 0, 1, 2, 39, 40, 41, 42, 43, 44]
    assert log[42].k_time.tolist() == list(range(24, 45))
    for s in range(21, 48, 3):  # Sliding Indices: always contiguous s-18 .. s+2, queries s .. s+2
        assert log[s].k_time.tolist() == list(range(s - 18, s + 3))
        assert log[s].q_time.tolist() == [s, s + 1, s + 2]
        assert _frames(log[s])[15:] == list(range(s - 3, s + 3))  # previous block + current block
        assert _tags(log[s]) == [CLEAN] * 18 + [1.0] * 3  # pool frames are the clean context-pass keys


def test_rolling_sink_sink_slides_over_the_ping_pong_sequence_with_a_12_block_period():
    log = _rolling_sink_run(30)
    walk = [*range(17, -1, -1), *range(18)]  # 17, 16, ..., 0, 0, 1, ..., 17 (36 frames)
    for s in range(39, 90, 3):
        assert _frames(log[s])[:15] == [walk[(s - 36 + j) % 36] for j in range(15)], s
    assert _frames(log[51])[:15] == _frames(log[51 + 36])[:15]


# --- Deep Forcing (BASELINES §4) --------------------------------------------------------------------------------

D = 128  # real head dim: the RoPE split (22/21/21 complex channels) must be the real one
T_RE = 42  # real part of the slowest temporal channel: decodes a key's temporal position
W_RE = 86  # real part of the fastest width channel (1 rad per column): decodes a key's column
IMP = 44  # real part of the first height channel (row 0: never rotated): the importance of a key
THETA_T = 10000.0 ** (-42 / 44)


def _df_kv(start, frames, importance, extra=None):
    k = torch.zeros(1, frames * P, 1, D)
    v = torch.zeros(1, frames * P, 1, D)
    for i in range(frames):
        for c in range(P):
            j = i * P + c
            k[0, j, 0, T_RE] = 1.0
            k[0, j, 0, W_RE] = 1.0
            k[0, j, 0, IMP] = importance(start + i, c)
            for channel, value in (extra or {}).get((start + i, c), {}).items():
                k[0, j, 0, channel] = value
            v[0, j, 0, 0], v[0, j, 0, 1] = start + i, c
    return k, v


def _df_queries(frames, special=None):
    q = torch.zeros(1, frames * P, 1, D)
    q[..., IMP] = 1.0
    for (i, channel), value in (special or {}).items():
        q[0, i * P:(i + 1) * P, 0, channel] = value
    return q


def _df_block(layer, start, importance, q_special=None, k_extra=None):
    windows = []
    for step, t in enumerate((*STEPS, 0.0)):
        k, v = _df_kv(start, 3, importance, k_extra)
        q = _df_queries(3, (q_special or {}).get(step))
        windows.append(_snapshot(layer.update(q, k, v, BlockCall(start, 3, t, t == 0.0, GRID))))
    return windows


def _decode(window):
    """Per token: (source frame, column, temporal position, column rotation) from values and rotated keys."""
    k, v = window.k[0, :, 0].double(), window.v[0, :, 0]
    time = torch.atan2(k[:, T_RE + 1], k[:, T_RE]) / THETA_T
    col = torch.atan2(k[:, W_RE + 1], k[:, W_RE])
    return (v[:, 0].round().long().tolist(), v[:, 1].round().long().tolist(), time.round().long().tolist(),
            col.round().long().tolist())


TABLE = {12: 5, 13: 1, 14: 4, 15: 1, 16: 3, 17: 9, 18: 2, 19: 6}


def _table_importance(frame, col):
    return TABLE.get(frame, 0.0) - 0.5 * col


def test_deep_forcing_s12_b21_layout_and_selection():
    layer = DeepForcingCacheConfig().create(1).layers[0]
    log = {}
    for block in range(10):
        s = 3 * block
        log[s] = _df_block(layer, s, _table_importance)
        for w in log[s]:
            assert w.keys_rotated and w.k_time is None and w.q_time.tolist() == [s, s + 1, s + 2]
        if s < 21:  # appending: everything at its absolute position
            frames, cols, time, rot = _decode(log[s][0])
            assert frames == [f for f in range(s + 3) for _ in range(P)] and time == frames and rot == cols
            assert layer.compressions == 0
    assert layer.compressions == 3  # every block from s = 21 on
    for s in (21, 24, 27):
        for w in log[s]:
            assert w.k.shape[1] == 21 * P
        frames, cols, time, rot = _decode(log[s][0])
        # Deep Sink: frames 0..11 re-aligned to s-21 .. s-10
        assert frames[:24] == [f for f in range(12) for _ in range(P)]
        assert time[:24] == [s - 21 + f for f in range(12) for _ in range(P)]
        assert rot[:24] == cols[:24]
        # recent: the previous frame and the current block at their absolute positions
        assert frames[34:] == [f for f in range(s - 1, s + 3) for _ in range(P)] and time[34:] == frames[34:]
        # top-C: tokens keep their original temporal and spatial rotation
        assert time[24:34] == frames[24:34] and rot[24:34] == cols[24:34]
    # s = 21: the 10 best of frames 12..19 by the sum-of-queries score, in time order
    top = list(zip(*_decode(log[21][0])[:2], strict=True))[24:34]
    assert top == [(12, 0), (12, 1), (14, 0), (14, 1), (16, 0), (16, 1), (17, 0), (17, 1), (19, 0), (19, 1)]
    assert layer.uses[0, 24:34].tolist() == [3] * 10  # selected at s = 21, 24, 27
    assert layer.uses[0, 34:].tolist() == [0] * 8


def test_deep_forcing_scores_use_the_query_window_across_calls():
    layer = DeepForcingCacheConfig().create(1).layers[0]
    boost = {(20, 1): {IMP + 1: 1.0}, (21, 1): {IMP + 2: 1.0}}
    # block 21: its t=625 call (step 3) queries push channel IMP+2, the clean pass's last frame pushes IMP+1
    specials = {3: {(i, IMP + 2): 50.0 for i in range(3)}, 4: {(2, IMP + 1): 50.0}}
    for block in range(9):
        _df_block(layer, 3 * block, _table_importance, k_extra=boost,
                  q_special=specials if block == 7 else None)
    window = _df_block(layer, 24, _table_importance, k_extra=boost)[0]
    top = list(zip(*_decode(window)[:2], strict=True))[24:34]
    # the window at s = 24's first call = the clean pass's frame 23 + this call: (20, 1) wins, (21, 1) does not
    # (the t=625 queries have left the window); the weakest old token (16, 1) leaves
    assert top == [(12, 0), (12, 1), (14, 0), (14, 1), (16, 0), (17, 0), (17, 1), (19, 0), (19, 1), (20, 1)]


def test_deep_forcing_reuse_cap_retires_tokens():
    layer = DeepForcingCacheConfig(sink_frames=12, budget_frames=21, recent_frames=6).create(1).layers[0]

    def importance(frame, col):
        return 100.0 if frame in (12, 13, 14) else 1.0 + 0.01 * frame

    tops = {}
    for block in range(16):
        s = 3 * block
        window = _df_block(layer, s, importance)[0]
        if s >= 21:
            tops[s] = _decode(window)[0][24:30]
    for s in range(21, 40, 3):  # selected 7 times: s = 21 .. 39
        assert tops[s] == [12, 12, 13, 13, 14, 14], s
    assert tops[42] == [36, 36, 37, 37, 38, 38]  # retired; the frames that left the recent part win
    assert 12 not in tops[45]


@pytest.mark.parametrize("fusion", ["sum", "max"])
def test_deep_forcing_score_is_the_fused_query_dot_key_over_heads_and_channels(fusion):
    layer = DeepForcingCacheConfig(fusion=fusion).create(1).layers[0]
    layer.allocate(torch.zeros(1, P, 2, 4), GRID)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    layer._push_queries(queries.view(1, 4, 1, 4).expand(1, 4, 2, 4).clone())
    keys = torch.tensor([[3.0, 0, 0, 0], [1.0, 1.0, 0, 0]]).view(1, 2, 1, 4).expand(1, 2, 2, 4)
    # per query and key: sum over 2 heads; sum fusion: (q1 + q2) . k; max fusion: max over queries
    expected = [[6.0, 6.0], [6.0, 4.0]][fusion == "max"]
    assert layer.scores(keys)[0].tolist() == pytest.approx([e / (2 * math.sqrt(4)) for e in expected])


def test_deep_forcing_public_s10_b16_compresses_every_second_block():
    layer = DeepForcingCacheConfig(sink_frames=10, budget_frames=16, recent_frames=4).create(1).layers[0]
    sizes, sinks = {}, {}
    for block in range(14):
        s = 3 * block
        window = _df_block(layer, s, _table_importance)[0]
        sizes[s] = window.k.shape[1] // P
        sinks[s] = _decode(window)[2][:2 * 10:2]
    # [verified] s = 21: 16 frames, sink @5..14; s = 24 appends (19, sink unchanged); s = 27 sink @11..20;
    # s = 33 @17..26; s = 39 @23..32
    assert [sizes[s] for s in range(21, 42, 3)] == [16, 19, 16, 19, 16, 19, 16]
    for s, first in {21: 5, 24: 5, 27: 11, 30: 11, 33: 17, 39: 23}.items():
        assert sinks[s] == list(range(first, first + 10)), s
    frames, _, time, _ = _decode(_df_block(layer, 42, _table_importance)[0])
    assert frames[20:24] == time[20:24]  # 3120-token analogue: 2 frames' worth of top-C at their own positions


# --- Infinity-RoPE (BASELINES §5) --------------------------------------------------------------------------

def test_infinity_rope_slot_positions():
    state = InfinityRopeCacheConfig().create(1)

    def check(scene, s, windows):
        if s < 21:
            _check_every_call(windows, list(range(s + 3)), list(range(s + 3)), [s, s + 1, s + 2])
        else:  # [verified] steady state: slot positions 0..20, queries 18..20
            _check_every_call(windows, [0, *range(s - 17, s + 3)], list(range(21)), [18, 19, 20])

    _drive(state, [12], check)


def _ir_scenes(*entries_blocks):
    return [SceneInfo(f"scene {i}", blocks, entry) for i, (entry, blocks) in enumerate(entries_blocks)]


def test_infinity_rope_hard_cut_flushes_to_sink_and_last_frame_and_cuts_the_first_block():
    scenes = _ir_scenes((None, 9), ("hardcut", 2), ("smooth", 2))
    state = InfinityRopeCacheConfig().create(1, scenes)
    log = {}
    reports = _drive(state, [s.num_blocks for s in scenes], lambda scene, s, w: log.setdefault(s, w))
    assert reports[0] == {"scene": 1, "mode": "hardcut", "flushed_to": 2, "cut": True}
    assert reports[1] == {"scene": 2, "mode": "smooth", "flushed_to": None, "cut": False}
    # first block of the cut: sink f0 + the last frame f26, the block's keys and queries at 45..47 in all calls
    _check_every_call(log[27], [0, 26, 27, 28, 29], [0, 1, 45, 46, 47], [45, 46, 47])
    _check_every_call(log[30], [0, 26, *range(27, 33)], list(range(8)), [5, 6, 7])  # ordinary slots again
    _check_every_call(log[33], [0, 26, *range(27, 36)], list(range(11)), [8, 9, 10])  # smooth: no flush, no cut


def test_infinity_rope_code_options_reproduce_the_flush_quirks():
    config = InfinityRopeCacheConfig(flush_on="every", flush_keep_frames=2, slot_queries=False,
                                     flush_from="physical")
    scenes = _ir_scenes((None, 9), ("smooth", 3), ("hardcut", 2))
    state = config.create(1, scenes)
    log = {}
    reports = _drive(state, [9, 3, 2], lambda scene, s, w: log.setdefault(s, w))
    assert [r["flushed_to"] for r in reports] == [3, 3] and [r["cut"] for r in reports] == [False, True]
    # [verified] flush at s = 27 keeps f25, f26; queries stay at 18..20 while the block's keys sit at 3..5
    _check_every_call(log[27], [0, 25, 26, 27, 28, 29], list(range(6)), [18, 19, 20])
    # a cut at s = 36 copies the stale physical slots 19, 20 again: f25, f26, not f34, f35
    _check_every_call(log[36], [0, 25, 26, 36, 37, 38], [0, 1, 2, 45, 46, 47], [45, 46, 47])
    _check_every_call(log[39], [0, 25, 26, *range(36, 42)], list(range(9)), [18, 19, 20])


def test_infinity_rope_public_l6_cut_verified():
    config = InfinityRopeCacheConfig(local_attn_size=6, flush_on="every", flush_keep_frames=2, slot_queries=False)
    scenes = _ir_scenes((None, 11), ("hardcut", 2))
    state = config.create(1, scenes)
    log = {}
    _drive(state, [11, 2], lambda scene, s, w: log.setdefault(s, w))
    # [verified] L 6: f0@0 f31@1 f32@2 f33@45 f34@46 f35@47, queries 45..47; then f0@0 f34@1 f35@2 f36@3 ...
    _check_every_call(log[33], [0, 31, 32, 33, 34, 35], [0, 1, 2, 45, 46, 47], [45, 46, 47])
    _check_every_call(log[36], [0, 34, 35, 36, 37, 38], list(range(6)), [3, 4, 5])


def test_infinity_rope_flush_every_without_cut_keeps_positions_relative():
    scenes = _ir_scenes((None, 2), ("smooth", 2))
    state = InfinityRopeCacheConfig(flush_on="every").create(1, scenes)
    log = {}
    reports = _drive(state, [2, 2], lambda scene, s, w: log.setdefault(s, w))
    assert reports[0]["flushed_to"] == 2 and not reports[0]["cut"]
    _check_every_call(log[6], [0, 5, 6, 7, 8], list(range(5)), [2, 3, 4])


# --- validation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: LongLiveCacheConfig(sink_size=12), r"sink_size must lie in 0\.\.11"),
    (lambda: LongLiveCacheConfig(local_attn_size=0), "local_attn_size must be >= 1"),
    (lambda: LongLiveCacheConfig(recache_frames=13), r"recache_frames must lie in 0\.\.12"),
    (lambda: LongLiveCacheConfig(sink_size=True), "sink_size must be an integer"),
    (lambda: LongLiveCacheConfig(global_sink=1), "global_sink must be True or False"),
    (lambda: RollingSinkCacheConfig(budget_frames=6), "budget_frames must be >= 9"),
    (lambda: RollingSinkCacheConfig(budget_frames=20), "budget_frames must be a multiple of 3.*use 18 or 21"),
    (lambda: DeepForcingCacheConfig(budget_frames=22), r"budget_frames must lie in 1\.\.21"),
    (lambda: DeepForcingCacheConfig(sink_frames=18), r"sink_frames must lie in 0\.\.17"),
    (lambda: DeepForcingCacheConfig(reuse_cap=0), "reuse_cap must be >= 1"),
    (lambda: DeepForcingCacheConfig(fusion="mean"), "fusion must be one of sum, max"),
    (lambda: InfinityRopeCacheConfig(sink_size=21), r"sink_size must lie in 0\.\.20"),
    (lambda: InfinityRopeCacheConfig(flush_keep_frames=20), r"flush_keep_frames must lie in 0\.\.19"),
    (lambda: InfinityRopeCacheConfig(flush_on="always"), "flush_on must be one of hardcut, every"),
    (lambda: InfinityRopeCacheConfig(flush_from="slots"), "flush_from must be one of written, physical"),
    (lambda: InfinityRopeCacheConfig(cut_position=-1), "cut_position must be >= 0"),
])
def test_bad_configs_name_the_field_and_the_range(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_check_length_refuses_only_what_the_layout_cannot_hold():
    for config in (LongLiveCacheConfig(), RollingSinkCacheConfig(), DeepForcingCacheConfig(),
                   InfinityRopeCacheConfig()):
        config.check_length(3 * 1000, 3)  # bounded: any length
    with pytest.raises(CacheLengthError, match=r"sink_size must lie in 0\.\.9"):
        LongLiveCacheConfig(local_attn_size=12, sink_size=10).check_length(30, 3)
    with pytest.raises(CacheLengthError, match="frames_per_block must be 3"):
        RollingSinkCacheConfig().check_length(30, 4)
    with pytest.raises(CacheLengthError, match="recent_frames must hold at least one 3-frame block"):
        DeepForcingCacheConfig(sink_frames=12, recent_frames=2).check_length(30, 3)
    with pytest.raises(CacheLengthError, match="local_attn_size must be at least 6"):
        InfinityRopeCacheConfig(local_attn_size=5, flush_keep_frames=2).check_length(30, 3)


# --- bounded memory -------------------------------------------------------------------------------------------

POLICIES = [LongLiveCacheConfig(), RollingSinkCacheConfig(), DeepForcingCacheConfig(), InfinityRopeCacheConfig()]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: type(p).__name__)
def test_memory_is_bounded_and_matches_the_footprint(policy):
    heads, head_dim = 1, 128 if isinstance(policy, DeepForcingCacheConfig) else 2
    sizes = []
    for blocks in (8, 30):
        state = policy.create(1)
        for b in range(blocks):
            start = 3 * b
            for t in (*STEPS, 0.0):
                k = torch.randn(1, 3 * P, heads, head_dim)
                state.layers[0].update(k, k, k, BlockCall(start, 3, t, t == 0.0, GRID))
        sizes.append((state.device_bytes, state.storage_bytes))
    assert sizes[0] == sizes[1]
    footprint = memory_footprint(policy, 1, heads, head_dim, torch.float32, GRID)
    assert (footprint.device_bytes, footprint.storage_bytes) == sizes[0]
    frame = P * heads * head_dim * 4
    budget = {LongLiveCacheConfig: 12, RollingSinkCacheConfig: 21 + 18, DeepForcingCacheConfig: 21,
              InfinityRopeCacheConfig: 21}[type(policy)]
    assert sum(sizes[0]) >= 2 * budget * frame
    assert sum(sizes[0]) <= 2 * budget * frame + 5 * frame  # DF: + query window and token metadata
    assert sizes[0][1] == (2 * 18 * frame if isinstance(policy, RollingSinkCacheConfig) else 0)  # RS pool


# --- end to end with the tiny model -------------------------------------------------------------------------

def _texts(model, n):
    gen = torch.Generator().manual_seed(5)
    return [model.encode_text(torch.randn(1, 4, model.config.text_dim, generator=gen)) for _ in range(n)]


def _settings(blocks):
    return RolloutSettings(num_frames=3 * blocks, height=32, width=32, seed=11)


@pytest.fixture(scope="module")
def model(tiny_state_dict):
    return CausalWan(WanDiT.from_state_dict(tiny_state_dict))


@pytest.fixture(scope="module")
def global_reference(model):
    return rollout(model, _texts(model, 1)[0], _settings(4), SelfForcingCacheConfig()).latents


@pytest.mark.parametrize("policy", [RollingSinkCacheConfig(), DeepForcingCacheConfig(), InfinityRopeCacheConfig()],
                         ids=lambda p: type(p).__name__)
def test_before_the_budget_fills_the_presets_equal_the_global_self_forcing_cache(model, global_reference, policy):
    """Same windows, same positions: bit-identical video, also through Deep Forcing's rotated-key path."""
    latents = rollout(model, _texts(model, 1)[0], _settings(4), policy).latents
    assert torch.equal(latents, global_reference)


def test_longlive_single_prompt_equals_a_rolling_self_forcing_cache_with_sink(model):
    text = _texts(model, 1)[0]
    reference = rollout(model, text, _settings(5), SelfForcingCacheConfig(local_attn_size=12, sink_size=3)).latents
    assert torch.equal(rollout(model, text, _settings(5), LongLiveCacheConfig()).latents, reference)


def test_longlive_rollout_recaches_at_every_switch(model, recording):
    texts = _texts(model, 3)
    scenes = [RolloutScene(texts[0], 5), RolloutScene(texts[1], 3, entry="smooth"),
              RolloutScene(texts[2], 2, entry="hardcut")]
    policy = recording(LongLiveCacheConfig())
    result = rollout(model, scenes, _settings(10), policy)
    assert torch.isfinite(result.latents).all()
    assert [r["recache_frames"] for r in result.switches] == [12, 12]
    recaches = [(c, k, q) for c, k, q, _ in policy.log if c.num_frames != 3]
    assert [(c.start_frame, c.num_frames, c.timestep, c.context_pass) for c, _, _ in recaches] == [
        (3, 12, 0.0, True), (12, 12, 0.0, True)]
    assert recaches[0][1] == [0, 1, 2, *range(6, 15)] and recaches[0][2] == list(range(3, 15))
    assert recaches[1][1] == [0, 1, 2, *range(15, 24)] and recaches[1][2] == list(range(12, 24))
    assert len(policy.log) == 10 * 5 + 2


def test_infinity_rope_rollout_cuts_the_first_block_of_a_hard_cut_only(model, recording):
    texts = _texts(model, 3)
    scenes = [RolloutScene(texts[0], 3, prompt="a"), RolloutScene(texts[1], 2, prompt="b", entry="hardcut"),
              RolloutScene(texts[2], 2, prompt="c", entry="smooth")]
    policy = recording(InfinityRopeCacheConfig())
    result = rollout(model, scenes, _settings(7), policy)
    assert torch.isfinite(result.latents).all()
    assert [r["flushed_to"] for r in result.switches] == [2, None]
    by_block = {}
    for call, k_time, q_time, _ in policy.log:
        by_block.setdefault(call.start_frame, []).append((k_time, q_time))
    assert by_block[9] == [([0, 1, 45, 46, 47], [45, 46, 47])] * 5
    assert by_block[12] == [(list(range(8)), [5, 6, 7])] * 5
    assert by_block[15] == [(list(range(11)), [8, 9, 10])] * 5


def test_deep_forcing_and_rolling_sink_run_past_the_budget_with_prompt_switches(model):
    texts = _texts(model, 2)
    scenes = [RolloutScene(texts[0], 5), RolloutScene(texts[1], 3, entry="hardcut")]
    for policy in (DeepForcingCacheConfig(), RollingSinkCacheConfig()):
        result = rollout(model, scenes, _settings(8), policy)
        assert torch.isfinite(result.latents).all()
        assert result.switches == [{"scene": 1, "mode": "smooth"}]  # prompt reset only: the cache goes on
        assert result.cache_bytes > 0


def test_temporal_shift_equals_rotating_at_the_new_position():
    from echo_forcing.memory.deep_forcing import temporal_shift
    from echo_forcing.models.rope import Rope3D

    rope = Rope3D(D)
    x = torch.randn(1, 2 * P, 2, D, dtype=torch.float64)
    shifted = temporal_shift(rope.apply(x, torch.tensor([3, 7]), GRID), 5)
    assert torch.allclose(shifted, rope.apply(x, torch.tensor([8, 12]), GRID), atol=1e-12)
