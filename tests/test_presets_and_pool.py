"""Presets, the scene pool across jobs, routing, and the bad inputs the memory must refuse before any model call."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory.config import (
    AnchorOrder,
    ConfigError,
    EchoMemoryConfig,
    JumpStrategy,
    MatchMethod,
    Transition,
)
from echo_forcing.memory.echo_memory import EchoMemory, SceneMemoryError
from echo_forcing.memory.presets import PRESETS, make_policy, preset_names
from echo_forcing.memory.routing import Candidate as C
from echo_forcing.memory.routing import (
    auto_route,
    filtered_prompts,
    idf_features,
    paper_recall_jump,
    prompt_words,
    similarity_jump,
)
from echo_forcing.memory.scene_pool import PoolSignature, ScenePool, ScenePoolError
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutScene, RolloutSettings, rollout

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
PROMPTS = ["a lighthouse keeper climbs white stairs at dusk", "a night market with red lanterns",
           "back in the white lighthouse the keeper lights the lamp", "the keeper waves from the balcony"]


def encode(prompts):
    return stand_in_text_embedding(prompts, CFG.text_dim)


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


class _Counting(CausalWan):
    def __init__(self, dit):
        super().__init__(dit)
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return super().__call__(*args)


def _scenes(model, entries, blocks, targets=None, labels=None):
    emb = encode(PROMPTS[:len(entries)])
    targets = targets or [None] * len(entries)
    labels = labels or [None] * len(entries)
    return [RolloutScene(model.encode_text(emb[i:i + 1]), blocks[i], PROMPTS[i], entries[i], targets[i], labels[i])
            for i in range(len(entries))]


def _run(model, policy, entries=(None, "hardcut", "recall", "smooth"), blocks=(3, 2, 2, 1), **kw):
    settings = RolloutSettings(num_frames=3 * sum(blocks), height=32, width=48, seed=9)
    return rollout(model, _scenes(model, list(entries), list(blocks), **kw), settings, policy)


# --- presets -------------------------------------------------------------------------------------------------

def test_every_preset_runs_a_multi_shot_video(model):
    assert preset_names() == ["echo-forcing", "echo-forcing-paper", "self-forcing", "longlive", "rolling-sink",
                              "deep-forcing", "infinity-rope", "reward-forcing", "sgf", "sgf-framewise",
                              "rolling-forcing", "longlive2", "krea", "tethercache"]
    for name in preset_names():
        options = {"encode_text": encode} if name.startswith("echo") else {}
        result = _run(model, make_policy(name, **options), blocks=(8, 2, 2, 1))
        assert torch.isfinite(result.latents).all(), name
        assert result.cache_bytes > 0, name
        assert PRESETS[name].keeps and PRESETS[name].title


def test_preset_options_and_errors():
    policy = make_policy("echo-forcing", drift_gate_lambda=2.0)
    assert policy.config.drift_gate_lambda == 2.0 and policy.config.anchor_frames == 12
    assert make_policy("self-forcing").local_attn_size == 21
    with pytest.raises(ConfigError, match="unknown cache preset 'nope'; choose one of: echo-forcing"):
        make_policy("nope")
    with pytest.raises(ConfigError, match="unknown Echo-Forcing option"):
        make_policy("echo-forcing", lambda_=3)
    with pytest.raises(ConfigError, match="drift_gate_lambda must be >= 0"):
        make_policy("echo-forcing", drift_gate_lambda=-1.0)
    with pytest.raises(ConfigError, match="unknown LongLiveCacheConfig option"):
        make_policy("longlive", anchors=3)


def test_echo_forcing_is_the_code_and_the_paper_preset_the_paper():
    code, paper = make_policy("echo-forcing").config, make_policy("echo-forcing-paper").config
    assert code == EchoMemoryConfig()
    assert (code.anchor_pool_frames, code.anchor_order, code.drift_gate_lambda) == (12, AnchorOrder.PING_PONG, 3.0)
    assert (paper.anchor_pool_frames, paper.anchor_order, paper.drift_gate_lambda) == (18, AnchorOrder.PAPER, 2.0)
    assert len(range(0, paper.recall_source_frames, paper.recall_stride)) == 5 and paper.recall_base_frame_weight == 0
    assert paper.exclude_previous_scene and paper.mode(Transition.RECALL).rope_jump.strategy is JumpStrategy.PAPER
    assert code.mode("hardcut").rope_jump.value == 45 and code.mode("hardcut").decay.first_block_weight == 0.8


# --- routing ------------------------------------------------------------------------------------------------

def test_prompt_words_idf_and_filtering_follow_the_official_rules():
    assert prompt_words("Static shot. The keeper's lamp, back in a tower") == ["keeper's", "lamp", "tower"]
    features = idf_features(["red kite", "red kite dunes", "blue sea"])
    assert torch.allclose(features[0].norm(), torch.tensor(1.0))
    assert float(features[0] @ features[1]) > float(features[0] @ features[2]) == 0.0
    prompts = ["a red kite over dunes", "a red kite at sea", "a red kite in town", "blue lake"]
    assert filtered_prompts(prompts) == ["dunes", "sea", "town", "blue lake"]  # red, kite: in >= 3 of 4; "over": stop


def test_jumps():
    candidates = [C(0, 0.9), C(1, 0.2)]
    assert similarity_jump(0.9, candidates, 0, 6) == round(6 * 0.1 / 0.9)
    assert similarity_jump(0.5, [], 0, 6) == 6 and similarity_jump(1.0, [C(0, 1.0)], 0, 6) == 0
    assert paper_recall_jump(5, 1) == 40 and paper_recall_jump(9, 1) == 45


def test_appendix_b_router():
    e = torch.eye(3)
    same_as_previous = [e[0], e[0]]
    assert auto_route(1, same_as_previous).mode is Transition.SMOOTH
    back_to_first = [e[0], e[1], e[0] * 0.9 + e[2] * 0.1]
    route = auto_route(2, [f / f.norm() for f in back_to_first])
    assert (route.mode, route.target, route.jump) == (Transition.RECALL, 0, 20)
    assert auto_route(1, [e[0], e[1]]).mode is Transition.HARD_CUT


def test_auto_transitions_and_explicit_targets_in_a_rollout(model):
    result = _run(model, EchoMemory(encode_text=encode), entries=(None, "hardcut", "recall", "auto"),
                  targets=[None, None, 1, None])
    assert result.switches[1]["recalled"] == "scene 2"  # the explicit target wins over similarity
    assert result.switches[2]["mode"] in ("smooth", "recall", "hardcut")


def test_idf_matching_needs_no_encoder(model):
    result = _run(model, EchoMemory(EchoMemoryConfig(match_method=MatchMethod.IDF)))
    assert result.switches[1]["recalled"] == "scene 1"


# --- bad input: refused before any model call ---------------------------------------------------------------

@pytest.mark.parametrize("entries, policy, kw, match", [
    ((None, "recall"), make_policy("echo-forcing-paper", encode_text=encode), {}, "no earlier scene to recall"),
    ((None, "hardcut", "recall"), EchoMemory(encode_text=encode), {"targets": [None, None, 2]}, "does not come before"),
    ((None, "smooth", "recall"), EchoMemory(encode_text=encode), {"targets": [None, None, "harbour"]},
     "neither an earlier scene's label"),
    ((None, "smooth", "recall"), EchoMemory(), {}, "needs a text encoder"),
    ((None, "hardcut"), EchoMemory(), {"targets": [None, 0]}, "names a recall target but is entered by hardcut"),
])
def test_bad_scene_plans_fail_before_any_model_call(entries, policy, kw, match):
    model = _Counting(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))
    with pytest.raises(SceneMemoryError, match=match):
        _run(model, policy, entries=entries, blocks=(1,) * len(entries), **kw)
    assert model.calls == 0


# --- the scene pool ------------------------------------------------------------------------------------------

def test_pool_round_trip_recall_across_jobs_and_immutability(model, tmp_path):
    first = _run(model, EchoMemory(encode_text=encode), labels=["keeper", "market", "lamp", "balcony"])
    pool = first.pool
    assert [e.label for e in pool.entries] == ["keeper", "market", "lamp", "balcony"]
    assert repr(pool) == "ScenePool(4 scenes: keeper, market, lamp, balcony)"
    path = pool.save(tmp_path / "pools" / "story.safetensors").path
    loaded = ScenePool.load(path, expected=pool.signature)
    assert loaded.signature == pool.signature and [e.label for e in loaded.entries] == ["keeper", "market", "lamp",
                                                                                         "balcony"]
    for a, b in zip(pool.entries, loaded.entries, strict=True):
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.recall, b.recall, strict=True))
    snapshot = [k.clone() for k, _ in loaded.entries[0].recall]

    second = _run(model, EchoMemory(encode_text=encode, pool=loaded), entries=(None, "recall"), blocks=(2, 1),
                  targets=[None, "market"])
    assert second.switches[0]["recalled"] == "market"
    assert second.pool is not loaded and len(loaded) == 4 and len(second.pool) == 6
    assert all(torch.equal(k, s) for (k, _), s in zip(loaded.entries[0].recall, snapshot, strict=True))


def test_pool_from_another_model_or_a_broken_file_is_refused(model, tmp_path):
    pool = _run(model, EchoMemory(encode_text=encode), entries=(None, "hardcut"), blocks=(1, 1)).pool
    path = pool.save(tmp_path / "p.safetensors").path
    other = PoolSignature(30, 12, 128, "bfloat16", (30, 52))
    with pytest.raises(ScenePoolError, match=r"different model or resolution .*30 layers, 12x128 heads"):
        ScenePool.load(path, expected=other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ScenePoolError, match="truncated or corrupt"):
        ScenePool.load(broken)
    with pytest.raises(ScenePoolError, match="not found"):
        ScenePool.load(tmp_path / "missing.safetensors")
    with pytest.raises(ScenePoolError, match="no model signature"):
        ScenePool().save(tmp_path / "empty.safetensors")


def test_a_pool_from_another_model_is_refused_by_the_memory_before_any_recall(model):
    pool = _run(model, EchoMemory(encode_text=encode), entries=(None, "hardcut"), blocks=(1, 1)).pool
    foreign = ScenePool(pool.entries, pool.max_size, PoolSignature(30, 12, 128, "bfloat16", (30, 52)))
    blocks_done = []
    with pytest.raises(ScenePoolError, match=r"the scene pool was saved from a different model .*this run needs 2 "):
        settings = RolloutSettings(num_frames=6, height=32, width=48, seed=9)
        rollout(model, _scenes(model, [None, "recall"], [1, 1]), settings,
                EchoMemory(encode_text=encode, pool=foreign), on_block=blocks_done.append)
    assert blocks_done == []  # refused at the end of the first block, before it is reported or a recall runs
