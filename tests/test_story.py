"""Stories: save a video with its state, load it in a later job (a fresh process as far as the code can tell:
nothing shared but the file) and add shots; the result equals one long run. Damaged, edited and mismatched
story files are refused before any model call, and nothing is left half-written."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import PresetChoice, ScenePool
from echo_forcing.memory.files import named_file
from echo_forcing.memory.snapshot import capture, restore, snapshot_from_record, snapshot_record
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import OFFICIAL, RolloutInputError, SceneList, generate, plan_run
from echo_forcing.pipeline.story import Story, StoryError

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
FIRST = [("a lighthouse keeper climbs white stairs at dusk", 6.0, "smooth", "", "tower"),
         ("a night market with red lanterns", 1.5, "hard cut", "", "market"),
         ("back in the white lighthouse the keeper lights the lamp", 1.5, "recall", "tower", "lamp")]
LATER = [("the keeper waves from the balcony", 1.5, "smooth", "", ""),
         ("the red lanterns of the market again", 1.5, "recall", "market", "")]
SO_FAR = PresetChoice(recall_matching="idf", recall_scope="shots so far")


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


def chain(shots, start: SceneList | None = None) -> SceneList:
    out = start if start is not None else SceneList()
    for prompt, seconds, transition, target, label in shots:
        out = out.then(prompt, stand_in_text_embedding([prompt], CFG.text_dim), seconds, transition, target, label)
    return out


def plan(shots, **kw):
    options = {"seed": 9, "width": 48, "height": 32, "fps": 16, "dtype": torch.float32, "choice": SO_FAR, **kw}
    return plan_run(shots, CFG, **options)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """Three shots generated and saved as a story file."""
    first = plan(chain(FIRST))
    result = generate(first, lambda: model)
    path = first.story_of(result).save(tmp_path_factory.mktemp("stories") / "three.safetensors").path
    return path, result


def loaded_scenes(path) -> SceneList:
    story = Story.load(path)
    return SceneList(story.shots.shots, story)


def test_a_story_continued_in_a_later_job_equals_one_long_run(model, saved):
    path, _ = saved
    long = generate(plan(chain(FIRST + LATER)), lambda: model)
    continued_plan = plan(chain(LATER, loaded_scenes(path)))
    assert continued_plan.blocks == (8, 2, 2, 2, 2)
    continued = generate(continued_plan, lambda: model)
    assert continued.reused_shots == 3
    assert torch.equal(continued.latents, long.latents)
    assert continued.switches == long.switches
    assert [(r.slots, r.notes) for r in continued.block_reports] == [(r.slots, r.notes) for r in long.block_reports]
    assert [e.label for e in continued.pool.entries] == [e.label for e in long.pool.entries]


def test_a_loaded_story_alone_gives_its_video_without_loading_a_model(saved):
    path, result = saved
    story = Story.load(path)
    assert repr(story).startswith("Story(3 shots, 12 blocks")
    alone = generate(plan(SceneList(story.shots.shots, story)), lambda: pytest.fail("no model needed"))
    assert torch.equal(alone.latents, result.latents) and alone.reused_shots == 3
    assert [s.seed for s in story.shots.shots] == list(plan(chain(FIRST)).seeds)


def test_the_story_round_trips_its_memory_exactly(model, saved):
    path, _ = saved
    story = Story.load(path)
    original = plan(chain(FIRST))
    end = generate(original, lambda: model).end
    for a, b in zip(story.boundary.memory.layers, end.memory.layers, strict=True):
        assert a.cls is b.cls and a.fields.keys() == b.fields.keys()
    record, tensors = snapshot_record(end.memory)
    again = snapshot_from_record(json.loads(json.dumps(record)), tensors)
    state = original.policy.create(CFG.num_layers)
    restore(again, state)
    assert capture(state).nbytes == end.memory.nbytes


@pytest.mark.parametrize("change,message", [
    ({"width": 64}, "width"),
    ({"steps": 3}, "steps"),
    ({"dtype": torch.bfloat16}, "compute dtype"),
    ({"choice": PresetChoice(preset="echo-forcing-paper", recall_matching="idf", recall_scope="shots so far")},
     "memory preset"),
    ({"choice": PresetChoice(recall_matching="idf", recall_scope="shots so far", compression="off")},
     "memory options"),
    ({"fps": 24}, "fps"),
    ({"noise": OFFICIAL}, "noise mode"),
])
def test_a_story_is_continued_only_with_its_own_settings(saved, change, message):
    with pytest.raises(StoryError, match=message):
        plan(chain(LATER, loaded_scenes(saved[0])), **change)


def test_another_model_architecture_is_refused(saved):
    other = WanConfig(dim=256, ffn_dim=128, num_heads=2, num_layers=2, text_dim=16)
    with pytest.raises(StoryError, match="model architecture"):
        plan_run(chain(LATER, loaded_scenes(saved[0])), other, seed=9, width=48, height=32, dtype=torch.float32,
                 choice=SO_FAR)


def test_an_official_noise_story_cannot_be_extended(model, tmp_path):
    first = plan(chain(FIRST), noise=OFFICIAL)
    path = first.story_of(generate(first, lambda: model)).save(tmp_path / "official.safetensors").path
    scenes = loaded_scenes(path)
    assert generate(plan(scenes, noise=OFFICIAL), lambda: pytest.fail("cached")).shots_done == 3
    with pytest.raises(StoryError, match="official noise order"):
        plan(chain(LATER, scenes), noise=OFFICIAL)


def test_a_different_pool_with_a_story_and_an_early_stop_are_refused(saved):
    frames = ((torch.zeros(6, 2, 128), torch.zeros(6, 2, 128)),) * 2
    from echo_forcing.memory.scene_pool import PoolEntry, PoolSignature
    pool = ScenePool((PoolEntry("old", "an old scene", frames, None, None, None, "old"),),
                     signature=PoolSignature.of(2, 2, 128, torch.float32, (2, 3)))
    with pytest.raises(StoryError, match="disconnect the sampler's 'pool'"):
        plan(chain(LATER, loaded_scenes(saved[0])), pool=pool)
    with pytest.raises(RolloutInputError, match="already holds 3 shots"):
        plan(chain(LATER, loaded_scenes(saved[0])), stop_after_shot=2)


def _rewrite(src, dst, edit_meta=None, edit_tensors=None):
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_damaged_edited_and_foreign_files_are_refused(saved, tmp_path):
    path = saved[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoryError, match="truncated or corrupt"):
        Story.load(cut)
    with pytest.raises(StoryError, match="not found"):
        Story.load(tmp_path / "missing.safetensors")

    def bump(tensors):
        tensors["latents"] = tensors["latents"] + 1e-3

    with pytest.raises(StoryError, match="checksum"):
        Story.load(_rewrite(path, tmp_path / "bumped.safetensors", edit_tensors=bump))

    def relabel(meta):
        meta["shots"] = meta["shots"].replace("tower", "t0wer")

    with pytest.raises(StoryError, match="checksum"):
        Story.load(_rewrite(path, tmp_path / "relabel.safetensors", edit_meta=relabel))
    with pytest.raises(StoryError, match="version 7"):
        Story.load(_rewrite(path, tmp_path / "v7.safetensors", edit_meta=lambda m: m.update(version="7")))
    with pytest.raises(StoryError, match="not an Echo-Forcing story"):
        Story.load(_rewrite(path, tmp_path / "pool.safetensors",
                            edit_meta=lambda m: m.update(format="echo-forcing-scene-pool")))


def test_a_file_naming_a_class_outside_the_memory_package_is_refused(saved, tmp_path):
    """Even with a correct checksum, a stored object may only be one of the memory package's classes."""
    from echo_forcing.pipeline.digests import file_checksum

    path = saved[0]

    def evil(meta):
        meta["boundary"] = meta["boundary"].replace('"$object": "EchoLayerMemory"', '"$object": "Popen"')
        meta.pop("checksum")

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    evil(meta)
    meta["checksum"] = file_checksum(meta, tensors)
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), metadata=meta)
    with pytest.raises(StoryError, match="'Popen', which is not a memory class"):
        Story.load(forged)


def test_saving_is_atomic_and_names_stay_in_their_folder(model, saved, tmp_path, monkeypatch):
    story = Story.load(saved[0])
    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"the earlier story")
    import echo_forcing.memory.files as files

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        story.save(target)
    assert target.read_bytes() == b"the earlier story"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]
    for bad in ("../up", "a/b", "..", "", ".hidden", "x" * 101):
        with pytest.raises(ValueError):
            files.named_file(tmp_path, bad, "story")
    assert named_file(tmp_path, "my story", "story") == (tmp_path / "my story.safetensors").resolve()


def test_the_snapshot_of_every_preset_survives_a_file(model, tmp_path):
    shots = chain([(p, s, t, "", lbl) for p, s, t, _, lbl in FIRST[:2]])
    for name in ("self-forcing", "longlive", "rolling-sink", "deep-forcing", "infinity-rope", "tethercache"):
        first = plan(shots, choice=PresetChoice(preset=name))
        path = first.story_of(generate(first, lambda: model)).save(tmp_path / f"{name}.safetensors").path
        later = chain([LATER[0]], loaded_scenes(path))
        whole = chain([*[(p, s, t, "", lbl) for p, s, t, _, lbl in FIRST[:2]], LATER[0]])
        want = generate(plan(whole, choice=PresetChoice(preset=name)), lambda: model)
        got = generate(plan(later, choice=PresetChoice(preset=name)), lambda: model)
        assert torch.equal(got.latents, want.latents), name
