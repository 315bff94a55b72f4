"""Parity of Krea Realtime (the ``krea`` preset, memory/krea_realtime.py, with the step list ending at timestep 0)
with the official Krea Realtime session loop (krea-ai/realtime-video @ acf4b7b) on CPU, float32.

Golden fixtures in tests/fixtures/krea_realtime/ (its README says how they were made): the Self-Forcing fixture's
tiny weights, text embedding and seed, T = 15 latent frames (5 blocks), a 3-frame re-computed context with the
video's first frame kept (``keep_first_frame``), 5 steps (1000, 937.5, 833.3, 625, 0) and 4 steps (1000, 908.8,
714.0, 0). The two differ by 5..8 per frame, so the step list is pinned; every block after the first reads the
re-computed context. A third run adds the attention bias 0.3 of the release's remote code (the scope port's
semantics without its zero-padding bug): frames 3..14 move by 0.08..0.11. The release default (slow test) re-encodes
the first context frame from decoded pixels through the tiny Wan2.1 VAE of the fixture: frames 6..14 move by
0.38..0.43, and Krea's own decoder (run D) differs from Wan2.1's, which this pack and ComfyUI use, by 0.005..0.008.
"""

from __future__ import annotations

import pytest
import torch
from echo_forcing_tests.parity_fixtures import FIXTURES, assert_parity, load_golden, tiny_reference

from echo_forcing.memory.presets import make_policy
from echo_forcing.models.wan_vae_decoder import load_wan_vae
from echo_forcing.pipeline import RolloutSettings, rollout
from echo_forcing.pipeline.pixel_reencoding import PixelReencoding

GOLDEN = FIXTURES / "krea_realtime"
REFERENCE_COMMIT = "acf4b7b4e1a3049a0e04782e751d12203334038d"


@pytest.mark.parametrize("name, steps, bias", [("golden_krea_keep_first.npz", (1000, 750, 500, 250, 0), 1.0),
                                               ("golden_krea_4step.npz", (1000, 666, 333, 0), 1.0),
                                               ("golden_krea_bias03.npz", (1000, 750, 500, 250, 0), 0.3)])
def test_krea_matches_the_official_session_loop(name, steps, bias):
    golden, scale, data = load_golden(GOLDEN / name)
    assert str(data["reference_commit"]) == REFERENCE_COMMIT and bool(data["keep_first_frame"])
    assert int(data["kv_cache_num_frames"]) == 3 and float(data["kv_cache_attention_bias"]) == pytest.approx(bias)
    model, text, seed = tiny_reference()
    assert int(data["seed"]) == seed
    settings = RolloutSettings(num_frames=int(data["num_frames"]), height=480, width=832, seed=seed,
                               noise="official", steps=steps)
    latents = rollout(model, text, settings, make_policy("krea", attention_bias=bias)).latents
    stride = int(data["stride_hw"])
    assert_parity(latents[:, data["frames"].tolist(), :, ::stride, ::stride], golden, scale)


@pytest.mark.slow  # ~2.5 min on 2 cores: the tiny VAE decodes 57 frames at 480x832
def test_krea_reencoding_matches_the_official_session_loop_with_the_wan21_decoder(monkeypatch):
    """The release default (``keep_first_frame`` off): from block 2 on, the first context frame is the VAE encoding
    of a decoded pixel frame. Run D' decodes with Wan2.1's streaming decoder (what ComfyUI's VAE is); frames 6..14
    and the three re-encoded latents must match, frames 0..5 equal the keep-first run's."""
    golden, scale, data = load_golden(GOLDEN / "golden_krea_reencode_wan21dec.npz")
    assert str(data["reference_commit"]) == REFERENCE_COMMIT and not bool(data["keep_first_frame"])
    model, text, seed = tiny_reference()
    vae = load_wan_vae(GOLDEN / "tiny_vae.safetensors")
    encoded = []
    original = PixelReencoding.encode

    def record(self, latent_frame):
        out = original(self, latent_frame)
        encoded.append((latent_frame, out))
        return out

    monkeypatch.setattr(PixelReencoding, "encode", record)
    settings = RolloutSettings(num_frames=int(data["num_frames"]), height=480, width=832, seed=seed,
                               noise="official", steps=(1000, 750, 500, 250, 0))
    latents = rollout(model, text, settings, make_policy("krea", keep_first_frame=False), vae=vae).latents
    stride = int(data["stride_hw"])
    diff = assert_parity(latents[:, data["frames"].tolist(), :, ::stride, ::stride], golden, scale)
    print(f"krea re-encoding: frames 6..14 max |delta| {diff:.2e}")
    # which pixel frames were re-encoded (latent j's last pixel frame is 4j), and what they gave
    assert [4 * j for j, _ in encoded] == data["reencoded_pixel_index"].tolist()
    first = torch.cat([e for _, e in encoded], dim=1)[:, :, :, ::stride, ::stride]
    diff = assert_parity(first, torch.from_numpy(data["reencoded_first_q"].astype("float64")) * float(
        data["reencoded_first_scale"]), float(data["reencoded_first_scale"]))
    print(f"krea re-encoding: re-encoded first frames max |delta| {diff:.2e}")
