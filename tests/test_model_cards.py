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
    other = tmp_path / "wan22_5b.safetensors"
    other.write_bytes(b"x")
    with pytest.raises(ModelCardError, match="width 3072, 30 layers and 48 latent channels, which no model card"):
        card_for_file(other, 3072, 30, 48)
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
