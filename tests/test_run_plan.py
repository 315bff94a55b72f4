"""The run plan (checks before any model is loaded, reuse keys), the shot cache and generating from the longest
cached prefix: an edit regenerates only the shots from the edit on, and the video equals a fresh run's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import PresetChoice, ScenePool
from echo_forcing.memory.echo_memory import SceneMemoryError
from echo_forcing.memory.scene_pool import PoolEntry, PoolSignature
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import (
    OFFICIAL,
    PER_SHOT,
    PrefixCache,
    PrefixCacheError,
    RolloutInputError,
    SceneList,
    build_report,
    generate,
    plan_run,
    report_text,
)
from echo_forcing.pipeline.prefix_cache import budget_bytes

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
PROMPTS = ["a lighthouse keeper climbs white stairs at dusk", "a night market with red lanterns",
           "back in the white lighthouse the keeper lights the lamp", "the keeper waves from the balcony"]
SHOTS = [(PROMPTS[0], 6.0, "smooth", "", "tower"), (PROMPTS[1], 1.5, "hard cut", "", "market"),
         (PROMPTS[2], 1.5, "recall", "tower", "lamp"), (PROMPTS[3], 1.5, "smooth", "", "")]
"""Blocks 8, 2, 2, 2: the first shot fills the 21-frame cache."""
IDF = PresetChoice(recall_matching="idf")
SO_FAR = PresetChoice(recall_matching="idf", recall_scope="shots so far")


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


def shot_list(shots=SHOTS, seeds=None) -> SceneList:
    out = SceneList()
    seeds = seeds or [None] * len(shots)
    for (prompt, seconds, transition, target, label), seed in zip(shots, seeds, strict=True):
        out = out.then(prompt, stand_in_text_embedding([prompt], CFG.text_dim), seconds, transition, target, label,
                       seed=seed)
    return out


def plan(shots=None, **kw):
    options = {"seed": 9, "width": 48, "height": 32, "fps": 16, "dtype": torch.float32, "choice": IDF, **kw}
    return plan_run(shots if shots is not None else shot_list(), CFG, **options)


def never():
    raise AssertionError("the model must not be loaded")


# ---- checks before work -----------------------------------------------------------------------------------


def test_the_plan_refuses_bad_runs_before_any_model_is_loaded():
    with pytest.raises(RolloutInputError, match="no shots"):
        plan(SceneList())
    with pytest.raises(RolloutInputError, match="16 wide but the model takes 32"):
        plan_run(shot_list(), dataclasses.replace(CFG, text_dim=32), dtype=torch.float32, width=48, height=32)
    with pytest.raises(RolloutInputError, match="only 4 shots"):
        plan(stop_after_shot=5)
    for bad in (-1, 1.5, True):
        with pytest.raises(RolloutInputError, match="stop_after_shot"):
            plan(stop_after_shot=bad)
    with pytest.raises(RolloutInputError, match="noise must be one of"):
        plan(noise="random")
    with pytest.raises(RolloutInputError, match="multiple of 16"):
        plan(width=50)
    with pytest.raises(SceneMemoryError, match="no earlier scene to recall other than the previous one"):
        plan(shot_list([SHOTS[0], (PROMPTS[2], 1.0, "recall", "", "")]),
             choice=PresetChoice(preset="echo-forcing-paper", recall_matching="idf"))
    with pytest.raises(ValueError, match="'nowhere': no earlier scene has that label"):
        plan(shot_list([SHOTS[0], (PROMPTS[2], 1.0, "recall", "nowhere", "")]))
    with pytest.raises(SceneMemoryError, match="needs a text encoder"):
        plan(choice=PresetChoice())  # 'similar' matching with recalls and no encoder


def test_the_plan_holds_blocks_seeds_and_notes():
    p = plan(choice=PresetChoice(preset="self-forcing", recall_matching="idf"), noise=PER_SHOT,
             shots=shot_list([SHOTS[0], SHOTS[1]], seeds=[None, 77]))
    assert p.blocks == (8, 2) and p.settings.num_frames == 30
    assert p.seeds[1] == 77 and p.seeds[0] != 77
    assert p.notes == ("option(s) recall_matching do not apply to the self-forcing preset; ignored",)
    assert repr(p) == "RunPlan(2 shots, 10 blocks, self-forcing, per-shot noise)"


# ---- reuse keys -------------------------------------------------------------------------------------------


def changed(keys_a, keys_b) -> list[bool]:
    return [a != b for a, b in zip(keys_a, keys_b, strict=True)]


def edit(index, **changes) -> SceneList:
    shots = [list(s) for s in SHOTS]
    fields = {"prompt": 0, "seconds": 1, "transition": 2, "target": 3, "label": 4}
    for name, value in changes.items():
        shots[index][fields[name]] = value
    return shot_list([tuple(s) for s in shots])


@pytest.mark.parametrize("name,value,first", [
    ("prompt", "a new prompt about the balcony", 4),
    ("seconds", 3.0, 4),
    ("label", "wave", 4),
])
def test_a_change_to_the_last_shot_keeps_every_earlier_key(name, value, first):
    base = plan(choice=SO_FAR).boundary_keys("model")
    other = plan(edit(3, **{name: value}), choice=SO_FAR).boundary_keys("model")
    assert changed(base, other) == [k >= first for k in range(1, 5)]


@pytest.mark.parametrize("index,name,value", [
    (1, "prompt", "a quiet night market"), (1, "seconds", 3.0), (1, "transition", "smooth"),
    (2, "target", "2"), (1, "label", "bazaar"),
])
def test_a_change_to_a_middle_shot_invalidates_it_and_every_later_key(index, name, value):
    base = plan(choice=SO_FAR).boundary_keys("model")
    other = plan(edit(index, **{name: value}), choice=SO_FAR).boundary_keys("model")
    assert changed(base, other) == [k > index for k in range(1, 5)]


def test_the_conditioning_and_the_shot_seed_are_part_of_a_shot():
    base = plan(choice=SO_FAR).boundary_keys("model")
    shots = shot_list()
    texts = list(shots.shots)
    texts[2] = dataclasses.replace(texts[2], text=texts[2].text + 1e-3)
    assert changed(base, plan(SceneList(tuple(texts)), choice=SO_FAR).boundary_keys("model")) == [
        False, False, True, True]
    reseeded = shot_list(seeds=[None, None, 5, None])
    assert changed(base, plan(reseeded, choice=SO_FAR).boundary_keys("model")) == [False, False, True, True]


@pytest.mark.parametrize("change", [
    {"model_key": "another model"}, {"dtype": torch.bfloat16}, {"choice": PresetChoice(recall_matching="idf",
                                                                                         recall_scope="shots so far",
                                                                                         compression="off")},
    {"choice": PresetChoice(preset="echo-forcing-paper", recall_matching="idf", recall_scope="shots so far")},
    {"width": 64}, {"steps": 3}, {"shift": 3.0}, {"noise": OFFICIAL}, {"pool": "pool"},
])
def test_every_global_part_invalidates_every_key(change):
    change = dict(change)
    key = change.pop("model_key", "model")
    if change.get("pool") == "pool":
        frames = tuple((torch.zeros(6, 2, 128), torch.zeros(6, 2, 128)) for _ in range(2))
        change["pool"] = ScenePool((PoolEntry("old", "an old scene", frames, None, None, None, "old"),),
                                   signature=PoolSignature.of(2, 2, 128, torch.float32, (2, 3)))
    base = plan(choice=SO_FAR).boundary_keys("model")
    other = plan(**{"choice": SO_FAR, **change}).boundary_keys(key)
    assert changed(base, other) == [True] * 4


def test_the_official_noise_order_keys_hold_the_seed_and_the_length():
    base = plan(choice=SO_FAR, noise=OFFICIAL).boundary_keys("model")
    assert all(changed(base, plan(choice=SO_FAR, noise=OFFICIAL, seed=10).boundary_keys("model")))
    assert all(changed(base, plan(edit(3, seconds=2.0), choice=SO_FAR, noise=OFFICIAL).boundary_keys("model")))
    # per-shot noise: the video's seed only matters through the shots' derived seeds
    per_shot = plan(choice=SO_FAR).boundary_keys("model")
    assert all(changed(per_shot, plan(choice=SO_FAR, seed=10).boundary_keys("model")))


def test_whole_video_matching_ties_keys_after_a_recall_to_every_prompt():
    base = plan().boundary_keys("model")
    other = plan(edit(3, prompt="a new prompt about the balcony")).boundary_keys("model")
    assert changed(base, other) == [False, False, True, True]  # shot 3 recalls: its boundary needs all prompts
    assert plan().boundary_keys("model", "encoder a") == plan().boundary_keys("model", "encoder b")  # idf
    similar = PresetChoice()
    enc = lambda prompts: torch.ones(len(prompts), 2, 8)  # noqa: E731
    a = plan(choice=similar, encode_text=enc).boundary_keys("model", "encoder a")
    assert all(changed(a, plan(choice=similar, encode_text=enc).boundary_keys("model", "encoder b")))


# ---- generating from the cache ----------------------------------------------------------------------------


def fresh(model, p):
    return generate(p, lambda: model)


def test_an_edit_of_the_last_shot_generates_only_that_shot_and_equals_a_fresh_run(model):
    cache = PrefixCache(budget_bytes(1.0))
    first = plan(choice=SO_FAR)
    generate(first, lambda: model, cache=cache, model_key="m")
    assert len(cache) == 4
    edited = plan(edit(3, prompt="the keeper waves goodbye from the balcony"), choice=SO_FAR)
    loads = []
    result = generate(edited, lambda: loads.append(1) or model, cache=cache, model_key="m")
    assert loads == [1] and (result.reused_shots, result.reused_blocks) == (3, 12)
    want = fresh(model, edited)
    assert torch.equal(result.latents, want.latents) and result.switches == want.switches
    report = build_report(edited, result)
    assert [s["state"] for s in report["shots"]] == ["reused"] * 3 + ["generated"]
    assert report["reuse"]["reused_shots"] == 3 and report["reuse"]["generated_blocks"] == 2
    assert report["reuse"]["seconds_saved"] == round(sum(result.block_seconds[:12]), 3)
    assert "reused shots 1-3 (12 blocks" in report_text(report)
    # the same plan again: every shot is cached, no model is loaded, the video is the same
    again = generate(edited, never, cache=cache, model_key="m")
    assert torch.equal(again.latents, want.latents) and again.reused_shots == 4


def test_an_edit_of_shot_3_of_six_regenerates_shots_3_to_6(model):
    six = [*SHOTS, (PROMPTS[1], 1.5, "recall", "market", ""), (PROMPTS[0], 1.5, "smooth", "", "")]
    cache = PrefixCache(budget_bytes(1.0))
    generate(plan(shot_list(six), choice=SO_FAR), lambda: model, cache=cache, model_key="m")
    six[2] = (PROMPTS[2] + " and smiles", 1.5, "recall", "tower", "lamp")
    edited = plan(shot_list(six), choice=SO_FAR)
    result = generate(edited, lambda: model, cache=cache, model_key="m")
    assert result.reused_shots == 2
    assert torch.equal(result.latents, fresh(model, edited).latents)


def test_another_model_key_reuses_nothing(model):
    cache = PrefixCache(budget_bytes(1.0))
    generate(plan(choice=SO_FAR), lambda: model, cache=cache, model_key="m")
    assert generate(plan(choice=SO_FAR), lambda: model, cache=cache, model_key="other").reused_shots == 0


def test_stop_after_a_shot_then_go_on(model):
    cache = PrefixCache(budget_bytes(1.0))
    full = fresh(model, plan(choice=SO_FAR))
    stopped_plan = plan(choice=SO_FAR, stop_after_shot=2)
    stopped = generate(stopped_plan, lambda: model, cache=cache, model_key="m")
    assert stopped.shots_done == 2 and torch.equal(stopped.latents, full.latents[:, :30])
    report = build_report(stopped_plan, stopped)
    assert [s["state"] for s in report["shots"]] == ["generated", "generated", "not generated", "not generated"]
    assert report["video"]["latent_frames"] == 30 and "stopped after shot 2 of 4" in report["notes"][-1]
    went_on = generate(plan(choice=SO_FAR), lambda: model, cache=cache, model_key="m")
    assert went_on.reused_shots == 2 and torch.equal(went_on.latents, full.latents)
    # a stop asked for while the run goes (the route), and a smaller stop than what is cached
    asked = generate(plan(choice=SO_FAR, seed=10), lambda: model, stop_requested=lambda shot: True)
    assert asked.shots_done == 1
    heard = []
    later = generate(plan(choice=SO_FAR, seed=11), lambda: model,
                     stop_requested=lambda shot: heard.append(shot) or shot + 1 >= 3)
    assert later.shots_done == 3 and heard == [0, 1, 2]  # asked with the index of each shot just finished
    assert generate(stopped_plan, never, cache=cache, model_key="m").shots_done == 2


# ---- the cache itself -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boundaries(model):
    found = []
    generate(plan(choice=SO_FAR), lambda: model, on_boundary=found.append)
    return found


def test_the_cache_keeps_its_budget_and_evicts_the_least_recently_used(boundaries):
    sizes = [b.nbytes for b in boundaries]
    pool = boundaries[-1].pool_bytes
    cache = PrefixCache(sizes[0] + sizes[1] + pool)
    assert cache.put("a", boundaries[0]) and cache.put("b", boundaries[1])
    assert cache.nbytes <= cache.budget
    cache.get("a")  # a is now the most recently used
    assert cache.put("c", boundaries[2]) is (sizes[2] + pool <= cache.budget)
    assert cache.nbytes <= cache.budget and "b" not in cache
    assert not PrefixCache(sizes[3] // 2).put("d", boundaries[3])  # larger than the whole budget: not kept
    cache.resize(1)
    assert len(cache) == 0 and cache.nbytes == 0


def test_scene_pool_frames_shared_by_boundaries_are_counted_once(boundaries):
    cache = PrefixCache(2**34)
    for i, b in enumerate(boundaries):
        cache.put(str(i), b)
    assert cache.nbytes == sum(b.nbytes for b in boundaries) + boundaries[-1].pool_bytes


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), True, "8"])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(PrefixCacheError):
        budget_bytes(bad)
    with pytest.raises(PrefixCacheError):
        PrefixCache(bad)


def test_a_cache_folder_keeps_boundaries_between_processes_within_its_budget(model, boundaries, tmp_path):
    """What the command line relies on: a new cache on the same folder (a later process) finds the boundaries;
    the folder stays within its budget; damaged files and files that are not the cache's are left or dropped
    safely."""
    keys = plan(choice=SO_FAR).boundary_keys("m")
    first = PrefixCache(2**30, tmp_path, 2**30)
    for key, b in zip(keys, boundaries, strict=True):
        first.put(key, b)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{k}.safetensors" for k in keys)
    later = PrefixCache(2**30, tmp_path, 2**30)
    assert len(later) == 0
    found = later.longest(keys)
    assert found is not None and found.shot == 4 and torch.equal(found.latents, boundaries[-1].latents)
    edited = plan(edit(3, prompt="the keeper waves goodbye"), choice=SO_FAR)
    result = generate(edited, lambda: model, cache=PrefixCache(2**30, tmp_path, 2**30), model_key="m")
    assert result.reused_shots == 3 and torch.equal(result.latents, fresh(model, edited).latents)
    # a damaged file counts as missing and is removed; other files in the folder are never touched
    victim = tmp_path / f"{keys[0]}.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    (tmp_path / "notes.txt").write_text("mine")
    assert PrefixCache(2**30, tmp_path, 2**30).get(keys[0]) is None and not victim.exists()
    sizes = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    PrefixCache(2**30, tmp_path, sizes // 2)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= sizes // 2
    assert (tmp_path / "notes.txt").read_text() == "mine"
