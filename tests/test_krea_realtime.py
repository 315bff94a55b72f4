"""Krea Realtime beyond the parity test (tests/test_parity_krea.py): which frames each block re-encodes, the call
sequence (a re-computation before every block after the first, no context pass), the step list ending at 0 and
what the preset refuses."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.krea_realtime import KreaCacheConfig
from echo_forcing.memory.presets import make_policy
from echo_forcing.models import CausalWan
from echo_forcing.models.model_cards import by_name
from echo_forcing.pipeline import RolloutSettings, rollout


def test_each_block_re_encodes_the_first_frame_and_the_latest():
    state = make_policy("krea").create(2)
    assert [state.context_frames(s) for s in (0, 3, 6, 9, 30)] == [[], [0, 1, 2], [0, 4, 5], [0, 7, 8], [0, 28, 29]]
    assert state.context_pass_per_block is False
    assert make_policy("krea", context_frames=2).create(1).context_frames(9) == [0, 8]
    with pytest.raises(ConfigError, match="keep_first_frame must be True"):
        KreaCacheConfig(keep_first_frame=False)
    with pytest.raises(ConfigError, match="context_frames must"):
        KreaCacheConfig(context_frames=4)


class _Calls(CausalWan):
    def __init__(self, dit):
        super().__init__(dit)
        self.calls = []

    def __call__(self, latents, timesteps, text, memories, call):
        self.calls.append((call.start_frame, call.num_frames, call.timestep, call.context_pass))
        return super().__call__(latents, timesteps, text, memories, call)


def test_a_re_computation_before_every_later_block_and_no_context_pass(tiny_dit):
    model = _Calls(tiny_dit)
    text = model.encode_text(torch.zeros(1, 4, model.config.text_dim))
    steps = (1000, 750, 500, 250, 0)
    rollout(model, text, RolloutSettings(num_frames=9, height=32, width=48, steps=steps), make_policy("krea"))
    denoise = [(0, 3, pytest.approx(t, abs=1e-3), False) for t in (1000.0, 937.5, 833.333, 625.0, 0.0)]
    assert model.calls[:5] == denoise
    assert model.calls[5] == (0, 3, 0.0, True)  # block 1's context: frames 0, 1, 2
    assert [c[0] for c in model.calls[6:11]] == [3] * 5 and model.calls[11] == (3, 3, 0.0, True)
    assert len(model.calls) == 3 * 5 + 2


def test_the_card_and_its_steps():
    card = by_name("krea-realtime-14b")
    assert card.steps == (1000, 750, 500, 250, 0) and card.presets == ("krea",) and card.architecture == \
        "wan2.1-t2v-14b"
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding
    from echo_forcing.memory import PresetChoice
    from echo_forcing.models import WanConfig
    from echo_forcing.pipeline import SceneList
    from echo_forcing.pipeline.run_plan import plan_run

    shots = SceneList().then("a fox", stand_in_text_embedding(["a fox"], 16), 1.0, "smooth")
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
    plan = plan_run(shots, cfg, width=48, height=32, dtype=torch.float32, choice=PresetChoice(preset="krea"),
                    card=card, steps=4)
    assert plan.settings.steps == (1000, 666, 333, 0)


def test_echo_memory_config_sets_the_bias_for_krea_only():
    from echo_forcing.memory import PresetChoice

    assert PresetChoice("krea", attention_bias=0.3).build().attention_bias == 0.3
    assert PresetChoice("krea").build().attention_bias == 1.0 and not PresetChoice("krea").ignored
    assert PresetChoice("self-forcing", attention_bias=0.3).ignored == ["attention_bias"]
    with pytest.raises(ConfigError, match="attention_bias must be 0 \\(preset default\\) or a number in"):
        PresetChoice("krea", attention_bias=1.5)
