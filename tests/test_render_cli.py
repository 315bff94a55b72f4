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


def _png(path, picture: torch.Tensor) -> None:
    """An RGB uint8 picture [H, W, 3] as a PNG file, through PyAV (a pack dependency)."""
    import av

    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = picture.shape[:2]
        stream.pix_fmt = "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(picture.numpy(), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_a_picture_or_the_end_of_a_video_opens_the_first_shot(tmp_path, capsys):
    """--image / --clip with --vae: the video opens on exactly what the pack's Wan VAE encoder makes of the picture
    (resized to the video's size) or of the clip's last 13 frames (its last 3 latent frames); without --vae, or
    with a clip too short, the command exits with 2 and says why before any model is loaded."""
    from echo_forcing.cli.video_file import read_last_frames, write_h264
    from echo_forcing.models.wan_vae import (
        encode_pixels,
        load_wan_vae_encoder,
        pixels_from_image,
        random_wan_vae_state_dict,
        read_image,
    )
    from echo_forcing.pipeline import to_comfy_latent
    from echo_forcing.pipeline.latents import from_comfy_latent

    vae = tmp_path / "wan_2.1_vae.safetensors"
    save_file(random_wan_vae_state_dict(seed=1, dim=8), str(vae))
    encoder = load_wan_vae_encoder(vae)
    ramp = torch.linspace(0, 255, 80).to(torch.uint8)
    picture = torch.stack([ramp.expand(60, 80), ramp.flip(0).expand(60, 80), torch.full((60, 80), 70,
                                                                                         dtype=torch.uint8)], -1)
    _png(tmp_path / "start.png", picture)
    more = "the fox runs on through the snow [2s] | the fox at the fire [1s#]"
    assert main(["render", more, "--out", str(tmp_path / "a"), "--image", str(tmp_path / "start.png"), "--vae",
                 str(vae), *SIZE]) == 0
    want = encode_pixels(encoder, pixels_from_image(read_image(tmp_path / "start.png"), 64, 48))
    got = latents(tmp_path / "a")[:, :, :1]
    assert torch.allclose(got, to_comfy_latent(from_comfy_latent(want)), atol=1e-5)

    clip = tmp_path / "clip.mp4"
    write_h264(torch.stack([picture.roll(3 * i, dims=1) for i in range(17)]), clip)
    assert main(["render", more, "--out", str(tmp_path / "b"), "--clip", str(clip), "--vae", str(vae), *SIZE]) == 0
    end = encode_pixels(encoder, pixels_from_image(read_last_frames(clip, 13), 64, 48))
    assert end.shape[2] == 4
    assert torch.allclose(latents(tmp_path / "b")[:, :, :3], end[:, :, 1:], atol=1e-4)

    capsys.readouterr()
    assert main(["render", more, "--out", str(tmp_path / "c"), "--image", str(tmp_path / "start.png"), *SIZE]) == 2
    assert "--image needs the Wan2.1 VAE to encode it: give --vae" in capsys.readouterr().err
    assert main(["render", more, "--out", str(tmp_path / "d"), "--clip", str(clip), "--vae", str(vae),
                 "--start-frames", "5", *SIZE]) == 2
    assert "clip.mp4 has 17 frames; 5 latent frames in context need 21" in capsys.readouterr().err
    assert main(["render", more, "--out", str(tmp_path / "e"), "--image", str(tmp_path / "start.png"), "--vae",
                 str(tmp_path / "start.png"), *SIZE]) == 2
    assert "start.png" in capsys.readouterr().err
