"""Hostile and careless inputs through the public API and the command line: scene-pool and story files, saves
that race or are killed, sizes that would exhaust memory, NaN weights, LoRAs and latents, output modes.

Each class has at least three inputs. Scene scripts are in test_hostile_scripts.py, the batch command in
test_hostile_batch.py, the nodes' validation in test_hostile_nodes.py and (in a real ComfyUI) the soak of
test_comfyui_server.py."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from echo_forcing import safe_files
from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import EchoMemory, PresetChoice, ScenePool, ScenePoolError, pool_names
from echo_forcing.memory.scene_pool import PoolEntry
from echo_forcing.models import (
    CausalWan,
    CheckpointError,
    WanConfig,
    WanDiT,
    load_wan_checkpoint,
    random_wan_state_dict,
)
from echo_forcing.pipeline import (
    RolloutInputError,
    RolloutScene,
    RolloutSettings,
    SceneList,
    generate,
    plan_run,
    rollout,
)
from echo_forcing.pipeline.digests import file_checksum
from echo_forcing.pipeline.memory_need import RunTooLargeError
from echo_forcing.pipeline.rollout import NonFiniteError
from echo_forcing.pipeline.scene_script import Scene, SceneScriptError
from echo_forcing.pipeline.story import Story, StoryError

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
PROMPTS = ["a lighthouse keeper climbs white stairs at dusk", "a night market with red lanterns",
           "back in the white lighthouse the keeper lights the lamp"]


@pytest.fixture(scope="module")
def model():
    return CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=4)))


def chain(shots=((PROMPTS[0], 1.5, "smooth", ""), (PROMPTS[1], 1.5, "hard cut", ""),
                 (PROMPTS[2], 1.5, "recall", "1"))) -> SceneList:
    out = SceneList()
    for prompt, seconds, transition, target in shots:
        out = out.then(prompt, stand_in_text_embedding([prompt], CFG.text_dim), seconds, transition, target)
    return out


def plan(shots=None, **kw):
    options = {"seed": 9, "width": 48, "height": 32, "fps": 16, "dtype": torch.float32,
               "choice": PresetChoice(recall_matching="idf", recall_scope="shots so far"), **kw}
    return plan_run(shots if shots is not None else chain(), CFG, **options)


@pytest.fixture(scope="module")
def made(model, tmp_path_factory):
    """A pool and a story from one small run, saved once."""
    first = plan()
    result = generate(first, lambda: model)
    folder = tmp_path_factory.mktemp("made")
    pool = folder / "pool.safetensors"
    result.pool.save(pool)
    story = folder / "story.safetensors"
    first.story_of(result).save(story)
    return pool, story, result.pool


def read(path):
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def rewrite(src, dst, edit_meta=None, edit_tensors=None, checksum=False):
    meta, tensors = read(src)
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    if checksum:  # a hostile editor recomputes the (unkeyed) checksum, so the type checks must hold alone
        meta["checksum"] = file_checksum({k: v for k, v in meta.items() if k != "checksum"}, tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def edit_json(key, change):
    def edit(meta):
        value = json.loads(meta[key])
        change(value)
        meta[key] = json.dumps(value)
    return edit


# ---- class 1: pool and story files --------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "match"), [
    (edit_json("entries", lambda e: e[0].update(label=["not", "text"])), r"entries\[0\]\.label should be text"),
    (edit_json("entries", lambda e: e[0].update(label=7)), r"entries\[0\]\.label should be text"),
    (edit_json("entries", lambda e: e[0].update(prompt={"a": 1})), r"entries\[0\]\.prompt should be text"),
    (edit_json("entries", lambda e: e[0].update(recall="yes")), r"entries\[0\]\.recall should be true or false"),
    (edit_json("entries", lambda e: e.__setitem__(0, "scene")), r"entries\[0\] should be an object"),
    (edit_json("signature", lambda s: s.update(layers="2")), r"signature\.layers should be an integer"),
    (edit_json("signature", lambda s: s.update(grid=[2, -1])), r"signature\.grid\.w should be an integer"),
    (edit_json("signature", lambda s: s.update(dtype="int8")), r"signature\.dtype should be one of"),
    (lambda m: m.update(max_size="-5"), r"max_size should be an integer in 1\.\.1024"),
    (lambda m: m.update(max_size="0"), r"max_size should be an integer in 1\.\.1024"),
    (lambda m: m.update(max_size="1e18"), r"max_size should be an integer in 1\.\.1024"),
    (lambda m: m.update(max_size="1"), r"entries should be at most max_size=1 scenes"),
    (lambda m: m.update(entries="{not json"), r"entries should be JSON"),
    (lambda m: m.pop("signature"), r"signature should be present"),
])
def test_a_pool_header_of_the_wrong_type_is_refused_with_the_field_named(made, tmp_path, edit, match):
    bad = rewrite(made[0], tmp_path / "bad.safetensors", edit_meta=edit)
    with pytest.raises(ScenePoolError, match=match) as err:
        ScenePool.load(bad)
    assert len(str(err.value)) < 400 and repr(err.value)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.__setitem__("0.recall.k", torch.tensor(1.0)), r"tensor 0\.recall\.k should be \[2, 6, 2, 128\]"),
    (lambda t: t.__setitem__("0.recall.k", t["0.recall.k"][:, :3].contiguous()), r"should be \[2, 6, 2, 128\] float32"),
    (lambda t: t.__setitem__("0.recall.v", t["0.recall.v"].double()), r"got \[2, 6, 2, 128\] torch.float64"),
    (lambda t: t.pop("0.recall.v"), r"0\.recall\.v .* got missing"),
    (lambda t: t.__setitem__("extra", torch.zeros(3)), r"holds tensors no scene names \(extra\)"),
    (lambda t: t["1.recall.k"].view(-1).__setitem__(5, float("nan")), r"NaN or infinite values .*1\.recall\.k"),
    (lambda t: t["0.recall.v"].view(-1).__setitem__(0, float("inf")), r"NaN or infinite values"),
])
def test_pool_contents_are_checked_against_the_signature(made, tmp_path, edit, match):
    bad = rewrite(made[0], tmp_path / "bad.safetensors", edit_tensors=edit)
    with pytest.raises(ScenePoolError, match=match):
        ScenePool.load(bad)


def _raw_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


@pytest.mark.parametrize("case", ["huge tensor", "huge header", "empty", "short"])
def test_declared_sizes_are_checked_against_the_file_before_reading(tmp_path, case):
    path = tmp_path / "x.safetensors"
    if case == "huge tensor":  # 3 GiB declared, 16 bytes present
        _raw_safetensors(path, {"__metadata__": {"format": "echo-forcing-scene-pool", "version": "1"},
                                "t": {"dtype": "F32", "shape": [805306368], "data_offsets": [0, 3 * 2**30]}},
                         b"\0" * 16)
    elif case == "huge header":
        path.write_bytes(struct.pack("<Q", 3 * 2**30) + b"{}")
    elif case == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x10\0\0")
    before = _peak_rss()
    with pytest.raises(ScenePoolError, match="truncated or corrupt"):
        ScenePool.load(path)
    assert _peak_rss() - before < 256 * 2**20


def _peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_story_headers_are_type_checked_even_with_a_recomputed_checksum(made, tmp_path):
    cases = [
        (edit_json("shots", lambda s: s[0].update(prompt=["x"])), r"shots\[0\]\.prompt should be text"),
        (edit_json("shots", lambda s: s[1].update(duration="1.5")), r"shots\[1\]\.duration should be a number"),
        (edit_json("shots", lambda s: s[0].update(duration=1e308)), r"shots\[0\]\.duration should be a number"),
        (edit_json("shots", lambda s: s[0].update(seed=-3)), r"shots\[0\]\.seed should be an integer"),
        (edit_json("shots", lambda s: s[0].update(blocks=True)), r"shots\[0\]\.blocks should be an integer"),
        (edit_json("shots", lambda s: s.clear()), r"shots should be at least one shot"),
        (edit_json("boundary", lambda b: b.update(pool={"$object": "os.system", "fields": {}})), "damaged"),
        (lambda m: m.update(header="[1, 2]"), r"header should be dict"),
    ]
    for edit, match in cases:
        bad = rewrite(made[1], tmp_path / "bad.safetensors", edit_meta=edit, checksum=True)
        with pytest.raises(StoryError, match=match):
            Story.load(bad)
    nan = rewrite(made[1], tmp_path / "nan.safetensors", checksum=True,
                  edit_tensors=lambda t: t["latents"].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(StoryError, match="NaN or infinite"):
        Story.load(nan)
    for start in (torch.zeros(1, 3, 16, 4), torch.zeros(2, 1, 16, 4, 6), torch.zeros(1, 1, 16, 4, 6).half(),
                  torch.zeros(1, 1, 16, 4, 6, dtype=torch.int32)):  # a shot's start latent
        bad = rewrite(made[1], tmp_path / "start.safetensors", checksum=True,
                      edit_tensors=lambda t, s=start: t.__setitem__("start.0", s))
        with pytest.raises(StoryError, match=r"start\.0 should be finite float32 latents"):
            Story.load(bad)


def test_no_repr_or_str_of_an_object_that_reaches_comfyui_raises(made):
    """ComfyUI formats str(input) of every node input into its error reports and history."""
    pool = made[2]
    story = Story.load(made[1])
    weird = PoolEntry("lab{el}\n\x00" * 50, "p")
    objects = [pool, ScenePool(), ScenePool((weird,)), weird, story, story.shots, SceneList(), PresetChoice(),
               plan(), Scene("x" * 10_000, 1.0)]
    for obj in objects:
        assert isinstance(repr(obj), str) and isinstance(str(obj), str)
        assert len(repr(obj)) < 2000
    for bad in ([1, 2], None, 5):
        with pytest.raises(ScenePoolError):
            PoolEntry(bad, "prompt")
    for bad in ("64", 0, 10**18, True):
        with pytest.raises(ScenePoolError, match="max_size"):
            ScenePool((), bad)


# ---- class 2: saves that race or are killed; the user's files -----------------------------------------------


def test_two_saves_of_one_name_at_once_both_complete_and_report_it(made, tmp_path):
    pool = made[2]
    smaller = pool.with_entries(pool.entries[:1])
    target = tmp_path / "pools" / "same.safetensors"
    outcomes, errors = [], []

    def save(p):
        try:
            outcomes.append(p.save(target))
        except Exception as err:
            errors.append(err)

    for _ in range(3):
        threads = [threading.Thread(target=save, args=(p,)) for p in (pool, smaller) * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(outcomes) == 24 and sum(not o.replaced for o in outcomes) <= 1
    assert len(ScenePool.load(target)) in (1, len(pool))  # complete: one writer's pool, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["same.safetensors"]


def test_the_users_files_named_like_temporaries_are_never_deleted(made, tmp_path):
    folder = tmp_path / "pools"
    folder.mkdir()
    keep = [".p.safetensors.partial", "x.partial", "y.job.json", ".z.echo-tmp", ".q.0123456789abcdef.echo-tmp.bak2x",
            ".r.0123456789ABCDEF.echo-tmp", "s.0123456789abcdef.echo-tmp"]
    old = time.time() - 10 * safe_files.STALE_SECONDS
    for name in keep:
        (folder / name).write_text("mine")
        os.utime(folder / name, (old, old))
    stale = folder / ".p.safetensors.0123456789abcdef.echo-tmp"
    fresh = folder / ".p.safetensors.fedcba9876543210.echo-tmp"
    stale.write_bytes(b"\0" * 1024)
    os.utime(stale, (old, old))
    fresh.write_bytes(b"\0")
    made[2].save(folder / "p.safetensors")
    left = {p.name for p in folder.iterdir()}
    assert set(keep) <= left and fresh.name in left and stale.name not in left
    assert all((folder / n).read_text() == "mine" for n in keep)


def test_a_save_killed_midway_leaves_nothing_that_is_not_cleaned(tmp_path):
    folder = tmp_path / "pools"
    code = f"""
import sys, time, torch
from pathlib import Path
from echo_forcing.safe_files import atomic_write
def slow(tmp):
    tmp.write_bytes(b"\\0" * 2**20)
    print("writing", flush=True)
    time.sleep(60)
atomic_write(Path({str(folder / "p.safetensors")!r}), slow)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    (temp,) = list(folder.iterdir())
    assert safe_files.is_own_temp(temp.name) and not (folder / "p.safetensors").exists()
    assert safe_files.clean_stale_temps(folder) == []  # a fresh temporary may belong to a live writer
    old = time.time() - 2 * safe_files.STALE_SECONDS
    os.utime(temp, (old, old))
    safe_files.write_text(folder / "other.txt", "x")  # the next write in the folder cleans it
    assert sorted(p.name for p in folder.iterdir()) == ["other.txt"]
    stale = folder / ".q.safetensors.0123456789abcdef.echo-tmp"
    stale.write_bytes(b"\0")
    os.utime(stale, (old, old))
    assert pool_names(folder) == [] and not stale.exists()  # so does listing it (the nodes do at start)


# ---- class 8: modes follow the umask ----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_the_users_umask(made, tmp_path, umask):
    old = os.umask(umask)
    try:
        pool = made[2].save(tmp_path / "p.safetensors").path
        story = Story.load(made[1]).save(tmp_path / "s.safetensors").path
        text = safe_files.write_text(tmp_path / "r.txt", "x").path
    finally:
        os.umask(old)
    for path in (pool, story, text):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- class 4: sizes bounded before allocation ----------------------------------------------------------------


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"width": 16384, "height": 16384}, RolloutInputError, "over the limit of 4096"),
    ({"width": 4096, "height": 4096, "host_memory": 2**30}, RunTooLargeError, r"needs .* of RAM .* available"),
    ({"width": 4096, "height": 2048, "device": "cuda", "device_memory": 2**30, "host_memory": 2**40},
     RunTooLargeError,
     r"on cuda \(.*cache .*\) but 1.00 GiB can be used there \(kv_storage compute: .*; kv_storage fp8_e4m3"),
    ({"width": 500}, RolloutInputError, "multiple of 16"),
    ({"fps": 1e308}, RolloutInputError, "fps must be a number"),
    ({"fps": float("nan")}, RolloutInputError, "fps must be a number"),
])
def test_sizes_are_refused_with_the_figure_before_any_model_loads(kw, error, match):
    with pytest.raises(error, match=match):
        plan(**kw)


def test_long_and_huge_durations_are_refused(model):
    with pytest.raises(SceneScriptError):
        Scene("a", 1e308)
    with pytest.raises(SceneScriptError):
        chain([(PROMPTS[0], 3000.0, "smooth", ""), (PROMPTS[1], 3000.0, "hard cut", "")]).scenes[0]
        plan(chain([(PROMPTS[0], 3000.0, "smooth", "")] * 12))
    sixty = chain([(PROMPTS[0], 60.0, "smooth", "")])
    with pytest.raises(RunTooLargeError, match="RAM"):
        plan(sixty, width=4096, height=4096)


def test_rollout_itself_refuses_a_video_that_cannot_fit_before_allocating(model):
    settings = RolloutSettings(num_frames=3 * 2_000_000, height=32, width=48)
    text = model.encode_text(stand_in_text_embedding(["x"], CFG.text_dim))
    started = time.perf_counter()
    with pytest.raises(RunTooLargeError, match="latents"):
        rollout(model, text, settings, EchoMemory())
    assert time.perf_counter() - started < 10


def test_text_is_encoded_when_its_shot_starts(model):
    events = []

    class Watching(CausalWan):
        def encode_text(self, context):
            events.append("encode")
            return super().encode_text(context)

    watched = Watching(model.dit)
    p = plan()
    generate(p, lambda: watched, on_block=lambda e: events.append(e.scene))
    starts = [i for i, e in enumerate(events) if e == "encode"]
    assert len(starts) == 3
    assert events[starts[1] - 1] == 0 and events[starts[2] - 1] == 1  # shot k+1's text after shot k's blocks


# ---- class 5: NaN and unsupported dtypes ---------------------------------------------------------------------


def _checkpoint(tmp_path, name, change=None):
    sd = random_wan_state_dict(CFG, seed=1)
    if change:
        change(sd)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.mark.parametrize(("change", "match"), [
    (lambda sd: sd["blocks.0.self_attn.q.weight"].view(-1).__setitem__(3, float("nan")), "NaN or infinite"),
    (lambda sd: sd["head.head.weight"].view(-1).__setitem__(0, float("-inf")), "NaN or infinite"),
    (lambda sd: sd.__setitem__("blocks.1.ffn.0.weight", sd["blocks.1.ffn.0.weight"].to(torch.int8)), "int8"),
    (lambda sd: sd.__setitem__("blocks.0.ffn.0.bias", sd["blocks.0.ffn.0.bias"].to(torch.int32)), "int32"),
])
def test_weights_with_nan_or_unsupported_dtypes_are_refused_at_load(tmp_path, change, match):
    with pytest.raises(CheckpointError, match=match):
        load_wan_checkpoint(_checkpoint(tmp_path, "bad.safetensors", change), dtype=torch.float32)


def test_a_nan_lora_is_refused(tmp_path):
    base = _checkpoint(tmp_path, "base.safetensors")
    a = torch.randn(4, CFG.dim)
    b = torch.zeros(CFG.dim, 4)
    for bad in ("nan", "inf", "int8"):
        lora_a = a.clone()
        if bad == "int8":
            lora_a = lora_a.to(torch.int8)
        else:
            lora_a[0, 0] = float(bad)
        lora = tmp_path / f"{bad}.safetensors"
        save_file({"blocks.0.self_attn.q.lora_A.weight": lora_a, "blocks.0.self_attn.q.lora_B.weight": b}, str(lora))
        with pytest.raises(CheckpointError, match="NaN or infinite" if bad != "int8" else "int8"):
            load_wan_checkpoint(base, lora=lora, dtype=torch.float32)


def test_a_non_finite_block_stops_the_run_naming_the_block():
    sd = random_wan_state_dict(CFG, seed=2)
    sd["blocks.1.ffn.2.weight"] = torch.full_like(sd["blocks.1.ffn.2.weight"], 3e38)
    broken = CausalWan(WanDiT.from_state_dict(sd))
    text = broken.encode_text(stand_in_text_embedding(["x"], CFG.text_dim))
    blocks = []
    with pytest.raises(NonFiniteError, match=r"block 1 of 2 \(shot 1\) produced NaN or infinite"):
        rollout(broken, [RolloutScene(text, 2)], RolloutSettings(num_frames=6, height=32, width=48), EchoMemory(),
                on_block=blocks.append)
    assert blocks == []  # no block of noise was handed on


def test_the_shot_cache_cannot_be_told_to_fill_ram_or_disk(model, tmp_path, monkeypatch):
    from echo_forcing.pipeline import prefix_cache
    from echo_forcing.pipeline.prefix_cache import PrefixCache, budget_bytes

    ram = safe_files.physical_memory()
    for gigabytes in (4096.0, 65536.0, ram / 2**30):
        assert PrefixCache(budget_bytes(gigabytes)).budget <= ram // 2
    cache = PrefixCache(budget_bytes(1.0), tmp_path / "cache", budget_bytes(1000.0))
    monkeypatch.setattr(prefix_cache, "_disk_free", lambda folder: prefix_cache.DISK_RESERVE)  # a nearly full disk
    p = plan()
    generate(p, lambda: model, cache=cache, model_key="m")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing written, the run still succeeded
    assert cache.longest(p.boundary_keys("m")) is not None  # RAM kept them


def test_tag_like_prompt_text_is_kept_and_warned_about_in_the_report(tmp_path, capsys):
    from echo_forcing.__main__ import main

    script = "a fox in [4K] snow [10S] [1s] | the fox by a fire, [35mm] [Take 2] [1s]"
    out = tmp_path / "out"
    assert main(["render", script, "--out", str(out), "--width", "48", "--height", "32"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    notes = [n for n in report["notes"] if n.startswith("scene script:")]
    assert len(notes) == 1 and "[10S]" in notes[0]
    assert report["shots"][0]["prompt"] == "a fox in [4K] snow [10S]"
    assert "warning:" in capsys.readouterr().out
    for bad in (["--out", ""], ["--out", str(out / "report.json")], ["--out", str(out), "--width", "1e9"]):
        with pytest.raises(SystemExit) as exited:
            main(["render", "x [1s]", *bad])
        assert exited.value.code == 2
    for bad in (["--fps", "1e308"], ["--width", "16384"], ["--height", "40"]):
        assert main(["render", "x [1s]", "--out", str(out), *bad]) == 2
    assert "must be" in capsys.readouterr().err


def test_inputs_larger_than_memory_or_the_limits_are_refused_before_reading(tmp_path, monkeypatch):
    from echo_forcing.batch import jobs
    from echo_forcing.models import checkpoints

    path = _checkpoint(tmp_path, "big.safetensors")
    monkeypatch.setattr(checkpoints, "available_memory", lambda: 1024)
    with pytest.raises(CheckpointError, match=r"GiB of RAM is available"):
        load_wan_checkpoint(path, dtype=torch.float32)
    monkeypatch.setattr(jobs, "MAX_INPUT_FILE_BYTES", 100)
    for what, reader in (("prompt", jobs.read_prompt_file), ("workflow", jobs.load_workflow)):
        big = tmp_path / f"{what}.txt"
        big.write_text("x [1s]\n" * 50)
        with pytest.raises(jobs.BatchUsageError, match=f"{what} file .* the limit is"):
            reader(big)
    with pytest.raises(SceneScriptError, match="MAX_SCRIPT_CHARS"):
        Scene("x" * 100_001, 1.0)
