"""Model cards: one record per causal student with the settings it was trained for, found for a file by its
registry name or size, checked against the weights, overridable within what the family was trained for."""

from __future__ import annotations

import pytest

from echo_forcing.models import model_cards as cards
from echo_forcing.models import registry
from echo_forcing.models.model_cards import ModelCardError, by_name, card_for_file
from echo_forcing.pipeline import RolloutSettings

SMALL = (1536, 30, 16)  # Wan2.1-T2V-1.3B: width, layers, latent channels


def test_every_card_is_consistent_and_its_settings_run():
    assert len(set(cards.names())) == len(cards.CARDS)
    for card in cards.CARDS:
        for name in card.files:
            assert registry.by_name(name).family.startswith(card.family.rstrip("+"))
        RolloutSettings(num_frames=3 * card.frames_per_block, **card.settings())
    pp = by_name("causal-forcing++-2step")
    assert pp.settings()["first_block_steps"] == (1000, 750, 500, 250) and pp.steps == (1000, 500)
    assert by_name("causal-forcing-framewise").frames_per_block == 1
    assert "echo-forcing" not in by_name("causal-forcing-framewise").presets  # Echo works on 3-frame blocks


def test_a_file_is_recognised_by_its_registry_name_or_a_unique_size(tmp_path):
    named = tmp_path / "causal_forcing_pp_1step.safetensors"
    named.write_bytes(b"x")
    card, how = card_for_file(named, *SMALL)
    assert card.name == "causal-forcing++-1step" and "by its name" in how
    sized = tmp_path / "some_download.pt"
    with open(sized, "wb") as f:  # sparse: the size of the chunk-wise release, no disk used
        f.truncate(registry.by_name("causal-forcing-chunkwise").size)
    card, how = card_for_file(sized, *SMALL)
    assert card.name == "causal-forcing-chunkwise" and "by its size" in how
    with open(sized, "wb") as f:  # the three frame-wise releases share a size: not told apart
        f.truncate(registry.by_name("causal-forcing-framewise").size)
    card, how = card_for_file(sized, *SMALL)
    assert card.name == "self-forcing" and "not a known release" in how and "choose its model card" in how


def test_weights_that_contradict_the_card_or_match_no_card_are_refused(tmp_path):
    named = tmp_path / "self_forcing_dmd.safetensors"
    named.write_bytes(b"x")
    with pytest.raises(ModelCardError, match=r"is for wan2.1-t2v-1.3b .* but the weights have width 3072, 30 "
                                             r"layers and 48 latent channels"):
        card_for_file(named, 3072, 30, 48)
    other = tmp_path / "wan22_other.safetensors"
    other.write_bytes(b"x")
    card, how = card_for_file(other, 2048, 24, 48)  # a Wan2.2 layout of no known size: its only student's settings
    assert card.name == "longlive2-5b" and "Wan2.2 DiT of width 2048 and 24 layers" in how and "LongLive" in how
    with pytest.raises(ModelCardError, match="width 2048, 24 layers and 36 latent channels, which no model card"):
        card_for_file(other, 2048, 24, 36)  # an image-to-video layout (latents + conditioning) no student has
    card, how = card_for_file(tmp_path / "wan22_other.safetensors", 3072, 30, 48)  # Wan2.2-TI2V-5B's shape
    assert card.name == "longlive2-5b" and "wan2.2-ti2v-5b" in how
    with pytest.raises(ModelCardError, match="no model card is called 'nope'; known cards: self-forcing"):
        by_name("nope")


def test_overrides_stay_within_what_the_family_was_trained_for():
    framewise = by_name("causal-forcing-framewise")
    assert framewise.override(steps=(1000, 500)).steps == (1000, 500)
    with pytest.raises(ModelCardError, match=r"Causal Forcing \(frame-wise\) was trained with 1 latent frames per "
                                             "block; 3 would give frames it never learned"):
        framewise.override(frames_per_block=3)
    with pytest.raises(ModelCardError, match="no field colour"):
        framewise.override(colour="red")
    with pytest.raises(ModelCardError, match="strictly decreasing"):
        framewise.override(steps=(500, 1000))


def _shots():
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding
    from echo_forcing.pipeline import SceneList

    out = SceneList()
    for prompt, seconds, transition in (("a fox in the snow", 1.0, "smooth"), ("a fox by a fire", 0.5, "hard cut")):
        out = out.then(prompt, stand_in_text_embedding([prompt], 16), seconds, transition)
    return out


def test_a_plan_runs_with_its_cards_blocks_and_steps():
    from echo_forcing.memory import PresetChoice
    from echo_forcing.models import WanConfig
    from echo_forcing.pipeline import RolloutInputError
    from echo_forcing.pipeline.run_plan import plan_run

    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
    base = {"width": 48, "height": 32, "dtype": __import__("torch").float32}
    pp = plan_run(_shots(), cfg, choice=PresetChoice(preset="self-forcing"), card=by_name("causal-forcing++-2step"),
                  **base)
    s = pp.settings
    assert (s.frames_per_block, s.steps, s.first_block_steps) == (1, (1000, 500), (1000, 750, 500, 250))
    assert pp.blocks == (4, 2)  # 1 s and 0.5 s at 16 fps: 4 and 2 latent frames, one per block
    assert plan_run(_shots(), cfg, choice=PresetChoice(preset="self-forcing"), card=by_name("causal-forcing++-2step"),
                    steps=4, **base).settings.steps == (1000, 750, 500, 250)
    with pytest.raises(RolloutInputError, match="makes 1-frame blocks, but Echo-Forcing's memory works on 3-frame "
                                                "blocks; use one of its presets: self-forcing"):
        plan_run(_shots(), cfg, card=by_name("causal-forcing-framewise"), **base)
    with pytest.raises(ModelCardError, match="is for 16-channel latents but the model reads 48"):
        plan_run(_shots(), WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, in_dim=48,
                                     out_dim=48), card=by_name("self-forcing"), **base)


def test_the_render_command_takes_a_card(tmp_path, capsys):
    import json

    from echo_forcing.__main__ import main

    out = tmp_path / "a"
    assert main(["render", "a fox in the snow [0.5s]", "--out", str(out), "--width", "64", "--height", "48",
                 "--preset", "self-forcing", "--card", "causal-forcing++-1step"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [s["blocks"] for s in report["shots"]] == [2]  # 0.5 s: 2 latent frames, one a block
    assert main(["render", "a fox in the snow [0.5s]", "--out", str(tmp_path / "b"), "--width", "64", "--height",
                 "48", "--card", "causal-forcing-framewise"]) == 2
    assert "Echo-Forcing's memory works on 3-frame blocks" in capsys.readouterr().err


def test_a_memory_expert_in_the_keys_picks_an_sgf_plus_card_and_a_mismatch_is_refused(tmp_path):
    """SGF+ is the one student its keys tell apart (the memory_* twins): auto gives it the chunk-wise SGF+ card, a
    card for a one-expert student is refused for it, and an SGF+ card for a file without the expert."""
    named = tmp_path / "model.pt"
    named.write_bytes(b"x")
    card, how = card_for_file(named, *SMALL, memory_expert=True)
    assert card.name == "sgf-plus-chunkwise" and card.memory_expert and "holds an SGF+ memory expert" in how
    assert card.presets[0] == "sgf" and by_name("sgf-plus-framewise").presets == ("sgf-framewise",)
    with pytest.raises(ModelCardError, match=r"holds an SGF\+ memory expert .* which the model card 'self-forcing'"):
        by_name("self-forcing").check_weights(*SMALL, memory_expert=True)
    with pytest.raises(ModelCardError, match="is for a student with an SGF\\+ memory expert, but the file holds none"):
        by_name("sgf-plus-framewise").check_weights(*SMALL)
    by_name("sgf-chunkwise").check_weights(*SMALL)  # Self Gradient Forcing v1: plain weights, the same cache


def test_a_preset_outside_the_cards_list_is_noted():
    from echo_forcing.memory import PresetChoice
    from echo_forcing.models import WanConfig
    from echo_forcing.pipeline.run_plan import plan_run

    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
    base = {"width": 48, "height": 32, "dtype": __import__("torch").float32}
    plan = plan_run(_shots(), cfg, choice=PresetChoice(preset="echo-forcing"), card=by_name("rolling-forcing"),
                    **base)
    assert any(n.startswith("Rolling Forcing was made for the preset(s) rolling-forcing; echo-forcing runs it")
               for n in plan.notes)
    assert not any("was made for" in n for n in plan_run(_shots(), cfg, card=by_name("self-forcing"), **base).notes)
    assert by_name("self-forcing-10s").trained_frames == 42 and "no published" in by_name("self-forcing-10s").notes
