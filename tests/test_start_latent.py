"""A shot that starts from latent frames (an encoded image, or the last frames of a clip).

The frames are the shot's first frames, in the output and in the memory as clean context: a run whose shot
starts from the frames an earlier run generated there is that earlier run, bit for bit, for every preset (the
same context passes; per-shot noise gives every later block the same noise; with the official order given
frames draw none, as the official code's start frames). A start that ends inside a block
holds its frames clean while the rest of the block is denoised. Bad start latents are refused before any
model call, with what was expected."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import PresetChoice
from echo_forcing.memory.presets import make_policy, preset_names
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutInputError, RolloutScene, RolloutSettings, rollout, to_comfy_latent
from echo_forcing.pipeline.noise import OFFICIAL, PER_SHOT
from echo_forcing.pipeline.run_plan import generate, plan_run
from echo_forcing.pipeline.scene_list import SceneList, SceneListError, start_from_comfy_latent
from echo_forcing.pipeline.story import Story

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
PROMPTS = ["a lighthouse keeper climbs white stairs at dusk", "a night market with red lanterns",
           "back in the white lighthouse the keeper lights the lamp"]
BLOCKS = (8, 2, 3)  # the first shot fills every preset's budget
NOISY_QUERY_COMPRESSION = ("deep-forcing",)
"""Presets whose full cache is compressed against the noisy queries of a block's first call."""


def block_presets() -> list[str]:
    """The presets of the block loop: a joint-window preset (rolling-forcing) has no shot boundaries and no start
    latents (its window spans shots; it refuses both: tests/test_rolling_forcing.py)."""
    return [name for name in preset_names() if not getattr(make_policy(name), "rolling_window", False)]


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


class _Counting(CausalWan):
    def __init__(self, dit):
        super().__init__(dit)
        self.calls = []

    def __call__(self, latents, timesteps, text, memories, call):
        self.calls.append((call, timesteps.clone()))
        return super().__call__(latents, timesteps, text, memories, call)


def _policy(preset):
    return make_policy(preset, match_method="idf") if preset.startswith("echo") else make_policy(preset)


def _entries(preset):
    return (None, "hardcut", "recall") if preset.startswith("echo") else (None, "hardcut", "smooth")


def _scenes(model, entries, starts=(None, None, None)):
    emb = stand_in_text_embedding(PROMPTS, CFG.text_dim)
    return [RolloutScene(model.encode_text(emb[i:i + 1]), BLOCKS[i], PROMPTS[i], entries[i], None, f"s{i}",
                         start=starts[i]) for i in range(3)]


def _settings(noise, batch=1):
    return RolloutSettings(num_frames=3 * sum(BLOCKS), height=32, width=48, seed=9, noise=noise, batch_size=batch)


@pytest.mark.parametrize("preset", block_presets())
def test_starting_from_the_frames_a_run_made_gives_that_run(model, preset):
    """Shot 1 starts from the 6 frames (2 whole blocks) and shot 3 from the 3 frames (1 block) that a run without
    start latents generated there: the video, the switches and the scene pool are that run's, bit for bit (with
    per-shot noise every block has its own noise; with the official order given frames draw none, so the later
    blocks take other noise: tests/test_parity_causal_forcing.py checks that order against the official code).

    Deep Forcing compresses its full cache against the timestep-1000 queries of a block's first call; a block
    given whole has only its clean pass, so there the claim holds for a start into a cache with room (shot 1)."""
    entries, noise = _entries(preset), PER_SHOT
    full = rollout(model, _scenes(model, entries), _settings(noise), _policy(preset))
    third = 3 * (BLOCKS[0] + BLOCKS[1])
    later = None if preset in NOISY_QUERY_COMPRESSION else full.latents[:, third:third + 3].clone()
    starts = (full.latents[:, :6].clone(), None, later)
    again = rollout(model, _scenes(model, entries, starts), _settings(noise), _policy(preset))
    assert torch.equal(again.latents, full.latents)
    assert again.switches == full.switches
    if later is None:  # the start still opens shot 3, as given
        mid = torch.randn(1, 3, 16, 4, 6)
        other = rollout(model, _scenes(model, entries, (None, None, mid)), _settings(noise), _policy(preset))
        assert torch.equal(other.latents[:, third:third + 3], mid) and bool(torch.isfinite(other.latents).all())
    if full.pool is not None:
        for a, b in zip(again.pool.entries, full.pool.entries, strict=True):
            assert all(torch.equal(x, y) for (ka, va), (kb, vb) in zip(a.recall, b.recall, strict=True)
                       for x, y in ((ka, kb), (va, vb)))


def test_with_the_official_order_given_frames_draw_no_noise(model):
    """The generated frames take the noise stream in order, as the official initial_latent runs draw it."""
    from echo_forcing.pipeline.noise import BlockNoise

    shape = (1, 9, 16, 4, 6)
    plain = BlockNoise(OFFICIAL, 7, shape)
    started = BlockNoise(OFFICIAL, 7, shape, given=[True] * 4)
    assert torch.equal(started.initial(0, 4, 0, 0), torch.zeros(1, 4, 16, 4, 6))
    assert torch.equal(started.initial(4, 5, 0, 0), plain.initial(0, 5, 0, 0))
    generator = torch.Generator().manual_seed(7)
    torch.randn((1, 5, 16, 4, 6), generator=generator)  # the step stream follows the (shorter) initial draw
    assert torch.equal(started.step(3), torch.randn((3, 16, 4, 6), generator=generator).unsqueeze(0))


def test_whole_start_blocks_are_only_context_passes(model):
    counting = _Counting(model.dit)
    start = torch.randn(1, 6, 16, 4, 6)
    result = rollout(counting, _scenes(counting, (None, "hardcut", "recall"), (start, None, None)),
                     _settings(OFFICIAL), _policy("echo-forcing"))
    first = [(c.start_frame, c.context_pass) for c, _ in counting.calls[:2]]
    assert first == [(0, True), (3, True)]  # no denoising call for the start's two blocks
    assert len(counting.calls) == 2 + 5 * (sum(BLOCKS) - 2)
    assert torch.equal(result.latents[:, :6], start)
    assert bool(torch.isfinite(result.latents).all())


@pytest.mark.parametrize("frames", [1, 2, 4])
def test_a_start_inside_a_block_stays_clean_while_the_rest_is_denoised(model, frames):
    """An image (1 latent frame) or a start of 2 or 4 frames: the block it ends in is denoised with the start's
    frames at timestep 0 in every call, and they come out as given."""
    counting = _Counting(model.dit)
    start = torch.randn(1, frames, 16, 4, 6)
    result = rollout(counting, _scenes(counting, (None, "hardcut", "recall"), (start, None, None)),
                     _settings(PER_SHOT), _policy("echo-forcing"))
    assert torch.equal(result.latents[:, :frames], start)
    partial_block = frames // 3
    calls = [(c, t) for c, t in counting.calls if c.start_frame == 3 * partial_block]
    assert [c.context_pass for c, _ in calls] == [False] * 4 + [True]
    held = frames % 3
    for c, t in calls:
        assert bool((t[:, :held] == 0).all())
        if not c.context_pass:
            assert bool((t[:, held:] > 0).all())
    without = rollout(model, _scenes(model, (None, "hardcut", "recall")), _settings(PER_SHOT),
                      _policy("echo-forcing"))
    assert not torch.equal(result.latents[:, frames:], without.latents[:, frames:])
    assert bool(torch.isfinite(result.latents).all())


def test_one_start_serves_every_video_of_a_batch(model):
    start = torch.randn(1, 3, 16, 4, 6)
    emb = stand_in_text_embedding(PROMPTS[:1], CFG.text_dim).expand(2, -1, -1)
    scene = RolloutScene(model.encode_text(emb), 3, PROMPTS[0], start=start)
    result = rollout(model, [scene], RolloutSettings(num_frames=9, height=32, width=48, seed=1, batch_size=2),
                     _policy("self-forcing"))
    assert torch.equal(result.latents[0, :3], start[0]) and torch.equal(result.latents[1, :3], start[0])


@pytest.mark.parametrize(("start", "match"), [
    (torch.zeros(1, 3, 4, 4, 6), r"shot 3's start latent has 4 channels but the model reads 16"),
    (torch.zeros(1, 3, 16, 8, 6), r"is 48x64 pixels \(8x6 latents\) but the video is 48x32 \(4x6\)"),
    (torch.zeros(1, 10, 16, 4, 6), r"has 10 latent frames but the shot has 9 \(3 blocks\)"),
    (torch.zeros(3, 3, 16, 4, 6), r"holds 3 videos"),
    (torch.zeros(1, 3, 16, 4), r"must be video latents \[batch, frames, 16, 4, 6\], got \[1, 3, 16, 4\]"),
    (torch.full((1, 3, 16, 4, 6), float("nan")), "NaN or infinite"),
])
def test_bad_start_latents_are_refused_before_any_model_call(model, start, match):
    counting = _Counting(model.dit)
    scenes = _scenes(counting, (None, "hardcut", "recall"), (None, None, start))
    with pytest.raises(RolloutInputError, match=match):
        rollout(counting, scenes, _settings(PER_SHOT), _policy("echo-forcing"))
    assert counting.calls == []


def test_rollout_scene_keeps_its_start_in_repr(model):
    scene = dataclasses.replace(_scenes(model, (None, "hardcut", "recall"))[0], start=torch.zeros(1, 1, 16, 4, 6))
    assert "start 1 frames" in repr(scene)


# ---- the shot list, the plan, stories ------------------------------------------------------------------------

def _shot_list(starts=(None, None, None)) -> SceneList:
    out = SceneList()
    for (prompt, seconds, transition, label), start in zip(PLAN_SHOTS, starts, strict=True):
        out = out.then(prompt, stand_in_text_embedding([prompt], CFG.text_dim), seconds, transition, "", label,
                       start=start)
    return out


PLAN_SHOTS = [(PROMPTS[0], 6.0, "smooth", "tower"), (PROMPTS[1], 1.5, "hard cut", "market"),
              (PROMPTS[2], 1.5, "recall", "")]


def _plan(shots, **kw):
    options = {"seed": 9, "width": 48, "height": 32, "fps": 16, "dtype": torch.float32,
               "choice": PresetChoice(recall_matching="idf"), **kw}
    return plan_run(shots, CFG, **options)


def test_a_core_latent_becomes_a_normalised_start_and_bad_ones_say_what_to_connect():
    start = torch.randn(1, 3, 16, 4, 6)
    back = start_from_comfy_latent({"samples": to_comfy_latent(start)}, 2)
    assert back.shape == start.shape and torch.allclose(back, start, atol=1e-5)
    with pytest.raises(SceneListError, match=r"shot 2: the start latent is \[1, 4, 64, 64\]; expected a Wan video "
                                             r"latent \[1, 16, frames, height/8, width/8\]"):
        start_from_comfy_latent({"samples": torch.zeros(1, 4, 64, 64)}, 2)  # an SD image latent
    with pytest.raises(SceneListError, match="holds 2 videos"):
        start_from_comfy_latent({"samples": torch.zeros(2, 16, 1, 4, 6)}, 2)
    with pytest.raises(SceneListError, match="not a LATENT"):
        start_from_comfy_latent(torch.zeros(1, 16, 1, 4, 6), 2)
    with pytest.raises(SceneListError, match="shot 1: the start latent holds NaN"):
        SceneList().then("a", torch.zeros(1, 4, 16), 1.0, "smooth", start=torch.full((1, 1, 16, 4, 6), float("inf")))
    with pytest.raises(SceneListError, match=r"one video's latents \[1, frames, channels"):
        SceneList().then("a", torch.zeros(1, 4, 16), 1.0, "smooth", start=torch.zeros(2, 1, 16, 4, 6))


@pytest.mark.parametrize(("shot", "start", "match"), [
    (1, torch.zeros(1, 1, 16, 8, 6), r"shot 1's start latent is 48x64 pixels"),
    (1, torch.zeros(1, 1, 8, 4, 6), r"shot 1's start latent has 8 channels but the model reads 16"),
    (2, torch.zeros(1, 7, 16, 4, 6), r"shot 2's start latent has 7 latent frames but the shot has 6 \(2 blocks\)"),
])
def test_the_plan_refuses_a_start_that_does_not_fit_before_any_model_is_loaded(shot, start, match):
    starts = [None, None, None]
    starts[shot - 1] = start
    with pytest.raises(RolloutInputError, match=match):
        _plan(_shot_list(starts))


def test_a_start_latent_is_part_of_its_shot_key():
    start = torch.randn(1, 1, 16, 4, 6)
    plain = _plan(_shot_list()).boundary_keys("m")
    with_start = _plan(_shot_list((None, start, None))).boundary_keys("m")
    other = _plan(_shot_list((None, start + 1, None))).boundary_keys("m")
    assert with_start[0] == plain[0] and with_start[1:] != plain[1:]
    assert all(a != b for a, b in zip(with_start[1:], other[1:], strict=True))


def test_a_story_keeps_its_start_latents_and_goes_on_as_one_long_run(model, tmp_path):
    image = torch.randn(1, 1, 16, 4, 6)
    three = _shot_list((image, None, torch.randn(1, 4, 16, 4, 6)))
    long_plan = _plan(three)
    long = generate(long_plan, lambda: model)
    assert torch.equal(long.latents[:, :1], image)
    two = SceneList(three.shots[:2])
    first = _plan(two)
    path = first.story_of(generate(first, lambda: model)).save(tmp_path / "s.safetensors").path
    story = Story.load(path)
    assert torch.equal(story.shots.shots[0].start, image) and story.shots.shots[1].start is None
    continued = SceneList(story.shots.shots, story)
    prompt, seconds, transition, label = PLAN_SHOTS[2]
    continued = continued.then(prompt, stand_in_text_embedding([prompt], CFG.text_dim), seconds, transition, "",
                               label, start=three.shots[2].start)
    again = generate(_plan(continued), lambda: model)
    assert again.reused_shots == 2 and torch.equal(again.latents, long.latents)
