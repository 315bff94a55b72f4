"""Krea Realtime beyond the parity test (tests/test_parity_krea.py): which frames each block re-encodes, the call
sequence (a re-computation before every block after the first, no context pass), the step list ending at 0, what
the preset refuses, and the release default's re-encoded first frame (decoded pixels back through the VAE)."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.krea_realtime import KreaCacheConfig
from echo_forcing.memory.presets import make_policy
from echo_forcing.models import CausalWan
from echo_forcing.models.model_cards import by_name
from echo_forcing.models.wan_vae import encode_pixels, random_wan_vae_state_dict
from echo_forcing.models.wan_vae_decoder import StreamingDecode, wan_vae_from_tensors
from echo_forcing.pipeline import RolloutInputError, RolloutScene, RolloutSettings, rollout
from echo_forcing.pipeline.latents import from_comfy_latent, to_comfy_latent
from echo_forcing.pipeline.pixel_reencoding import PixelReencoding


def test_each_block_re_encodes_the_first_frame_and_the_latest():
    state = make_policy("krea").create(2)
    assert [state.context_frames(s) for s in (0, 3, 6, 9, 30)] == [[], [0, 1, 2], [0, 4, 5], [0, 7, 8], [0, 28, 29]]
    assert state.context_pass_per_block is False
    assert make_policy("krea", context_frames=2).create(1).context_frames(9) == [0, 8]
    with pytest.raises(ConfigError, match="keep_first_frame must be True or False"):
        KreaCacheConfig(keep_first_frame="no")
    with pytest.raises(ConfigError, match="keep_first_frame off re-encodes the first of at least 2 context frames"):
        KreaCacheConfig(context_frames=1, keep_first_frame=False)
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


@pytest.fixture(scope="module")
def tiny_vae():
    return wan_vae_from_tensors(random_wan_vae_state_dict(7, dim=8), "the tiny VAE")


def test_the_release_default_re_encodes_the_first_context_frame_once_the_video_is_long_enough():
    """keep_first_frame off (the release's rule): before the block at frame s, once s - F >= context frames,
    the first context frame comes from the last pixel frame of latent s - context_frames."""
    state = make_policy("krea", keep_first_frame=False).create(1)
    assert [state.reencoded_context(s, 3) for s in (0, 3, 6, 9, 30)] == [None, None, 3, 6, 27]
    assert make_policy("krea", keep_first_frame=False, context_frames=2).create(1).reencoded_context(6, 3) == 4
    assert make_policy("krea").create(1).reencoded_context(30, 3) is None
    assert make_policy("krea", keep_first_frame=False).needs_pixels and not make_policy("krea").needs_pixels


def test_the_streaming_decode_gives_the_whole_decode_and_each_latents_last_pixel_frame(tiny_vae):
    latents = torch.randn(1, 9, 16, 4, 6)
    whole = StreamingDecode(tiny_vae.decoder).decode(to_comfy_latent(latents))
    assert whole.shape == (1, 3, 4 * 9 - 3, 32, 48) and whole.abs().max() <= 1
    pixels = PixelReencoding(tiny_vae, keep=4)
    for first in (0, 3, 6):
        pixels.add(latents[:, first:first + 3])
    for j in (5, 6, 7, 8):  # latent j's last pixel frame is 4j; encoded alone, normalised
        want = from_comfy_latent(encode_pixels(tiny_vae.encoder, whole[:, :, 4 * j:4 * j + 1]))
        assert torch.equal(pixels.encode(j), want)
    with pytest.raises(KeyError, match="latent frame 4 was not decoded or is older than the 4 kept"):
        pixels.encode(4)
    pixels.replay(latents[:, :6])
    assert torch.equal(pixels.encode(5), from_comfy_latent(encode_pixels(tiny_vae.encoder, whole[:, :, 20:21])))


class _Contexts(CausalWan):
    """Records the latents of every re-computation call."""

    def __init__(self, dit):
        super().__init__(dit)
        self.contexts = []

    def __call__(self, latents, timesteps, text, memories, call):
        if call.context_pass:
            self.contexts.append(latents.clone())
        return super().__call__(latents, timesteps, text, memories, call)


def test_a_run_re_encodes_its_first_context_frame_and_resumes_at_a_shot_boundary(tiny_dit, tiny_vae):
    model = _Contexts(tiny_dit)
    a, b = (model.encode_text(torch.randn(1, 4, model.config.text_dim, generator=torch.Generator().manual_seed(i)))
            for i in (1, 2))
    scenes = [RolloutScene(a, 2, "a"), RolloutScene(b, 2, "b")]
    run = RolloutSettings(num_frames=12, height=16, width=32, steps=(1000, 500, 0), seed=3)
    policy = make_policy("krea", keep_first_frame=False)
    with pytest.raises(RolloutInputError, match=r"give the Wan2\.1 VAE"):
        rollout(model, scenes, run, policy)
    assert model.contexts == []  # refused before any call
    boundaries = []
    full = rollout(model, scenes, run, policy, vae=tiny_vae, on_boundary=boundaries.append)
    whole = StreamingDecode(tiny_vae.decoder).decode(to_comfy_latent(full.latents))
    assert [c.shape[1] for c in model.contexts] == [3, 3, 3]
    assert torch.equal(model.contexts[0][:, 0], full.latents[:, 0])  # block 1: the true first frame
    for block, context in ((2, model.contexts[1]), (3, model.contexts[2])):  # then latent 3b - 3's last pixel frame
        j = 3 * block - 3
        want = from_comfy_latent(encode_pixels(tiny_vae.encoder, whole[:, :, 4 * j:4 * j + 1]))
        assert torch.equal(context[:, :1], want) and torch.equal(context[:, 1:], full.latents[:, j + 1:j + 3])
    kept_first = rollout(model, scenes, run, make_policy("krea")).latents
    assert torch.equal(kept_first[:, :6], full.latents[:, :6]) and not torch.equal(kept_first, full.latents)
    again = rollout(model, scenes, run, policy, vae=tiny_vae, resume_from=boundaries[0])
    assert again.reused_blocks == 2 and torch.equal(again.latents, full.latents)


def test_the_plan_runs_the_release_default_with_a_vae_and_counts_its_decode(tiny_vae):
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding
    from echo_forcing.memory import PresetChoice
    from echo_forcing.models import WanConfig
    from echo_forcing.pipeline import SceneList
    from echo_forcing.pipeline.run_plan import plan_run

    shots = SceneList().then("a fox", stand_in_text_embedding(["a fox"], 16), 1.0, "smooth")
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
    base = {"width": 48, "height": 32, "dtype": torch.float32, "card": by_name("krea-realtime-14b")}
    kept = plan_run(shots, cfg, choice=PresetChoice(preset="krea"), **base)
    assert kept.policy.keep_first_frame and kept.vae is None and "VAE decode" not in kept.memory_need().device
    assert any("first frame stays the first context frame" in n for n in kept.notes)
    built = []
    plan = plan_run(shots, cfg, choice=PresetChoice(preset="krea"), vae=lambda: built.append(1) or tiny_vae, **base)
    assert built == [1] and plan.vae is tiny_vae and not plan.policy.keep_first_frame
    decode = plan.memory_need().device["VAE decode"]
    assert decode > tiny_vae.weight_bytes  # the weights, the decoder's history and a call's working tensors
    assert any("re-encoded from the decoded pixels" in n for n in plan.notes)
    other = plan_run(shots, cfg, choice=PresetChoice(preset="self-forcing"), vae=lambda: built.append(2), width=48,
                     height=32, dtype=torch.float32)
    assert built == [1] and other.vae is None  # never built for a preset that does not use it
    assert any("used by the krea preset only" in n for n in other.notes)


def test_a_vae_of_another_layout_is_refused_before_anything_is_built():
    from echo_forcing.models.checkpoints import CheckpointError

    whole = random_wan_vae_state_dict(7, dim=8)
    with pytest.raises(CheckpointError, match="encoder alone cannot decode"):
        wan_vae_from_tensors({k: v for k, v in whole.items() if not k.startswith("decoder.")}, "half.safetensors")
    wide = dict(whole, **{"conv2.weight": torch.zeros(48, 48, 1, 1, 1), "conv2.bias": torch.zeros(48)})
    with pytest.raises(CheckpointError, match=r"48 latent channels \(the Wan2.2 TI2V-5B VAE\): conv2.weight"):
        wan_vae_from_tensors(wide, "wide.safetensors")
    partial = {k: v for k, v in whole.items() if k != "decoder.upsamples.3.resample.1.weight"}
    with pytest.raises(CheckpointError, match=r"1 missing: decoder\.upsamples\.3\.resample\.1\.weight"):
        wan_vae_from_tensors(partial, "partial.safetensors")
    bad = dict(whole, **{"decoder.head.2.weight": torch.full_like(whole["decoder.head.2.weight"], float("nan"))})
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.weight"):
        wan_vae_from_tensors(bad, "nan.safetensors")
