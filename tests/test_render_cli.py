"""``python -m echo_forcing render``: a script, the same script after an edit (only the edited shot and the ones
after it are generated, from the boundaries kept in --cache), and a saved story continued in a later run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from echo_forcing.__main__ import main

SCRIPT = ("a red fox trots through snow [2s] | the fox sleeps by a fire [1s#] | the fox in the snow again [1s]; "
          "snow | fire | back")
SIZE = ["--width", "64", "--height", "48"]


def report(out):
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def latents(out):
    return load_file(str(out / "latents.safetensors"))["samples"]


def test_an_edit_regenerates_only_from_the_edited_shot(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["render", SCRIPT, "--out", str(tmp_path / "a"), "--cache", str(cache), *SIZE]) == 0
    assert report(tmp_path / "a")["reuse"]["reused_shots"] == 0
    edited = SCRIPT.replace("the fox in the snow again", "the fox runs in the snow again")
    assert main(["render", edited, "--out", str(tmp_path / "b"), "--cache", str(cache), *SIZE]) == 0
    assert report(tmp_path / "b")["reuse"] == {**report(tmp_path / "b")["reuse"], "reused_shots": 2,
                                               "generated_shots": 1}
    assert "reusing shots 1-2" in capsys.readouterr().out
    assert main(["render", edited, "--out", str(tmp_path / "c"), *SIZE]) == 0  # from scratch, no cache
    assert torch.equal(latents(tmp_path / "b"), latents(tmp_path / "c"))
    assert (tmp_path / "b" / "report.txt").read_text().startswith("3 shots")


def test_a_saved_story_is_continued_and_equals_one_long_run(tmp_path):
    """Blocks: a story keeps its shots' blocks (the third took the rest of a 3-shot video: 3 blocks), the new
    shots are counted as a video of their own (1 + 3); the long script is written to give the same blocks."""
    story = tmp_path / "three.safetensors"
    assert main(["render", SCRIPT, "--out", str(tmp_path / "a"), "--save-story", str(story), *SIZE]) == 0
    more = "the fox climbs a hill [1s] | back by the fire [1.75s]; hill | fire2"
    assert main(["render", more, "--story", str(story), "--enter", "hard cut", "--out", str(tmp_path / "b"),
                 *SIZE]) == 0
    assert report(tmp_path / "b")["reuse"]["reused_shots"] == 3
    whole = ("a red fox trots through snow [2s] | the fox sleeps by a fire [1s#] | the fox in the snow again "
             "[2.25s#] | the fox climbs a hill [1s] | back by the fire [1s]; snow | fire | back | hill | fire2")
    assert main(["render", whole, "--out", str(tmp_path / "c"), *SIZE]) == 0
    blocks = [s["blocks"] for s in report(tmp_path / "b")["shots"]]
    assert blocks == [s["blocks"] for s in report(tmp_path / "c")["shots"]] == [2, 1, 3, 1, 3]
    assert torch.equal(latents(tmp_path / "b"), latents(tmp_path / "c"))


def test_bad_runs_are_refused_with_exit_code_2(tmp_path, capsys):
    story = tmp_path / "s.safetensors"
    assert main(["render", SCRIPT, "--out", str(tmp_path / "a"), "--save-story", str(story), *SIZE]) == 0
    assert main(["render", "more [1s]", "--story", str(story), "--out", str(tmp_path / "b"), "--width", "80",
                 "--height", "48"]) == 2
    assert "the story was made with width 64" in capsys.readouterr().err
    assert main(["render", "a fox [1x]", "--out", str(tmp_path / "c"), *SIZE]) == 2
    assert main(["render", SCRIPT, "--out", str(tmp_path / "d"), "--cache", str(tmp_path / "k"), "--cache-gb", "0",
                 *SIZE]) == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("out", "message"), [("", "the output folder is empty"), ("FILE", "is a file, not a folder"),
                                             ("FILE/sub", "is a file")])
def test_bad_output_folders_are_refused_with_the_reason(tmp_path, monkeypatch, capsys, out, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        main(["render", SCRIPT, "--out", out, *SIZE])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_clip_is_continued_from_its_last_latent_frames(tmp_path, capsys):
    """--start with a render's latents (or a SaveLatent .latent file) and --start-frames 3: the new video opens
    with the clip's last block, unchanged; bad files and counts exit with 2 and the reason."""
    assert main(["render", SCRIPT, "--out", str(tmp_path / "a"), *SIZE]) == 0
    clip = latents(tmp_path / "a")
    more = "the fox runs on through the snow [2s] | the fox at the fire [1s#]"
    assert main(["render", more, "--out", str(tmp_path / "b"), "--start", str(tmp_path / "a" / "latents.safetensors"),
                 "--start-frames", "3", *SIZE]) == 0
    assert torch.allclose(latents(tmp_path / "b")[:, :, :3], clip[:, :, -3:], atol=1e-5)
    saved = tmp_path / "clip.latent"  # core SaveLatent's layout
    save_file({"latent_tensor": clip[:, :, -1:].contiguous(), "latent_format_version_0": torch.tensor([])},
              str(saved))
    assert main(["render", more, "--out", str(tmp_path / "c"), "--start", str(saved), *SIZE]) == 0
    assert torch.allclose(latents(tmp_path / "c")[:, :, :1], clip[:, :, -1:], atol=1e-5)
    capsys.readouterr()
    assert main(["render", more, "--out", str(tmp_path / "d"), "--start", str(saved), "--start-frames", "2",
                 *SIZE]) == 2
    assert "--start-frames is 2 but clip.latent holds 1 latent frames" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(2, 2)}, str(other))
    assert main(["render", more, "--out", str(tmp_path / "e"), "--start", str(other), *SIZE]) == 2
    assert "holds no latents" in capsys.readouterr().err
    pickled = tmp_path / "evil.latent"
    torch.save({"latent_tensor": clip}, pickled)
    assert main(["render", more, "--out", str(tmp_path / "f"), "--start", str(pickled), *SIZE]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["render", more, "--out", str(tmp_path / "g"), "--start", str(tmp_path / "a" / "latents.safetensors"),
                 "--width", "80", "--height", "48"]) == 2
    assert "shot 1's start latent is 64x48 pixels" in capsys.readouterr().err
