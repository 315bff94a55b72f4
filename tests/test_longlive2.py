"""LongLive 2.0 pieces beyond the parity test (tests/test_parity_longlive2.py): the Wan2.2 latent layout, sizes in
multiples of 32 pixels, the UniPC schedule, which transitions start a shot, and the card's plan."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory.config import Transition
from echo_forcing.memory.presets import make_policy
from echo_forcing.memory.state import SceneInfo
from echo_forcing.models import WanConfig
from echo_forcing.models.flow_unipc import unipc_sigmas, unipc_timesteps
from echo_forcing.models.model_cards import by_name
from echo_forcing.pipeline import RolloutInputError, RolloutSettings
from echo_forcing.pipeline.latents import WAN21, WAN22, from_comfy_latent, latent_format, to_comfy_latent


def test_the_wan22_latent_layout():
    z = torch.randn(1, 5, 48, 4, 6)
    raw = to_comfy_latent(z)
    assert raw.shape == (1, 48, 5, 4, 6) and torch.allclose(from_comfy_latent(raw), z, atol=1e-6)
    assert torch.allclose(raw[0, 3, 2], z[0, 2, 3] * WAN22.std[3] + WAN22.mean[3])
    assert latent_format(48) is WAN22 and latent_format(16) is WAN21 and WAN22.spatial_stride == 16
    assert len(WAN22.mean) == len(WAN22.std) == 48 and min(WAN22.std) > 0
    with pytest.raises(ValueError, match=r"neither the Wan2.1 VAE's"):
        latent_format(32)
    with pytest.raises(ValueError, match="16 or 48"):
        to_comfy_latent(torch.zeros(1, 2, 32, 4, 4))


def test_sizes_follow_the_vae_stride():
    assert RolloutSettings(num_frames=8, height=704, width=1280, vae_stride=16, frames_per_block=8).latent_size == \
        (44, 80)
    with pytest.raises(RolloutInputError, match=r"multiple of 32 pixels .* nearest valid: 512"):
        RolloutSettings(num_frames=8, height=496, width=1280, vae_stride=16, frames_per_block=8)


def test_the_unipc_schedule():
    sigmas, timesteps = unipc_sigmas(4, 5.0)
    assert timesteps == (999, 937, 833, 624) and sigmas[-1] == 0
    assert torch.allclose(sigmas[:4], torch.tensor([0.99979985, 0.93726546, 0.83305538, 0.62468737]))
    assert unipc_timesteps(2, 5.0) == (999, 833)
    with pytest.raises(RolloutInputError, match="the UniPC solver's 4 steps at shift 5 are the timesteps"):
        RolloutSettings(num_frames=8, height=64, width=64, frames_per_block=8, solver="unipc",
                        steps=(1000, 750, 500, 250))


def test_hard_cuts_and_recalls_start_a_shot_and_smooth_transitions_do_not():
    scenes = [SceneInfo("a", 1), SceneInfo("b", 1, Transition.SMOOTH), SceneInfo("c", 1, Transition.HARD_CUT),
              SceneInfo("d", 1, Transition.RECALL, 0)]
    state = make_policy("longlive2").create(1, scenes)
    reports = [state.start_scene(i, 8 * i) for i in (1, 2, 3)]
    assert [(r["mode"], r["shot"], r["rope_offset"]) for r in reports] == [("smooth", 0, 0), ("hardcut", 1, 8),
                                                                         ("hardcut", 2, 16)]


def test_the_card_plans_8_frame_unipc_blocks_at_the_wan22_stride():
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding
    from echo_forcing.memory import PresetChoice
    from echo_forcing.pipeline import SceneList
    from echo_forcing.pipeline.run_plan import plan_run

    card = by_name("longlive2-5b")
    shots = SceneList().then("a fox", stand_in_text_embedding(["a fox"], 16), 4.0, "smooth")
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, in_dim=48, out_dim=48)
    plan = plan_run(shots, cfg, width=128, height=64, dtype=torch.float32, choice=PresetChoice(preset="longlive2"),
                    card=card)
    s = plan.settings
    assert (s.frames_per_block, s.solver, s.steps, s.vae_stride, s.latent_size) == (8, "unipc", (999, 937, 833, 624),
                                                                                    16, (4, 8))
    assert plan.blocks == (2,)  # 4 s at 16 fps: 16 latent frames
    assert plan_run(shots, cfg, width=128, height=64, dtype=torch.float32, choice=PresetChoice(preset="longlive2"),
                    card=card, steps=2).settings.steps == (999, 833)
    with pytest.raises(RolloutInputError, match="makes 8-frame blocks, but Echo-Forcing's memory works on 3-frame"):
        plan_run(shots, cfg, width=128, height=64, dtype=torch.float32, card=card)
