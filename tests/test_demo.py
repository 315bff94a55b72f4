"""The README's demo command: Echo-Forcing on a four-shot script with the tiny built-in model, end to end; the
H.264 video, the timeline picture and the report it writes; its arguments refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from echo_forcing.__main__ import main
from echo_forcing.cli.demo import DEFAULT_SCRIPT, FILES, preview_frames
from echo_forcing.cli.timeline_picture import block_rows, timeline_svg
from echo_forcing.cli.video_file import VideoUnavailable, write_h264

SMALL = ["--width", "64", "--height", "48"]
SVG = "{http://www.w3.org/2000/svg}"
CACHE_LEGEND = ["old memory (fades with its decay weight)", "anchors", "compressed history", "recent block"]
"""The regions an Echo-Forcing cache holds after a block (the block just made is its recent block; the legend
lists only regions that are drawn, so "current block" does not appear)."""
MARK_LEGEND = ["smooth continuation", "hard cut", "recall (arrow from the recalled shot)", "old memory deleted"]
FALLBACK_LEGEND = "frames in the cache (no breakdown reported)"


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def svg_texts(path_or_text) -> list[str]:
    text = path_or_text if isinstance(path_or_text, str) else path_or_text.read_text(encoding="utf-8")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    return [(t.text or "") + "".join(child.tail or "" for child in t) for t in root.iter(f"{SVG}text")]  # no <title>


def top_level_boxes(path) -> list[bytes]:
    """The MP4's top-level box types in file order."""
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        boxes.append(data[at + 4:at + 8])
        if size < 8:
            break
        at += size
    return boxes


def test_the_default_demo_shows_smooth_hard_cut_and_recall(tmp_path, capsys, umask_027):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    log = capsys.readouterr().out
    assert "block 1/21 (shot 1)" in log and "block 21/21 (shot 4)" in log
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())  # no temporary file left behind
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(FILES.values(), 0o640)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    check_report(report)
    check_video(out)
    check_picture(out, report)


def check_report(report: dict) -> None:
    shots = report["shots"]
    assert report["memory"]["preset"] == "echo-forcing" and report["demo"]["script"] == DEFAULT_SCRIPT
    assert [s["label"] for s in shots] == ["lighthouse", "beam", "storm", "lighthouse again"]
    assert [s["transition"] for s in shots] == ["start", "smooth", "hard cut", "recall"]
    assert [s["mode"] for s in shots] == ["start", "smooth", "hard cut", "recall"]
    assert [s["blocks"] for s in shots] == [8, 5, 2, 6] and report["video"]["video_frames"] == 249
    assert shots[3]["recalled"] == "lighthouse" and shots[3]["similarity"] > 0.3
    assert all(s["decay"] is not None for s in shots[1:])

    rows = report["demo"]["blocks"]
    assert [r["block"] for r in rows] == list(range(21)) and max(r["slots"] for r in rows) == 21
    assert [(r["block"], r["switch"]["mode"], r["switch"]["old_slots"]) for r in rows if r["switch"]] == \
        [(8, "smooth", 3), (13, "hard cut", 1), (15, "recall", 1)]
    assert rows[8]["old_weights"] == [1.0, 1.0] and rows[9]["old_weights"][0] < 1.0
    assert [r["block"] for r in rows if r["old_dropped"]] == [12, 13, 19]  # deleted after 5, 1 and 5 blocks


def check_video(out) -> None:
    with av.open(str(out / "demo.mp4")) as video:
        stream = video.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.width, stream.height, stream.average_rate) == (64, 48, 16)
        assert sum(1 for _ in video.decode(stream)) == 249
    boxes = top_level_boxes(out / "demo.mp4")
    assert boxes.index(b"moov") < boxes.index(b"mdat")  # faststart: a browser plays before the end arrives
    assert load_file(out / "latents.safetensors")["samples"].shape == (1, 16, 63, 6, 8)


def check_picture(out, report: dict) -> None:
    rows = report["demo"]["blocks"]
    picture = (out / "timeline.svg").read_text(encoding="utf-8")
    texts = svg_texts(picture)
    for label in ("1 lighthouse", "2 beam", "3 storm", "4 lighthouse again", "recall of 'lighthouse'"):
        assert label in texts
    assert any(t.startswith("recall ← lighthouse (") for t in texts)
    assert {"smooth, carries 3 old frames", "hard cut, carries 1 old frame"} <= set(texts)
    breakdown = any(r["parts"] for r in rows)  # once the memory reports its regions (memory/echo_memory.py)
    assert set(MARK_LEGEND + (CACHE_LEGEND if breakdown else [FALLBACK_LEGEND])) <= set(texts)
    assert picture == timeline_svg(report, rows)  # the picture can be redrawn from report.json alone


def test_a_script_file_and_a_baseline_preset_and_a_single_prompt(tmp_path, capsys):
    script = tmp_path / "two.txt"
    script.write_text("# two shots\na red kite over the dunes [1.5s#] |\na kite at night [1s]; kite | night\n")
    assert main(["demo", "--out", str(tmp_path / "a"), "--script", str(script), "--preset", "self-forcing",
                 "--steps", "2", *SMALL]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text(encoding="utf-8"))
    assert [(s["label"], s["blocks"]) for s in report["shots"]] == [("kite", 2), ("night", 2)]
    assert report["video"]["steps"] == 2
    rows = report["demo"]["blocks"]
    assert all(r["parts"] is None for r in rows)  # a baseline reports no regions: the cache is one bar
    texts = svg_texts(tmp_path / "a" / "timeline.svg")
    assert FALLBACK_LEGEND in texts and "anchors" not in texts and "1 kite" in texts
    # a baseline switches prompts only and carries its cache on: its switch is a smooth continuation, nothing is cut,
    # recalled or deleted
    assert set(MARK_LEGEND) & set(texts) == {"smooth continuation"}

    assert main(["demo", "--out", str(tmp_path / "b"), "--prompt", "a red kite | [2s] over the dunes",
                 "--seconds", "1.5", *SMALL]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text(encoding="utf-8"))
    assert [(s["prompt"], s["blocks"]) for s in report["shots"]] == [("a red kite | [2s] over the dunes", 2)]
    assert "block 2/2 (shot 1)" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--out", ""], "the output folder is empty"),
    (["--out", "  "], "the output folder is empty"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--out", "FILE/sub"], "is a file"),
    (["--out", "bad\x01name"], "control character"),
    (["--width", "100"], "nearest: 96"),
    (["--height", "2048"], "from 16 to 1024"),
    (["--width", "wide"], "is not a width in pixels"),
    (["--steps", "0"], "from 1 to 10"),
    (["--seed", "-1"], "is out of range"),
    (["--prompt", "a kite", "--seconds", "600"], "from 0.75 to 60"),
    (["--seconds", "3"], "--seconds goes with --prompt"),
    (["--preset", "nope"], "invalid choice"),
    (["--script", "a [1s]", "--prompt", "b"], "not allowed with argument"),
])
def test_bad_arguments_are_refused_with_exit_code_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    if "--out" not in args:
        args = [*args, "--out", "out"]
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing made


def test_bad_scripts_are_refused_before_work(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--script", "a kite [1s!] | the sea [1s]"]) == 2
    assert "'[1s!]' is not a duration tag" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "o"), "--script", "a kite [100s] | the sea [100s]"]) == 2
    assert "at most 120 s" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_command_line_refuses_an_empty_out(tmp_path):
    done = subprocess.run([sys.executable, "-m", "echo_forcing", "demo", "--out", ""], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2 and "the output folder is empty" in done.stderr
    assert not any(tmp_path.iterdir())


def test_without_pyav_the_demo_says_how_to_install_it_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(VideoUnavailable, match="pip install av"):
        write_h264(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "x.mp4")
    assert main(["demo", "--out", str(tmp_path / "o")]) == 1
    assert "pip install av" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_write_h264_pads_odd_sizes_and_follows_the_umask(tmp_path, umask_027):
    ramp = np.linspace(0, 255, 15)[None, :, None] * np.array([1.0, 0.5, 0.0]) + np.arange(9)[:, None, None] * 10
    frames = np.stack([np.roll(ramp, i, axis=1) for i in range(5)]).clip(0, 255).astype(np.uint8)
    outcome = write_h264(frames, tmp_path / "odd.mp4", fps=12.5)
    assert not outcome.replaced and (tmp_path / "odd.mp4").stat().st_mode & 0o777 == 0o640
    with av.open(str(tmp_path / "odd.mp4")) as video:
        stream = video.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.name) == (16, 10, "h264")
        decoded = [f.to_ndarray(format="rgb24") for f in video.decode(stream)]
    assert len(decoded) == 5
    assert np.abs(decoded[0][:9, :15].astype(int) - frames[0]).mean() < 12  # lossy, but the same picture
    assert write_h264(frames, tmp_path / "odd.mp4").replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]
    for bad in (np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match="frames"):
            write_h264(bad, tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="fps"):
        write_h264(frames, tmp_path / "bad.mp4", fps=0)
    assert not (tmp_path / "bad.mp4").exists()


def fake_report(labels, blocks, transitions, recalled=None):
    shots, first = [], 0
    for i, (label, n, transition) in enumerate(zip(labels, blocks, transitions, strict=True)):
        shots.append({"index": i, "label": label, "seconds": n * 0.75, "blocks": n, "first_block": first,
                      "transition": transition, "mode": transition, "prompt": label,
                      "recalled": recalled if transition == "recall" else None,
                      "similarity": 0.5 if transition == "recall" else None})
        first += n
    video = {"shots": len(shots), "blocks": first, "latent_frames": 3 * first, "video_frames": 12 * first - 3,
             "seconds": (12 * first - 3) / 16, "fps": 16.0, "width": 64, "height": 48, "seed": 1}
    return {"shots": shots, "video": video, "memory": {"preset": "echo-forcing"}}


def test_the_picture_draws_the_regions_the_memory_reports():
    report = fake_report(["<a&b>", "c\x07d", "back"], [2, 1, 2], ["start", "hardcut", "recall"], recalled="<a&b>")
    notes = [{"anchor_slots": 0}, {"anchor_slots": 3, "recent_slots": 0},
             {"old_slots": 1, "old_weights": [0.5, 0.5], "old_slots_dropped": 1},
             {"anchor_slots": 3, "old_slots": 1, "old_weights": [0.25, 0.9]},
             {"anchor_slots": 6, "compressed_slots": 3, "recent_slots": 3}]
    reports = [SimpleNamespace(slots=s, notes=n) for s, n in zip([3, 6, 4, 7, 15], notes, strict=True)]
    rows = block_rows(report, reports, [{"scene": 1, "old_slots": 1}, {"scene": 2, "old_slots": 1}])
    assert [r["parts"] for r in rows] == [
        {"old": 0, "anchors": 0, "compressed": 0, "recent": 0, "current": 3},
        {"old": 0, "anchors": 3, "compressed": 0, "recent": 0, "current": 3},
        {"old": 1, "anchors": 0, "compressed": 0, "recent": 0, "current": 3},
        {"old": 1, "anchors": 3, "compressed": 0, "recent": 0, "current": 3},
        {"old": 0, "anchors": 6, "compressed": 3, "recent": 3, "current": 3}]
    assert [r["switch"] and r["switch"]["mode"] for r in rows] == [None, None, "hard cut", "recall", None]
    picture = timeline_svg(report, rows)
    texts = svg_texts(picture)  # labels escaped, a control character dropped: the XML parses
    assert {"1 <a&b>", "2 cd", "3 back", "recall of '<a&b>'"} <= set(texts)
    assert "recall ← <a&b> (0.50), carries 1 old frame" in texts
    assert set(CACHE_LEGEND + MARK_LEGEND[1:]) <= set(texts)
    assert FALLBACK_LEGEND not in texts and "smooth continuation" not in texts  # no smooth switch here
    assert 'fill-opacity="0.90"' in picture and 'fill-opacity="0.50"' in picture  # old memory fades
    assert texts.count("\u00d7") == 2  # deleted after block 3, and the legend's mark


def test_without_the_regions_the_picture_draws_the_frames_and_the_old_weights():
    report = fake_report(["a", "b"], [2, 2], ["start", "smooth"])
    reports = [SimpleNamespace(slots=s, notes=n) for s, n in zip(
        [3, 6, 9, 12], [{}, {}, {"old_weights": [0.8, 1.0]}, {"old_weights": [0.64, 0.9], "old_slots_dropped": 2}],
        strict=True)]
    rows = block_rows(report, reports)
    assert all(r["parts"] is None for r in rows) and rows[2]["switch"]["old_slots"] is None
    texts = svg_texts(timeline_svg(report, rows, title="T", subtitle="S"))
    assert texts[:2] == ["T", "S"] and FALLBACK_LEGEND in texts and "anchors" not in texts
    assert {"1.00", "0.90", "smooth", "smooth continuation", "old memory deleted"} <= set(texts)
    assert "hard cut" not in texts


def test_preview_expands_time_like_the_wan_vae():
    raw = torch.randn(16, 4, 2, 3)
    video = preview_frames(raw)
    assert video.shape == (13, 16, 24, 3) and video.dtype == torch.uint8
    assert torch.equal(video[1], video[4]) and not torch.equal(video[0], video[1])
