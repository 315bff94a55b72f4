"""Shot boundaries: going on from a boundary gives the video of a run from scratch, bit for bit, for every
preset, transition kind and noise mode; per-shot noise makes shots independent of what follows them;
stopping after a shot; bad resume points are refused before any model call."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory.presets import make_policy, preset_names
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutInputError, RolloutScene, RolloutSettings, rollout
from echo_forcing.pipeline.noise import OFFICIAL, PER_SHOT, derived_seed, shot_seeds

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
PROMPTS = ["a lighthouse keeper climbs white stairs at dusk", "a night market with red lanterns",
           "back in the white lighthouse the keeper lights the lamp", "the keeper waves from the balcony",
           "a red lantern floats over the night market"]
ENTRIES = (None, "hardcut", "recall", "smooth", "auto")
BLOCKS = (8, 2, 3, 2, 2)  # the first shot fills every preset's budget (rolling, compression, admissions)


def block_presets() -> list[str]:
    """The presets of the block loop: a joint-window preset (rolling-forcing) has no shot boundaries and no start
    latents (its window spans shots; it refuses both: tests/test_rolling_forcing.py)."""
    return [name for name in preset_names() if not getattr(make_policy(name), "rolling_window", False)]


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


def scenes(model, entries=ENTRIES, blocks=BLOCKS, prompts=PROMPTS, seeds=None, labels=None):
    emb = stand_in_text_embedding(list(prompts), CFG.text_dim)
    seeds = seeds or [None] * len(entries)
    labels = labels or [f"s{i}" for i in range(len(entries))]
    return [RolloutScene(model.encode_text(emb[i:i + 1]), blocks[i], prompts[i], entries[i], None, labels[i],
                         seeds[i]) for i in range(len(entries))]


def settings(blocks=BLOCKS, noise=OFFICIAL, seed=9):
    return RolloutSettings(num_frames=3 * sum(blocks), height=32, width=48, seed=seed, noise=noise)


def policy(preset):
    return make_policy(preset, match_method="idf") if preset.startswith("echo") else make_policy(preset)


def entries_for(preset):
    """Recall and auto need a scene memory; the baselines get smooth / hard cut (what they react to)."""
    return ENTRIES if preset.startswith("echo") else (None, "hardcut", "smooth", "smooth", "hardcut")


def assert_same_pool(a, b):
    if a is None or b is None:
        assert a is b
        return
    assert a.signature == b.signature and len(a) == len(b)
    for x, y in zip(a.entries, b.entries, strict=True):
        assert (x.label, x.prompt, x.scene, x.source) == (y.label, y.prompt, y.scene, y.source)
        for name in ("recall", "select"):
            fx, fy = getattr(x, name), getattr(y, name)
            assert (fx is None) == (fy is None)
            if fx is not None:
                assert all(torch.equal(kx, ky) and torch.equal(vx, vy)
                           for (kx, vx), (ky, vy) in zip(fx, fy, strict=True))
        assert (x.feature is None) == (y.feature is None)
        if x.feature is not None:
            assert torch.equal(x.feature, y.feature)


def assert_same_run(got, want):
    assert torch.equal(got.latents, want.latents)
    assert got.switches == want.switches
    assert [(r.slots, r.notes) for r in got.block_reports] == [(r.slots, r.notes) for r in want.block_reports]
    assert_same_pool(got.pool, want.pool)


@pytest.mark.parametrize("noise", [OFFICIAL, PER_SHOT])
@pytest.mark.parametrize("preset", block_presets())
def test_going_on_from_every_boundary_equals_the_run_from_scratch(model, preset, noise):
    plan, run = scenes(model, entries_for(preset)), settings(noise=noise)
    boundaries = []
    full = rollout(model, plan, run, policy(preset), on_boundary=boundaries.append)
    assert [b.shot for b in boundaries] == [1, 2, 3, 4, 5]
    assert [b.block for b in boundaries] == [8, 10, 13, 15, 17]
    for b in boundaries:
        assert b.latents.device.type == "cpu" and torch.equal(b.latents, full.latents[:, :b.frames])
        before = b.latents.clone()
        again = rollout(model, plan, run, policy(preset), resume_from=b)
        assert_same_run(again, full)
        assert (again.reused_shots, again.reused_blocks) == (b.shot, b.block)
        assert again.block_seconds[:b.block] == list(b.block_seconds)
        assert torch.equal(b.latents, before)  # a boundary is never changed by a run that uses it


@pytest.mark.parametrize("noise", [OFFICIAL, PER_SHOT])
@pytest.mark.parametrize("entry", ["smooth", "hardcut", "recall", "auto"])
def test_each_transition_kind_goes_on_from_the_boundary_before_it(model, entry, noise):
    plan = scenes(model, (None, "hardcut", entry), (8, 2, 3), PROMPTS[:3])
    run = settings((8, 2, 3), noise)
    boundaries = []
    full = rollout(model, plan, run, policy("echo-forcing"), on_boundary=boundaries.append)
    assert full.switches[-1]["mode"] in (entry, "smooth", "hardcut", "recall")
    again = rollout(model, plan, run, policy("echo-forcing"), resume_from=boundaries[1])
    assert_same_run(again, full)


def test_editing_the_last_shot_reuses_the_shots_before_it(model):
    """Per-shot noise: a new prompt (and length) for the last shot, generated from the old run's boundary,
    gives exactly the new script's video from scratch."""
    entries = (None, "smooth", "hardcut", "smooth")
    old_plan = scenes(model, entries, (8, 2, 3, 2), PROMPTS[:4])
    boundaries = []
    rollout(model, old_plan, settings((8, 2, 3, 2), PER_SHOT), policy("echo-forcing"), on_boundary=boundaries.append)
    new_prompts = [*PROMPTS[:3], "a storm breaks over the sea"]
    new_plan = scenes(model, entries, (8, 2, 3, 4), new_prompts)
    fresh = rollout(model, new_plan, settings((8, 2, 3, 4), PER_SHOT), policy("echo-forcing"))
    reused = rollout(model, new_plan, settings((8, 2, 3, 4), PER_SHOT), policy("echo-forcing"),
                     resume_from=boundaries[2])
    assert_same_run(reused, fresh)


def test_extending_a_finished_video_equals_one_long_run(model):
    """With recall matching over the shots so far, a recall never depends on later prompts: appending shots
    to a finished video (a recall among its shots) gives the long video exactly."""
    so_far = make_policy("echo-forcing", match_method="idf", match_scope="so-far")
    short_plan = scenes(model, ENTRIES[:3], BLOCKS[:3], PROMPTS[:3])
    ends = []
    short = rollout(model, short_plan, settings(BLOCKS[:3], PER_SHOT), so_far, on_boundary=ends.append)
    end = ends[-1]
    assert end.shot == 3 and torch.equal(end.latents, short.latents)
    long_plan = scenes(model, (*ENTRIES[:3], "smooth"), (*BLOCKS[:3], 2), PROMPTS[:4])
    long = rollout(model, long_plan, settings((*BLOCKS[:3], 2), PER_SHOT), so_far)
    extended = rollout(model, long_plan, settings((*BLOCKS[:3], 2), PER_SHOT), so_far, resume_from=end)
    assert_same_run(extended, long)
    with pytest.raises(ValueError, match="other memory settings"):
        rollout(model, long_plan, settings((*BLOCKS[:3], 2), PER_SHOT), policy("echo-forcing-paper"),
                resume_from=end)


def test_whole_video_matching_lets_a_later_prompt_change_an_earlier_recall(model):
    """The official scope computes the matching statistics over every prompt: the recall of shot 3 has
    another similarity once a fourth prompt exists (why a plan's reuse key holds every prompt after a recall)."""
    three = rollout(model, scenes(model, ENTRIES[:3], BLOCKS[:3], PROMPTS[:3]), settings(BLOCKS[:3], PER_SHOT),
                    policy("echo-forcing"))
    four = rollout(model, scenes(model, ENTRIES[:4], BLOCKS[:4], PROMPTS[:4]), settings(BLOCKS[:4], PER_SHOT),
                   policy("echo-forcing"))
    assert three.switches[1]["similarity"] != four.switches[1]["similarity"]
    so_far = make_policy("echo-forcing", match_method="idf", match_scope="so-far")
    three = rollout(model, scenes(model, ENTRIES[:3], BLOCKS[:3], PROMPTS[:3]), settings(BLOCKS[:3], PER_SHOT), so_far)
    four = rollout(model, scenes(model, ENTRIES[:4], BLOCKS[:4], PROMPTS[:4]), settings(BLOCKS[:4], PER_SHOT), so_far)
    assert three.switches[1] == four.switches[1]
    assert torch.equal(three.latents, four.latents[:, :three.latents.shape[1]])


def test_per_shot_noise_makes_shots_independent_of_what_follows(model):
    a = rollout(model, scenes(model, ENTRIES[:3], (8, 2, 3), PROMPTS[:3]), settings((8, 2, 3), PER_SHOT),
                policy("echo-forcing"))
    other = [*PROMPTS[:2], "a desert at noon", "snow on the desert"]
    b = rollout(model, scenes(model, (None, "hardcut", "hardcut", "smooth"), (8, 2, 5, 2), other),
                settings((8, 2, 5, 2), PER_SHOT), policy("echo-forcing"))
    assert torch.equal(a.latents[:, :30], b.latents[:, :30])
    assert not torch.equal(a.latents[:, 30:33], b.latents[:, 30:33])
    # the official order draws the whole noise at once: another total length changes the first shot too
    c = rollout(model, scenes(model, ENTRIES[:3], (8, 2, 3), PROMPTS[:3]), settings((8, 2, 3), OFFICIAL),
                policy("echo-forcing"))
    d = rollout(model, scenes(model, (None, "hardcut", "hardcut"), (8, 2, 4), PROMPTS[:3]),
                settings((8, 2, 4), OFFICIAL), policy("echo-forcing"))
    assert not torch.equal(c.latents[:, :3], d.latents[:, :3])


def test_a_shot_seed_rerolls_that_shot_alone(model):
    base = rollout(model, scenes(model, ENTRIES[:3], (8, 2, 3), PROMPTS[:3]), settings((8, 2, 3), PER_SHOT),
                   policy("echo-forcing"))
    reroll = rollout(model, scenes(model, ENTRIES[:3], (8, 2, 3), PROMPTS[:3], seeds=[None, 1234, None]),
                     settings((8, 2, 3), PER_SHOT), policy("echo-forcing"))
    assert torch.equal(base.latents[:, :24], reroll.latents[:, :24])
    assert not torch.equal(base.latents[:, 24:30], reroll.latents[:, 24:30])
    assert shot_seeds(9, [None, 1234, None]) == [derived_seed(9, 0), 1234, derived_seed(9, 2)]
    assert derived_seed(9, 0) != derived_seed(9, 1) and derived_seed(9, 0) == derived_seed(9, 0)


def test_the_official_noise_order_is_unchanged(model):
    """The official mode draws exactly what the rollout drew before noise modes existed (parity fixtures)."""
    run = settings((3,), OFFICIAL, seed=5)
    gen = torch.Generator().manual_seed(5)
    first = torch.randn(run.noise_shape(), generator=gen)
    from echo_forcing.pipeline.noise import BlockNoise
    noise = BlockNoise(OFFICIAL, 5, run.noise_shape())
    assert torch.equal(noise.initial(3, 3, 0, 1), first[:, 3:6])
    assert torch.equal(noise.step(3), torch.randn((3, 16, 4, 6), generator=gen).unflatten(0, (1, 3)))


def test_stop_after_a_shot_returns_the_shots_done_and_a_boundary_to_go_on(model):
    plan, run = scenes(model), settings(noise=PER_SHOT)
    full = rollout(model, plan, run, policy("echo-forcing"))
    boundaries = []
    stopped = rollout(model, plan, run, policy("echo-forcing"), on_boundary=boundaries.append,
                      stop_after=lambda shot: shot == 1)
    assert stopped.shots_done == 2 and stopped.latents.shape[1] == 30
    assert torch.equal(stopped.latents, full.latents[:, :30])
    assert [b.shot for b in boundaries] == [1, 2]
    went_on = rollout(model, plan, run, policy("echo-forcing"), resume_from=boundaries[-1])
    assert_same_run(went_on, full)


def test_the_echo_snapshot_keeps_only_what_a_switch_can_read(model):
    boundaries = []
    rollout(model, scenes(model, ENTRIES[:2], (8, 2), PROMPTS[:2]), settings((8, 2)), policy("echo-forcing"),
            on_boundary=boundaries.append)
    snap = boundaries[0].memory
    frame = 6 * CFG.num_heads * 128 * 4  # tokens x heads x head_dim x float32
    kept = 2 * 2 * frame * CFG.num_layers  # 2 frames (smooth carries 2), keys and values, every layer
    assert kept <= snap.nbytes < kept + 4096
    layer_cache = 2 * 21 * frame * CFG.num_layers
    assert snap.nbytes < layer_cache / 5


def test_bad_resume_points_are_refused_before_any_model_call(model):
    plan, run = scenes(model), settings(noise=PER_SHOT)
    boundaries = []
    rollout(model, plan, run, policy("echo-forcing"), on_boundary=boundaries.append)
    b = boundaries[1]
    with pytest.raises(RolloutInputError, match="only 1 shots"):
        rollout(model, plan[:1], settings(BLOCKS[:1], PER_SHOT), policy("echo-forcing"), resume_from=b)
    with pytest.raises(RolloutInputError, match="ends at block 10"):
        longer = [dataclasses.replace(plan[0], num_blocks=9), *plan[1:]]
        rollout(model, longer, settings((9, *BLOCKS[1:]), PER_SHOT), policy("echo-forcing"), resume_from=b)
    with pytest.raises(RolloutInputError, match="'per-shot' noise"):
        rollout(model, plan, settings(noise=OFFICIAL), policy("echo-forcing"), resume_from=b)
    official = []
    rollout(model, plan, settings(noise=OFFICIAL), policy("echo-forcing"), on_boundary=official.append)
    with pytest.raises(RolloutInputError, match="depends on the video's length"):
        rollout(model, [*plan, plan[-1]], settings((*BLOCKS, 2), OFFICIAL), policy("echo-forcing"),
                resume_from=official[1])
    with pytest.raises(RolloutInputError, match="latents"):
        rollout(model, plan, RolloutSettings(num_frames=3 * sum(BLOCKS), height=32, width=32, seed=9,
                                             noise=PER_SHOT), policy("echo-forcing"), resume_from=b)
