"""The Echo-Forcing memory, piece by piece: anchors, slot layout, positions, compression, decay, recall
frames, footprint. Expected values come from tables verified on the official code and from direct formulas."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from echo_forcing.memory.config import (
    AnchorOrder,
    ConfigError,
    DecayConfig,
    EchoMemoryConfig,
    MatchMethod,
    RecallFusion,
    Transition,
)
from echo_forcing.memory.decay import difference_rates
from echo_forcing.memory.echo_memory import EchoMemory
from echo_forcing.memory.footprint import memory_footprint
from echo_forcing.memory.hierarchical_memory import EchoLayerMemory
from echo_forcing.memory.phase_compression import (
    CandidateHistory,
    PhaseCalibration,
    drift_gate,
    geometric_offsets,
    score_tokens,
    select_tokens,
    summarize,
    temporal_omega,
    to_complex,
)
from echo_forcing.memory.recall_frames import recall_frame
from echo_forcing.memory.rolling_anchors import anchor_group
from echo_forcing.memory.self_forcing import SelfForcingCacheConfig
from echo_forcing.memory.snapshot import SnapshotFormatError, snapshot_from_record, snapshot_record
from echo_forcing.memory.state import SceneInfo
from echo_forcing.memory.transitions import enter_scene
from echo_forcing.models import BlockCall

GRID = (1, 2)
P = 2


# --- rolling anchors ---------------------------------------------------------------------------------------

SPEC_ANCHORS = {  # verified on the official code: anchor slots 0..11 after the roll of block b
    7: [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9],
    8: [6, 7, 8, 9, 10, 11, 11, 10, 9, 8, 7, 6],
    9: [9, 10, 11, 11, 10, 9, 8, 7, 6, 5, 4, 3],
    10: [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    11: [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 1, 2],
    12: [5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5],
    13: [2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    14: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    15: [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9],
}


def test_anchor_groups_follow_the_official_ping_pong():
    inserted = [anchor_group(3 * b, 12).frames() for b in range(7, 24)]
    assert inserted[:9] == [row[9:] for _, row in sorted(SPEC_ANCHORS.items())]
    assert inserted[8:16] == inserted[:8]  # period 8 blocks
    assert anchor_group(18, 12) is None


def test_paper_pool_of_18_and_eq1_order():
    assert anchor_group(21, 18).frames() == [17, 16, 15]  # SPEC: the first insert jumps to frame 17
    paper = [anchor_group(3 * b, 18, order=AnchorOrder.PAPER).frames() for b in range(7, 14)]
    assert paper == [[2, 1, 0], [3, 4, 5], [8, 7, 6], [9, 10, 11], [14, 13, 12], [15, 16, 17], [2, 1, 0]]


# --- the layer cache ----------------------------------------------------------------------------------------

def _kv(start: int, frames: int, marker: float = 0.0):
    k = torch.arange(start, start + frames, dtype=torch.float32).repeat_interleave(P).view(1, -1, 1, 1) + marker
    return k.expand(1, frames * P, 1, 2).clone()


def _block(layer, block: int):
    """Four noisy calls and the clean context pass of one block; returns the first call's window."""
    start = 3 * block
    first = None
    for step, t in enumerate((1000.0, 937.5, 833.3, 625.0)):
        k = _kv(start, 3, marker=0.25 * (step + 1))
        window = layer.update(k, k, -k, BlockCall(start, 3, t, False, GRID))
        first = first or window
    k = _kv(start, 3)
    layer.update(k, k, -k, BlockCall(start, 3, 0.0, True, GRID))
    return first


def _frames(t: torch.Tensor) -> list[int]:
    return t[0, ::P, 0, 0].floor().long().tolist()


def test_layer_layout_matches_the_verified_slot_table():
    layer = EchoLayerMemory(EchoMemoryConfig(compression=False))
    for block in range(16):
        window = _block(layer, block)
        frames = _frames(window.k)
        if block < 7:
            assert frames == list(range(3 * block + 3))
            assert window.k_time.tolist() == list(range(3 * block + 3))
            assert window.q_time.tolist() == [3 * block + i for i in range(3)]
        else:
            assert frames[:12] == SPEC_ANCHORS[block], block
            assert frames[12:15] == [12, 13, 14]  # compression off: the plain frames stay
            assert frames[15:18] == [3 * block - 3 + i for i in range(3)]  # recent = previous block
            assert frames[18:] == [3 * block + i for i in range(3)]
            assert window.k_time.tolist() == list(range(21))
            assert window.q_time.tolist() == [18, 19, 20]
        assert window.weights is None
    assert layer.k[0, 18 * P, 0, 0].item() == 45.0  # the clean pass overwrote the block's noisy keys


def test_compressed_region_holds_history_tokens_in_time_order():
    layer = EchoLayerMemory(EchoMemoryConfig())
    torch.manual_seed(0)
    for block in range(9):
        start = 3 * block
        for t in (1000.0, 937.5, 833.3, 625.0, 0.0):
            k = torch.randn(1, 3 * P, 1, 128)
            k[..., 0] = torch.arange(start, start + 3).repeat_interleave(P).view(1, -1, 1) + 0.5  # frame id
            q = torch.randn(1, 3 * P, 1, 128)
            window = layer.update(q, k, k.clone(), BlockCall(start, 3, t, t == 0.0, GRID))
            if t == 1000.0 and block >= 7:
                assert layer.calibration.ready
                compressed = window.k[0, 12 * P:15 * P, 0, 0].floor().long().tolist()
                history_frames = list(range(3 * block - 21, 3 * block - 3))  # 18 candidates, recent excluded
                assert all(f in history_frames for f in compressed)
                assert compressed == sorted(compressed)
    assert layer.history.size == 21


class _StoringEverything(EchoLayerMemory):
    """The layer with a candidate history that stores all of its frames (none read from the recent region)."""

    def allocate(self, k, grid):
        super().allocate(k, grid)
        h = self.history
        self.history = CandidateHistory(h.capacity, 0, h.frame_tokens, self.heads, self.head_dim, self.kv,
                                        self.device, self.storage)


@pytest.mark.parametrize("layout", [{}, {"anchor_frames": 6, "anchor_pool_frames": 6, "compressed_frames": 9},
                                    {"anchor_frames": 6, "anchor_pool_frames": 6, "compressed_frames": 11,
                                     "recent_frames": 1},
                                    {"anchor_frames": 3, "anchor_pool_frames": 3, "compressed_frames": 9,
                                     "recent_frames": 6}])
@pytest.mark.parametrize("kv_storage", ["compute", "fp8_e4m3"])
def test_history_reading_its_newest_frames_from_the_cache_changes_nothing(layout, kv_storage, monkeypatch):
    """The history stores only its selectable frames; windows are bit-identical to storing all 21, also when
    the reuse cap runs the older tokens out and the newest (recent) ones are chosen."""
    cfg = EchoMemoryConfig(reuse_cap=1, **layout)
    layers = [cls(cfg, kv_storage=kv_storage) for cls in (EchoLayerMemory, _StoringEverything)]
    recent_chosen = []
    take = CandidateHistory.take

    def counting_take(self, indices, recent=None):
        recent_chosen.append(int((indices >= (self.size - self.pending) * P).sum()))
        return take(self, indices, recent)

    monkeypatch.setattr(CandidateHistory, "take", counting_take)
    torch.manual_seed(3)
    for block in range(20):
        start = 3 * block
        for t in (1000.0, 625.0, 0.0):
            q, k, v = (torch.randn(1, 3 * P, 2, 8) for _ in range(3))
            windows = [layer.update(q, k, v, BlockCall(start, 3, t, t == 0.0, GRID)) for layer in layers]
            assert torch.equal(windows[0].k, windows[1].k) and torch.equal(windows[0].v, windows[1].v)
    deferring = layers[0].history
    assert deferring.stored_capacity == 21 - cfg.recent_frames and deferring.pending == cfg.recent_frames
    assert layers[0].history.storage_bytes * 21 == layers[1].history.storage_bytes * deferring.stored_capacity
    if cfg.compressed_frames > 3:  # more chosen per block than arrive: the older tokens run out
        assert any(recent_chosen), "the reuse cap never made the history choose its newest tokens"


# --- positions at switches (verified examples) ---------------------------------------------------------------

def _layer_after(blocks: int) -> EchoLayerMemory:
    layer = EchoLayerMemory(EchoMemoryConfig(compression=False))
    for block in range(blocks):
        _block(layer, block)
    return layer


@pytest.mark.parametrize("mode, old, jump, keys, queries", [
    (Transition.HARD_CUT, True, 45, [0, 46, 47, 48], [46, 47, 48]),
    (Transition.SMOOTH, True, 0, [0, 1, 2, 3, 4, 5], [3, 4, 5]),
    (Transition.RECALL, True, 4, [0, 5, 6, 7], [5, 6, 7]),
])
def test_first_block_of_a_scene_is_shifted_by_the_rope_jump(mode, old, jump, keys, queries):
    layer = _layer_after(8)
    cfg = EchoMemoryConfig().mode(mode)
    old_frame = (torch.full((P, 1, 2), 99.0), torch.full((P, 1, 2), -99.0))
    kept = enter_scene(layer, mode, cfg, old_frame, jump, scene_start=24)
    assert kept == len(keys) - 3
    window = _block(layer, 8)
    assert window.k_time.tolist() == keys and window.q_time.tolist() == queries
    assert _frames(window.k)[0] == 99
    if mode is Transition.SMOOTH:
        assert _frames(window.k)[1:3] == [22, 23]  # the previous scene's last two clean frames
    layer.end_jump()  # what the memory does from the scene's second block on (no eviction in this test)
    window = _block(layer, 9)
    assert window.k_time.tolist() == list(range(kept + 6))
    assert window.q_time.tolist() == [kept + 3, kept + 4, kept + 5]


# --- the block report's regions (the demo's timeline) ------------------------------------------------------

def _state_block(state, block: int):
    """One block through the scene hooks, as the rollout drives them; returns ``end_block``'s report."""
    state.begin_block(False)
    start = 3 * block
    for step, t in enumerate((1000.0, 937.5, 833.3, 625.0)):
        k = _kv(start, 3, marker=0.25 * (step + 1))
        for layer in state.layers:
            layer.update(k, k, -k, BlockCall(start, 3, t, False, GRID))
    state.before_context_pass()
    k = _kv(start, 3)
    for layer in state.layers:
        layer.update(k, k, -k, BlockCall(start, 3, 0.0, True, GRID))
    return state


def test_block_reports_name_the_frames_of_every_region_and_the_old_memory():
    scenes = [SceneInfo("a", 8), SceneInfo("b", 7, Transition.SMOOTH), SceneInfo("c", 2, Transition.HARD_CUT)]
    state = EchoMemory(EchoMemoryConfig(compression=False, match_method=MatchMethod.IDF)).create(1, scenes)
    block, notes = 0, []
    for index, scene in enumerate(scenes):
        if index:
            state.start_scene(index, 3 * block)
        for b in range(scene.num_blocks):
            _state_block(state, block)
            report = state.end_block(index, b == 0, b == scene.num_blocks - 1)
            regions = {k: report.notes[k] for k in ("old_slots", "anchor_slots", "compressed_slots", "recent_slots")}
            assert all(type(v) is int for v in regions.values()) and sum(regions.values()) == report.slots
            notes.append((regions["old_slots"], regions["anchor_slots"], regions["compressed_slots"],
                          regions["recent_slots"], report.notes.get("old_slots_dropped", 0)))
            block += 1
    # (old, anchors, compressed, recent, dropped) after each block
    assert notes[:8] == [(0, 3, 0, 0, 0), (0, 6, 0, 0, 0), (0, 9, 0, 0, 0), (0, 12, 0, 0, 0), (0, 12, 3, 0, 0),
                         (0, 12, 3, 3, 0), (0, 12, 3, 6, 0), (0, 12, 3, 6, 0)]
    # smooth: 3 old frames (recall frame + 2 last frames) in front of the scene until they go after 5 blocks
    assert notes[8:15] == [(3, 3, 0, 0, 0), (3, 6, 0, 0, 0), (3, 9, 0, 0, 0), (3, 9, 3, 0, 0), (0, 12, 3, 0, 3),
                           (0, 12, 3, 3, 0), (0, 12, 3, 6, 0)]
    # hard cut: 1 old frame for one block
    assert notes[15:] == [(0, 3, 0, 0, 1), (0, 6, 0, 0, 0)]


def test_a_snapshot_stored_with_the_previous_layer_layout_is_refused():
    scenes = [SceneInfo("a", 1), SceneInfo("b", 1, Transition.HARD_CUT)]
    state = EchoMemory(EchoMemoryConfig(compression=False)).create(1, scenes)
    _state_block(state, 0).end_block(0, True, True)
    record, tensors = snapshot_record(state.snapshot())
    assert record["layout"] == 2 and snapshot_from_record(record, tensors).state_type is type(state)
    del record["layout"]  # what the pack wrote before layouts were versioned (layer fields of layout 1)
    with pytest.raises(SnapshotFormatError, match="EchoMemoryState has snapshot layout 1, but this version of the "
                                                  "pack reads layout 2"):
        snapshot_from_record(record, tensors)


def _story_pool(scenes, rnd: bool):
    state = EchoMemory(EchoMemoryConfig(compression=False, match_method=MatchMethod.IDF)).create(2, scenes)
    block = 0
    torch.manual_seed(5)
    for index, scene in enumerate(scenes):
        if index:
            state.start_scene(index, 3 * block)
        for b in range(scene.num_blocks):
            if rnd:  # keys that differ per frame and layer
                state.begin_block(False)
                for t in (1000.0, 0.0):
                    if t == 0.0:
                        state.before_context_pass()
                    for layer in state.layers:
                        k = torch.randn(1, 3 * P, 1, 2) + block
                        layer.update(k, k, -k, BlockCall(3 * block, 3, t, t == 0.0, GRID))
            else:
                _state_block(state, block)
            state.end_block(index, b == 0, b == scene.num_blocks - 1)
            block += 1
    assert state.carried.needs_recall_frames
    return state.result_pool()


@pytest.mark.parametrize("rnd", [False, True])
def test_recall_candidates_read_from_the_anchor_pool_equal_their_copies(rnd, monkeypatch):
    """Recall frames built from the anchor pool (where old memory in front and its later drop move the scene's
    frames) equal the ones built from copies taken while recording."""
    scenes = [SceneInfo("a", 6), SceneInfo("b", 7, Transition.SMOOTH), SceneInfo("c", 2, Transition.SMOOTH),
              SceneInfo("d", 5, Transition.HARD_CUT)]
    assert EchoMemoryConfig().recall_candidates_in_anchor_pool
    pooled = _story_pool(scenes, rnd)
    monkeypatch.setattr(EchoMemoryConfig, "recall_candidates_in_anchor_pool", property(lambda self: False))
    copied = _story_pool(scenes, rnd)
    assert len(pooled.entries) == len(copied.entries) == 4
    for a, b in zip(pooled.entries, copied.entries, strict=True):
        assert a.recall is not None
        for (ka, va), (kb, vb) in zip(a.recall, b.recall, strict=True):
            assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_recall_candidates_are_copied_when_the_layout_can_leave_them_outside_the_pool():
    assert not EchoMemoryConfig(recall_source_frames=15, recall_storage_frames=15).recall_candidates_in_anchor_pool
    smooth = EchoMemoryConfig().with_mode("smooth", old_recent_frames=6)
    assert not replace(smooth, recall_source_frames=15, recall_storage_frames=15).recall_candidates_in_anchor_pool
    layer = EchoLayerMemory(EchoMemoryConfig(recall_source_frames=15, recall_storage_frames=15))
    layer.allocate(torch.zeros(1, P, 1, 2), GRID)
    assert layer.recorder.copies


# --- decay (memory/decay.py) ----------------------------------------------------------------------------------

def _scene_weights(mode: Transition, blocks: int = 7):
    layer = _layer_after(8)
    cfg = EchoMemoryConfig().mode(mode)
    old = (torch.randn(P, 1, 2), torch.randn(P, 1, 2))
    enter_scene(layer, mode, cfg, old, 0, scene_start=24)
    seen = []
    for r in range(blocks):
        window = _block(layer, 8 + r)
        old_slots = layer.decay.count // P if layer.decay.active else 0
        seen.append(None if window.weights is None else window.weights[:max(old_slots, 1) * P].tolist())
        if r == 0:
            layer.estimate_decay(cfg.decay, None)
        layer.decay.apply()
        layer.evict_old()
    return layer, seen


def test_hard_cut_old_frame_weighs_0_8_for_one_block_then_goes():
    layer, seen = _scene_weights(Transition.HARD_CUT)
    assert seen[0] == pytest.approx([0.8] * P)
    assert seen[1:] == [None] * 6
    assert layer.timing_offset == 0


@pytest.mark.parametrize("mode, low, high, old_slots", [
    (Transition.SMOOTH, 0.80, 0.95, 3), (Transition.RECALL, 0.55, 0.90, 1)])
def test_smooth_and_recall_decay_geometrically_then_go(mode, low, high, old_slots):
    layer, seen = _scene_weights(mode)
    assert seen[0] is None  # r = 0: weight 1
    rates = torch.tensor(seen[1][:P])
    assert rates.min().item() == pytest.approx(low) and rates.max().item() == pytest.approx(high)
    for r in range(2, 5):
        assert torch.tensor(seen[r][:P]) == pytest.approx(rates ** r)
    assert len(seen[1]) == old_slots * P and seen[1][P:] == seen[1][:P] * (old_slots - 1)  # rates tiled
    assert seen[5:] == [None, None]
    assert layer.local_end == 21 and layer.timing_offset == 0  # old slots deleted after 5 blocks, cache refilled


def test_difference_rates_follow_the_normalised_cosine_distance():
    new = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(1, 3, 1, 2)
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).view(1, 3, 1, 2)
    rates = difference_rates(new, old, 0.55, 0.90)
    d = torch.tensor([0.0, 1.0, 1 - 1 / math.sqrt(2)])
    assert rates.tolist() == pytest.approx((0.90 - 0.35 * d / d.max()).tolist(), abs=1e-6)
    flat = difference_rates(old, old, 0.8, 0.95)
    assert flat.tolist() == pytest.approx([0.95] * 3)


def test_decay_law_parameterisations_agree():
    cfg = DecayConfig(min_rate=0.8, max_rate=0.95)
    mu_min, mu_max = cfg.mu_range
    assert (mu_min, mu_max) == pytest.approx((0.0513, 0.2231), abs=1e-4)
    back = DecayConfig.from_mu(mu_min, mu_max)
    assert (back.min_rate, back.max_rate) == pytest.approx((0.8, 0.95))
    for r in range(5):
        assert 0.8 ** r == pytest.approx(math.exp(-r * mu_max))


# --- phase compression -------------------------------------------------------------------------------------

def _direct_scores(history_k, frames, calib, q_recent, lam, offsets):
    """The score of memory/phase_compression.py written out term by term (independent of the summary decomposition)."""
    k = to_complex(history_k)  # [N, H, 64]
    qbar, abar = calib.mean, calib.abs_mean
    phi = torch.angle(qbar[None] * torch.conj(k))
    amp = qbar.abs()[None] * k.abs()
    extra = (abar - qbar.abs())[None] * k.abs()
    gate = drift_gate(q_recent, calib, lam)
    omega = torch.zeros(64)
    omega[:22] = 10000.0 ** (-torch.arange(22, dtype=torch.float32) / 22)
    age = (frames.max() + 1 - frames).to(torch.float32)
    out = []
    for o in offsets:
        phase = phi + omega[None, None] * (age + o)[:, None, None]
        out.append((amp * torch.cos(phase)).sum(-1) + gate * extra.sum(-1))
    return torch.stack(out).mean(0).mean(-1)


def test_summary_scores_equal_the_direct_formula():
    g = torch.Generator().manual_seed(3)
    n, heads = 40, 3
    history_k = torch.randn(n, heads, 128, generator=g)
    frames = torch.arange(n) // 2 + 5
    calib = PhaseCalibration(heads, 128, torch.device("cpu"))
    calib.add(torch.randn(1, 50, heads, 128, generator=g))
    calib.finish()
    q_recent = torch.randn(1, 6, heads, 128, generator=g)
    offsets = geometric_offsets(21)
    assert offsets == (1, 2, 4, 8, 16)
    direct = _direct_scores(history_k, frames, calib, q_recent, 3.0, offsets)
    summary = summarize(history_k, calib, amplitude_compensation=True)
    ours = score_tokens(summary, frames.max() + 1 - frames, drift_gate(q_recent, calib, 3.0), temporal_omega(128),
                        offsets)
    assert torch.allclose(ours, direct, rtol=1e-5, atol=1e-4)


def test_selection_is_top_k_in_time_order_with_reuse_cap():
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 8.0, -float("inf")])
    assert select_tokens(scores, None, 3, 0).tolist() == [0, 2, 4]
    counts = torch.tensor([0, 0, 8, 0, 0, 0])
    assert select_tokens(scores, counts, 3, 8).tolist() == [0, 3, 4]


# --- Scene Recall Frames -------------------------------------------------------------------------------------

def test_recall_frame_is_0_9_first_plus_0_1_softmax_fusion():
    g = torch.Generator().manual_seed(5)
    cands = [(torch.randn(4, 2, 8, generator=g), torch.randn(4, 2, 8, generator=g)) for _ in range(3)]
    q_sum, count = torch.randn(2, 8, generator=g) * 10, 10.0
    k, _ = recall_frame(cands, q_sum, count, RecallFusion.SCORE_WEIGHTED, 0.9)
    qbar = q_sum / count
    for u in range(4):
        e = torch.stack([(c[0][u] * qbar).sum(-1).mean() for c in cands])
        alpha = torch.softmax(e, 0)
        fused = sum(a * c[0][u] for a, c in zip(alpha, cands, strict=True))
        assert torch.allclose(k[u], 0.9 * cands[0][0][u] + 0.1 * fused, atol=1e-6)
    k_sel, _ = recall_frame(cands, q_sum, count, RecallFusion.TOKEN_SELECT, 0.9)
    for u in range(4):
        e = torch.stack([(c[0][u] * qbar).sum(-1).mean() for c in cands])
        assert torch.equal(k_sel[u], cands[int(e.argmax())][0][u])
    pure, _ = recall_frame(cands, q_sum, count, RecallFusion.SCORE_WEIGHTED, 0.0)
    assert not torch.allclose(pure, k)


# --- configuration and footprint -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"anchor_frames": 9}, "must equal budget_frames"),
    ({"anchor_frames": 10, "compressed_frames": 5}, "multiple of 3"),
    ({"drift_gate_lambda": -1}, "drift_gate_lambda"),
    ({"anchor_pool_frames": 20}, "anchor_pool_frames"),
    ({"recall_base_frame_weight": 1.5}, "recall_base_frame_weight"),
    ({"frames_per_block": 1, "budget_frames": 19}, "3-frame blocks"),
])
def test_bad_memory_configs_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EchoMemoryConfig(**kwargs)


def test_decay_config_validation():
    with pytest.raises(ConfigError, match="min_rate"):
        DecayConfig(min_rate=0.9, max_rate=0.8)
    with pytest.raises(ConfigError, match="old_recent_frames"):
        EchoMemoryConfig().with_mode("hardcut", old_recent_frames=2)


def test_gpu_memory_state_is_within_1_3x_of_the_working_cache_at_full_size():
    """480x832 (30x52 tokens), 30 layers, 12x128 heads, bf16, built on the meta device."""
    ef = memory_footprint(EchoMemory(), 30, 12, 128, torch.bfloat16, (30, 52), scenes=6)
    sf = memory_footprint(SelfForcingCacheConfig(), 30, 12, 128, torch.bfloat16, (30, 52))
    assert sf.working_cache_bytes == ef.working_cache_bytes == 2 * 21 * 1560 * 12 * 128 * 2 * 30  # 6.04 GB
    assert sf.device_ratio == 1.0
    assert ef.device_ratio <= 1.3
    official = 25.3e9  # docs/MEMORY.md: persistent GPU buffers of the official code for the same cache
    assert ef.device_bytes < official / 4
