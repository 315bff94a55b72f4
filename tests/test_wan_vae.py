"""The Wan2.1 VAE encoder (models/wan_vae.py): parity with the official code, the file layouts it reads and the
files it refuses, the inputs it refuses, and the pixels it makes from images.

The golden outputs come from the official ``wan/modules/vae.py`` (tests/fixtures/wan_vae/README.md says how);
the weights are redrawn here by ``random_wan_vae_state_dict`` from the seed the fixture names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from echo_forcing.models.checkpoints import CheckpointError
from echo_forcing.models.wan_vae import (
    WanVAEEncoder,
    encode_pixels,
    encoder_shapes,
    load_wan_vae_encoder,
    pixels_from_image,
    random_wan_vae_state_dict,
    wan_vae_shapes,
)
from echo_forcing.pipeline.latents import from_comfy_latent

FIXTURE = Path(__file__).parent / "fixtures" / "wan_vae" / "official_encoder.safetensors"
TOLERANCE = 1e-5
"""float32; the fixture was bit-identical where it was made, other CPUs may order sums differently."""
SMALL_DIM = 8
"""Every stage and name of the real VAE at 1/12 of its width, for the tests that need no official numbers."""


def _encoder_part(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(("encoder.", "conv1."))}


def _pixels(seed: int, shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict]:
    with safe_open(FIXTURE, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def real_size_encoder(golden) -> WanVAEEncoder:
    meta = golden[1]
    sd = random_wan_vae_state_dict(int(meta["weights_seed"]), int(meta["dim"]), decoder=False)
    return WanVAEEncoder.from_state_dict(sd)


@pytest.fixture(scope="module")
def small_vae() -> dict[str, torch.Tensor]:
    """A whole small VAE file's tensors (encoder, conv1, conv2, decoder)."""
    return random_wan_vae_state_dict(3, SMALL_DIM)


@pytest.fixture(scope="module")
def small_encoder(small_vae) -> WanVAEEncoder:
    return WanVAEEncoder.from_state_dict(_encoder_part(small_vae))


# --- parity with the official encoder ------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "latent_frames"), [("image", 1), ("clip", 3)])
def test_raw_mu_matches_the_official_encoder(golden, real_size_encoder, name, latent_frames):
    tensors, meta = golden
    shape = json.loads(meta[f"{name}_shape"])
    pixels = _pixels(int(meta[f"{name}_seed"]), shape)
    assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == meta[f"{name}_pixels_sha256"], \
        "torch.rand no longer draws the fixture's pixels from its seed"
    mu = encode_pixels(real_size_encoder, pixels)
    want = tensors[f"{name}_mu"]
    assert list(mu.shape) == [shape[0], 16, latent_frames, shape[3] // 8, shape[4] // 8] == list(want.shape)
    assert mu.dtype == torch.float32
    diff = (mu - want).abs().max().item()
    if diff > TOLERANCE:
        h = hashlib.sha256()
        for k, v in sorted(real_size_encoder.state_dict().items()):
            h.update(k.encode())
            h.update(v.contiguous().numpy().tobytes())
        same = h.hexdigest() == meta["encoder_weights_sha256"]
        pytest.fail(f"max |Δ| = {diff:.3g} against the official encoder; the redrawn weights are "
                    f"{'the fixture' if same else 'NOT the fixture'}'s")
    # the official WanVAE.encode normalises with the latent statistics; from_comfy_latent gives the same values
    normalised = from_comfy_latent(mu).permute(0, 2, 1, 3, 4)  # [B, T, 16, h, w] -> [B, 16, T, h, w]
    assert (normalised - tensors[f"{name}_normalised"]).abs().max().item() <= TOLERANCE


def test_the_first_frame_is_encoded_alone_and_chunks_are_causal(small_encoder):
    clip = _pixels(5, (1, 3, 9, 16, 24))
    mu = encode_pixels(small_encoder, clip)
    assert mu.shape == (1, 16, 3, 2, 3)
    torch.testing.assert_close(encode_pixels(small_encoder, clip[:, :, :1]), mu[:, :, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(encode_pixels(small_encoder, clip[:, :, :5]), mu[:, :, :2], rtol=0, atol=1e-6)
    changed = clip.clone()
    changed[:, :, 8] = 0.0  # the last chunk's last frame reaches only the last latent frame
    mu_changed = encode_pixels(small_encoder, changed)
    torch.testing.assert_close(mu_changed[:, :, :2], mu[:, :, :2], rtol=0, atol=1e-6)
    assert (mu_changed[:, :, 2] - mu[:, :, 2]).abs().max() > 1e-3


def test_bfloat16_under_inference_mode(small_vae, small_encoder):
    pixels = _pixels(6, (1, 3, 5, 16, 24))
    encoder = WanVAEEncoder.from_state_dict(_encoder_part(small_vae), dtype=torch.bfloat16)
    assert encoder.conv1.weight.dtype == torch.bfloat16
    mu = encode_pixels(encoder, pixels)
    assert mu.dtype == torch.float32 and mu.is_inference()
    reference = encode_pixels(small_encoder, pixels)
    assert (mu - reference).abs().max() <= 0.05 * reference.abs().max()


# --- the file layout ------------------------------------------------------------------------------------------

def test_layout_is_the_comfyui_file_layout():
    """These shapes are checked against ComfyUI's module tree (tests/test_tiny_models.py, the tiny VAE file);
    the fixture's run loaded the same layout strictly into the official WanVAE_."""
    assert len(wan_vae_shapes()) == len(wan_vae_shapes(SMALL_DIM)) == 194 and len(encoder_shapes()) == 86
    assert encoder_shapes() == {k: s for k, s in wan_vae_shapes().items() if k.startswith(("encoder.", "conv1."))}


def test_random_weights_are_deterministic_per_tensor(small_vae):
    again = random_wan_vae_state_dict(3, SMALL_DIM, decoder=False)
    assert sorted(again) == sorted(_encoder_part(small_vae))
    assert all(torch.equal(v, small_vae[k]) for k, v in again.items())
    other = random_wan_vae_state_dict(4, SMALL_DIM, decoder=False)
    assert not torch.equal(other["conv1.weight"], again["conv1.weight"])


def test_loads_the_encoder_from_comfyui_safetensors_and_official_pth(tmp_path, small_vae, small_encoder):
    pixels = _pixels(7, (1, 3, 1, 16, 16))
    want = encode_pixels(small_encoder, pixels)
    save_file({k: v.half() for k, v in small_vae.items()}, tmp_path / "wan_2.1_vae.safetensors")
    torch.save(small_vae, tmp_path / "Wan2.1_VAE.pth")
    save_file({"first_stage_model." + k: v for k, v in small_vae.items()}, tmp_path / "bundle.safetensors")
    from_half = load_wan_vae_encoder(tmp_path / "wan_2.1_vae.safetensors")
    assert from_half.conv1.weight.dtype == torch.float32
    assert sorted(from_half.state_dict()) == sorted(_encoder_part(small_vae))  # the decoder is not loaded
    torch.testing.assert_close(encode_pixels(from_half, pixels), want, rtol=0, atol=0.02 * want.abs().max().item())
    for name in ("Wan2.1_VAE.pth", "bundle.safetensors"):
        assert torch.equal(encode_pixels(load_wan_vae_encoder(tmp_path / name), pixels), want), name


def _refusal(tmp_path, tensors: dict, name: str = "vae.safetensors") -> str:
    save_file(tensors, tmp_path / name)
    with pytest.raises(CheckpointError) as e:
        load_wan_vae_encoder(tmp_path / name)
    return str(e.value)


def test_refuses_other_vaes_and_models(tmp_path, tiny_state_dict):
    sd_vae = {"encoder.conv_in.weight": torch.zeros(128, 3, 3, 3), "encoder.down.0.block.0.norm1.weight":
              torch.ones(128), "quant_conv.weight": torch.zeros(8, 8, 1, 1), "decoder.conv_out.weight":
              torch.zeros(3, 128, 3, 3)}
    msg = _refusal(tmp_path, sd_vae)
    assert "not a Wan2.1 VAE" in msg and "encoder.conv1.weight" in msg and "2-D image VAE" in msg
    assert "wan_2.1_vae.safetensors" in msg
    msg = _refusal(tmp_path, tiny_state_dict, "dit.safetensors")
    assert "not a Wan2.1 VAE" in msg and "Wan diffusion model (DiT)" in msg


def test_refuses_a_48_channel_vae(tmp_path, small_vae):
    wan22 = dict(small_vae, **{"conv1.weight": torch.zeros(96, 96, 1, 1, 1), "conv1.bias": torch.zeros(96)})
    msg = _refusal(tmp_path, wan22)
    assert "48 latent channels" in msg and "Wan2.2" in msg and "[96, 96, 1, 1, 1]" in msg
    patchified = dict(small_vae, **{"encoder.conv1.weight": torch.zeros(SMALL_DIM, 12, 3, 3, 3)})
    msg = _refusal(tmp_path, patchified)
    assert "encoder.conv1.weight is [8, 12, 3, 3, 3]" in msg and "patchified" in msg


def test_refuses_truncated_and_mismatched_state_dicts(tmp_path, small_vae):
    truncated = {k: v for k, v in small_vae.items() if not k.startswith(("encoder.middle.", "encoder.head."))}
    msg = _refusal(tmp_path, truncated)
    assert "does not hold a complete Wan2.1 VAE encoder" in msg and "missing" in msg
    assert "encoder.head.2.weight" in msg or "encoder.middle.0.residual.0.gamma" in msg
    assert "nothing was loaded" in msg
    no_conv1 = {k: v for k, v in small_vae.items() if not k.startswith("conv1.")}
    assert "2 missing: conv1.weight; conv1.bias" in _refusal(tmp_path, no_conv1)
    wrong = dict(small_vae, **{"encoder.downsamples.5.time_conv.weight": torch.zeros(16, 16, 3, 3, 3),
                               "encoder.downsamples.2.time_conv.weight": torch.zeros(8, 8, 3, 1, 1)})
    msg = _refusal(tmp_path, wrong)
    assert "encoder.downsamples.5.time_conv.weight: file [16, 16, 3, 3, 3] vs expected [16, 16, 3, 1, 1]" in msg
    assert "1 unexpected: encoder.downsamples.2.time_conv.weight" in msg
    nan = dict(small_vae, **{"conv1.bias": torch.full((32,), float("nan"))})
    assert "NaN or infinite" in _refusal(tmp_path, nan) and "conv1.bias" in _refusal(tmp_path, nan)
    ints = dict(small_vae, **{"conv1.bias": torch.zeros(32, dtype=torch.int32)})
    assert "int32" in _refusal(tmp_path, ints)
    with pytest.raises(CheckpointError, match="not found"):
        load_wan_vae_encoder(tmp_path / "absent.safetensors")


# --- inputs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("frames", "hint"), [(2, "use 1 or 5 frames"), (4, "use 1 or 5 frames"),
                                              (10, "use 9 or 13 frames"), (0, "at least one frame")])
def test_refuses_frame_counts_that_are_not_1_plus_4k(small_encoder, frames, hint):
    with pytest.raises(ValueError, match=r"1 \+ 4k frames") as e:
        encode_pixels(small_encoder, torch.zeros(1, 3, frames, 16, 16))
    assert hint in str(e.value)


def test_refuses_bad_shapes_sizes_and_values(small_encoder):
    with pytest.raises(ValueError, match=r"multiples of 8.*36x48.*32x48"):
        encode_pixels(small_encoder, torch.zeros(1, 3, 1, 36, 48))
    with pytest.raises(ValueError, match="multiples of 8"):
        encode_pixels(small_encoder, torch.zeros(1, 3, 1, 16, 4))
    for bad in (torch.zeros(1, 4, 1, 16, 16), torch.zeros(3, 1, 16, 16)):
        with pytest.raises(ValueError, match=r"pixels \[batch, 3, frames, height, width\]"):
            encode_pixels(small_encoder, bad)
    with pytest.raises(ValueError, match=r"floats in \[-1, 1\], got torch.uint8"):
        encode_pixels(small_encoder, torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="from 0 to 255"):  # [0, 255] values, not [-1, 1]
        encode_pixels(small_encoder, torch.linspace(0, 255, 768).view(1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        encode_pixels(small_encoder, torch.full((1, 3, 1, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):  # the module itself refuses, not only encode_pixels
        small_encoder(torch.zeros(1, 3, 3, 16, 16))


# --- pixels from images -------------------------------------------------------------------------------------

def _bars(height: int, width: int, border: int, axis: int) -> np.ndarray:
    """A blue picture with red bars ``border`` wide on two sides (left/right for axis 1, top/bottom for 0)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = 200
    bars = np.moveaxis(image, axis, 0)  # a view, the cropped axis first
    bars[:border] = bars[-border:] = (255, 0, 0)
    return image


@pytest.mark.parametrize(("height", "width", "axis"), [(40, 100, 1), (100, 60, 0)])
def test_center_crop_to_the_target_aspect(height, width, axis):
    """40x100 to 32x48 (aspect 1.5) keeps the middle 60 columns; 100x60 to 32x32 the middle 60 rows."""
    out = pixels_from_image(_bars(height, width, 20, axis), 48 if axis else 32, 32)
    assert out.shape == (1, 3, 1, 32, 48 if axis else 32) and out.dtype == torch.float32
    blue = torch.tensor([-1.0, -1.0, 200 / 255 * 2 - 1]).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out, blue.expand_as(out), rtol=0, atol=1e-6)  # no red left


def test_bilinear_resize_without_antialiasing():
    """Halving with align_corners=False samples between pixel pairs: the mean of each 2x2 block."""
    image = torch.randint(0, 256, (64, 96, 3), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    out = pixels_from_image(image.numpy(), 48, 32)
    want = F.avg_pool2d(image.permute(2, 0, 1).float().unsqueeze(0) / 255.0, 2) * 2 - 1
    torch.testing.assert_close(out[:, :, 0], want, rtol=0, atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1


def test_frames_and_png_files(tmp_path):
    av = pytest.importorskip("av")
    frames = torch.randint(0, 256, (5, 24, 40, 3), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    clip = pixels_from_image(frames, 32, 16)
    assert clip.shape == (1, 3, 5, 16, 32)
    torch.testing.assert_close(clip[:, :, 2:3], pixels_from_image(frames[2], 32, 16), rtol=0, atol=0)
    path = tmp_path / "start.png"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 40, 24, "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(frames[0].numpy(), format="rgb24")),
                       *stream.encode()]:
            container.mux(packet)
    assert torch.equal(pixels_from_image(path, 32, 16), pixels_from_image(frames[0], 32, 16))
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="could not be read as an image"):
        pixels_from_image(tmp_path / "notes.png", 32, 16)
    with pytest.raises(ValueError, match="not found"):
        pixels_from_image(tmp_path / "absent.png", 32, 16)


def test_refuses_bad_images_and_sizes():
    image = np.zeros((20, 30, 3), np.uint8)
    for width, height in ((50, 32), (48, 0), (48.0, 32)):
        with pytest.raises(ValueError, match="positive multiple of 8"):
            pixels_from_image(image, width, height)
    for bad in (np.zeros((20, 30, 4), np.uint8), np.zeros((20, 30, 3), np.float32), np.zeros((20, 30), np.uint8)):
        with pytest.raises(ValueError, match="RGB uint8 image"):
            pixels_from_image(bad, 32, 16)
