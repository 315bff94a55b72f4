"""Parity with the official Echo-Forcing pipeline (mingqiangWu/Echo-Forcing @ d0878fa) on CPU, float32.

One five-scene story run on a tiny random model with 12 heads x 128 and the real 30x52 token grid
(tests/fixtures/echo_forcing/README.md says exactly how the reference was produced):

    A [9s#] | B [3s@] | A again [1.5s] | C [1.5s] | D [0.75s]   ->  12, 4, 2, 2, 1 blocks

covers (a) one scene of 12 blocks with rolling anchors and phase compression active (blocks 7..11),
(b) a hard cut followed by a recall of the first scene, (c) two smooth transitions (the second reusing the
smooth chain's anchor). Checked against the reference: output latents, the RoPE positions of every call,
the contents of every cache slot at the first call of every block, the anchor order, the compressed
tokens, the decay weights, the switches (mode, recalled scene, similarities, jump, old memory) and the
scene pool. The run takes a few minutes on 2 cores (12 heads attending over 21-frame windows).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory.echo_memory import EchoMemory
from echo_forcing.memory.phase_compression import CandidateHistory
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutSettings, parse_scene_script, rollout, scenes_for_script

pytestmark = pytest.mark.slow  # about 7 minutes on 2 cores: opt-in (python -m pytest -m slow)

FIXTURES = Path(__file__).parent / "fixtures" / "echo_forcing"
CONFIG = WanConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=1, text_dim=64, in_dim=4, out_dim=4)
P = 1560
LATENT_TOLERANCE = 1e-3
"""The issue's budget for max |ours - reference| (on top of the fixture's 16-bit storage step)."""


def _weights() -> dict[str, torch.Tensor]:
    sd = random_wan_state_dict(CONFIG, seed=2026)
    digest = hashlib.sha256()
    for name in sorted(sd):
        digest.update(sd[name].contiguous().numpy().tobytes())
    return sd, digest.hexdigest()


def _fingerprints(frames: torch.Tensor, projection: torch.Tensor) -> list[tuple[float, float]]:
    """[fp_sum, fp_proj] of every 1560-token frame of ``frames`` [n*P, H, d] (float64)."""
    out = []
    for i in range(frames.shape[0] // P):
        f = frames[i * P:(i + 1) * P].double()
        out.append((f.sum().item(), (f * projection).sum().item()))
    return out


@pytest.fixture(scope="module")
def trace() -> dict:
    return json.loads((FIXTURES / "story_trace.json").read_text())


@pytest.fixture(scope="module")
def arrays():
    return np.load(FIXTURES / "story_trace.npz")


@pytest.fixture(scope="module")
def story(trace):
    """Run the story once with recorders on the layer memory (the whole module checks this one run)."""
    sd, digest = _weights()
    assert digest == trace["meta"]["weights_sha256"], "the weight generator no longer reproduces the fixture"
    model = CausalWan(WanDiT.from_state_dict(sd), dtype=torch.float32, device="cpu")
    scenes = parse_scene_script(trace["meta"]["prompt"])
    embeddings = stand_in_text_embedding([s.prompt for s in scenes], CONFIG.text_dim)
    texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts)
    projection = torch.randn(P, 12, 128, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    record = {"calls": [], "first": {}, "chosen": {}}

    policy = EchoMemory(encode_text=lambda prompts: stand_in_text_embedding(prompts, CONFIG.text_dim))
    original_create = policy.create

    def create(num_layers, infos=None):
        state = original_create(num_layers, infos)
        layer = state.layers[0]
        update = layer.update

        def recording_update(q, k, v, call):
            window = update(q, k, v, call)
            block = call.start_frame // 3
            record["calls"].append((block, call.timestep, window.q_time.tolist(), window.k_time.tolist()))
            if call.timestep == 1000.0:
                n = layer.local_end
                weights = layer.weights[:n * P].view(n, P)
                record["first"][block] = {
                    "k": _fingerprints(layer.k[0, :n * P], projection),
                    "v": _fingerprints(layer.v[0, :n * P], projection),
                    "weights": weights.clone(),
                }
            return window

        layer.update = recording_update
        return state

    original_take = CandidateHistory.take

    def recording_take(self, indices, recent=None):
        slots = self.slots()
        frames = torch.tensor([self.frames[s] for s in slots])[indices // P]
        record["chosen"][max(self.frames) + 1] = (frames, indices % P)
        return original_take(self, indices, recent)

    object.__setattr__(policy, "create", create)
    CandidateHistory.take = recording_take
    try:
        result = rollout(model, plan, RolloutSettings(num_frames=frames, height=480, width=832,
                                                      seed=trace["meta"]["noise_seed"]), policy)
    finally:
        CandidateHistory.take = original_take
    return result, record, plan, projection


def test_scene_plan_matches_the_reference(trace, story):
    _, _, plan, _ = story
    assert [s.num_blocks for s in plan] == trace["meta"]["blocks_per_scene_effective"] == [12, 4, 2, 2, 1]
    assert [s.entry for s in plan] == [None, "hardcut", "recall", "smooth", "smooth"]


def test_output_latents_match_the_official_pipeline(story):
    result, _, _, _ = story
    data = np.load(FIXTURES / "story_latents.npz")
    golden = torch.from_numpy(data["latents_q"].astype(np.float64) * float(data["scale"]))
    assert result.latents.shape == golden.shape == (1, 63, 4, 60, 104)
    diff = (result.latents.double() - golden).abs().max().item()
    assert diff <= LATENT_TOLERANCE, f"max |delta| {diff:.3e}"
    assert diff <= float(data["scale"]) / 2 + 1e-5  # in practice: bit-exact up to the storage step


def test_rope_positions_of_every_call_match(trace, story):
    _, record, _, _ = story
    assert len(record["calls"]) == len(trace["calls"]) == 105
    for ours, ref in zip(record["calls"], trace["calls"], strict=True):
        block, timestep, queries, keys = ours
        assert (block, timestep) == (ref["block"], ref["timestep"])
        assert queries == ref["query"]["positions"], ref["call"]
        assert keys == ref["key"]["positions"], ref["call"]


def test_every_cache_slot_at_the_first_call_of_every_block_matches(trace, story):
    """Pre-RoPE keys and values slot by slot: anchors in ping-pong order, compressed, recent, old memory."""
    _, record, _, _ = story
    for block in trace["blocks"]:
        ref, ours = block["first_call"], record["first"][block["block"]]
        assert len(ours["k"]) == ref["n_slots"], block["block"]
        for name in ("k", "v"):
            for slot, (fp_sum, fp_proj) in enumerate(ours[name]):
                where = (block["block"], name, slot)
                assert fp_sum == pytest.approx(ref[f"{name}_fp_sum"][slot], rel=1e-5, abs=1e-2), where
                assert fp_proj == pytest.approx(ref[f"{name}_fp_proj"][slot], rel=1e-5, abs=1e-2), where


def test_compressed_tokens_are_the_official_selection(arrays, story):
    _, record, _, _ = story
    for block in range(7, 12):
        frames, spatial = record["chosen"][3 * block]
        assert frames.tolist() == arrays[f"compress_abs_frame_block{block}"].tolist(), block
        assert spatial.tolist() == arrays[f"compress_spatial_block{block}"].tolist(), block


def test_decay_weights_match_block_by_block(trace, arrays, story):
    _, record, _, _ = story
    for block in trace["blocks"]:
        b = block["block"]
        weights = record["first"][b]["weights"]
        not_one = [s for s in range(weights.shape[0]) if not bool((weights[s] == 1).all())]
        assert not_one == block["first_call"]["weights_non_one_slots"], b
        if not_one:
            reference = torch.from_numpy(arrays[f"weights_block{b}"])
            assert torch.allclose(weights[not_one], reference, atol=1e-6), b


def test_switches_match(trace, story):
    result, _, _, _ = story
    assert len(result.switches) == len(trace["switches"]) == 4
    for ours, ref in zip(result.switches, trace["switches"], strict=True):
        assert ours["mode"] == ref["mode"]
        assert ours["jump"] == ref["rope_jump_value"]
        assert ours["old_slots"] == ref["old_memory_slots"]
        if ref["mode"] == "recall":
            assert ours["recalled"] == "scene 1" and ref["recall"]["chosen_scene_index"] == 0
            similarities = [c["similarity"] for c in ours["candidates"]]
            assert similarities == pytest.approx([c["similarity"] for c in ref["recall"]["candidates"]], abs=1e-6)


def test_scene_pool_recall_frames_match(trace, story):
    result, _, _, projection = story
    entries = result.pool.entries
    assert [e.scene for e in entries] == [r["scene_index"] for r in trace["scene_pool"]]
    for entry, ref in zip(entries, trace["scene_pool"], strict=True):
        k, v = entry.recall[0]
        (k_sum, k_proj), = _fingerprints(k, projection)
        (v_sum, v_proj), = _fingerprints(v, projection)
        assert (k_sum, k_proj) == pytest.approx(tuple(ref["compress_k_fp"]), rel=1e-5, abs=1e-2)
        assert (v_sum, v_proj) == pytest.approx(tuple(ref["compress_v_fp"]), rel=1e-5, abs=1e-2)
        assert torch.allclose(entry.feature, torch.tensor(ref["prompt_feature"]), atol=1e-6)
