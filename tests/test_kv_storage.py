"""fp8 (e4m3) KV storage (memory/kv_storage.py): the packed format's round trip, its quality cost in a rollout,
and the refusal of bad choices.

Round-trip bound. ``encode`` divides a ``head_dim`` row by its scale s = amax / 448, so the row's values land
in [-448, 448], and rounds them to float8 e4m3fn: 3 mantissa bits, so a normal value y (|y| >= 2^-6) moves by at
most half a unit in the last place, 2^(e - 4) <= 2^-4 |y| for 2^e <= |y|; a subnormal one (spacing 2^-9) by at
most 2^-10. ``decode`` multiplies back by s (float32: exact to 2^-24). Per element, in float32:

    |x - decode(encode(x))| <= 2^-4 |x| + 2^-10 s        (+ float32 rounding)

and since |x| <= amax and 2^-10 s < 2^-18 amax, per row: max |x - decode(encode(x))| <= 2^-4 amax. With bf16
compute the scale and the product are also rounded to bf16 (2^-8 relative each): (2^-4 + 3 x 2^-8) amax.

Quality gate: on the tiny model and the parity story (bench/kv_storage.py's "tiny" scenario, the same model,
script, size and seeds), float32 compute with fp8 storage must stay within ``FP8_ERROR_BUDGET`` times bf16
compute's own max |delta| from the float32 reference.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.echo_memory import EchoMemory
from echo_forcing.memory.kv_storage import COMPUTE, FP8_E4M3, FP8_MAX, KVFormat, KVStorageError
from echo_forcing.memory.presets import PresetChoice
from echo_forcing.memory.scene_pool import ScenePool
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.pipeline import RolloutSettings, parse_scene_script, rollout, scenes_for_script

FP8_ERROR_BUDGET = 0.5
"""Most max |delta| (against float32 compute with ``compute`` storage) that float32 compute with ``fp8_e4m3``
storage may reach, as a multiple of bf16 compute's own max |delta| on the same video.

Measured (docs/HARDWARE.md, "Quality cost of the storage dtypes"; ``python bench/kv_storage.py``): 0.24x on this
scenario, 0.17x..0.24x over six weight and noise seeds (0.10x on the mid-size model, 0.06x on the parity
model). 0.5 leaves a 2x margin and still fails a storage that keeps fewer bits: the same keys and values
rounded to one mantissa bit cost 0.68x..0.84x, to powers of two (no mantissa bit) 1.09x..1.48x
(``test_the_gate_fails_a_coarser_storage``). A budget of 2 or 3 would pass even that: on this model bf16
compute's own error (weights and every activation rounded) outweighs any rounding of the cache alone."""

E4M3_HALF_STEP = 2.0**-4
"""Half a unit in the last place of 3 mantissa bits, relative to the value (normal e4m3)."""
E4M3_SUBNORMAL_HALF_STEP = 2.0**-10
"""Half the e4m3 subnormal spacing (2^-9), in scaled units."""
BF16_HALF_STEP = 2.0**-8
"""Half a unit in the last place of bf16 (8 significant bits), relative."""

STORY = Path(__file__).parent / "fixtures" / "echo_forcing" / "story_trace.json"
TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)
SIZE = 128
WEIGHTS_SEED = 0
NOISE_SEED = 0


def _rows(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Keys shaped like the memory's ``[1, tokens, heads, head_dim]``, rows of very different magnitudes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 48, 3, 128, generator=gen)
    x *= torch.logspace(-6, 4, 48).view(1, 48, 1, 1)  # scales per row from 1e-6 to 1e4
    x[0, 5, 1, 17] = 0.0  # a zero inside a row
    x[0, 7] = 0.0  # whole rows of zeros (every head)
    return x.to(dtype)


# ---- the packed format -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_round_trip_error_is_within_half_a_step_of_e4m3(dtype):
    fmt = KVFormat(FP8_E4M3, dtype)
    x = _rows(1, dtype)
    y = fmt.decode(fmt.encode(x))
    assert y.dtype == dtype and y.shape == x.shape
    x64, y64 = x.double(), y.double()
    err = (y64 - x64).abs()
    amax = x64.abs().amax(dim=-1, keepdim=True)
    scale = amax / FP8_MAX
    if dtype == torch.float32:
        element_bound = E4M3_HALF_STEP * x64.abs() + E4M3_SUBNORMAL_HALF_STEP * scale + 2.0**-22 * amax
        row_bound = E4M3_HALF_STEP * amax
    else:
        element_bound = (E4M3_HALF_STEP + 3 * BF16_HALF_STEP) * x64.abs() + 2.0**-9 * scale
        row_bound = (E4M3_HALF_STEP + 3 * BF16_HALF_STEP) * amax
    assert bool((err <= element_bound).all()), (err - element_bound).max().item()
    assert bool((err.amax(dim=-1, keepdim=True) <= row_bound).all())
    # not vacuous: the data really is rounded to 3 mantissa bits (bf16 alone would stay within 2^-8 amax)
    worst = (err.amax(dim=-1, keepdim=True) / amax.clamp_min(1e-30)).max().item()
    assert 2.0**-6 < worst <= row_bound.div(amax.clamp_min(1e-30)).max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_keeps_zeros_exactly(dtype):
    fmt = KVFormat(FP8_E4M3, dtype)
    x = _rows(2, dtype)
    y = fmt.decode(fmt.encode(x))
    assert bool((y[x == 0] == 0).all()) and int((x == 0).sum()) == 3 * 128 + 1
    assert torch.isfinite(y).all()
    buffer = fmt.zeros((1, 6, 3, 128), "cpu")
    assert buffer.dtype == torch.uint8 and buffer.shape == (1, 6, 3, 132)
    assert torch.equal(fmt.decode(buffer), torch.zeros(1, 6, 3, 128, dtype=dtype))


def test_encode_and_decode_never_change_their_input():
    fmt = KVFormat(FP8_E4M3, torch.float32)
    x = _rows(3)
    before = x.clone()
    packed = fmt.encode(x)
    assert torch.equal(x, before)  # float32 input is widened "in place" to itself: encode must not write to it
    packed_before = packed.clone()
    fmt.decode(packed)
    assert torch.equal(packed, packed_before)


def test_packed_shape_and_bytes():
    fmt = KVFormat(FP8_E4M3, torch.bfloat16)
    packed = fmt.encode(_rows(4, torch.bfloat16))
    assert packed.dtype == torch.uint8 and packed.shape == (1, 48, 3, 128 + 4)
    assert fmt.packed and fmt.stored_dtype == torch.uint8 and fmt.stored_dim(128) == 132
    assert fmt.row_bytes(128) == 132 and fmt.nbytes(10, 12, 128) == 10 * 12 * 132
    assert fmt.stored(packed) is packed  # stored rows pass as they are
    assert torch.equal(fmt.stored(_rows(4, torch.bfloat16)), packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compute_format_is_the_tensor_itself(dtype):
    fmt = KVFormat(COMPUTE, dtype)
    x = _rows(5, dtype)
    assert not fmt.packed and fmt.stored_dtype == dtype and fmt.stored_dim(128) == 128
    assert fmt.encode(x) is x
    assert fmt.decode(x) is x  # no copy
    assert fmt.row_bytes(128) == 128 * dtype.itemsize
    assert torch.equal(fmt.encode(x.double()), x.double().to(dtype))  # another dtype is cast


MOVES = {
    "slice of tokens": lambda t: t[:, 10:30],
    "strided tokens": lambda t: t[:, ::3],
    "gather": lambda t: t[:, torch.tensor([40, 2, 7, 7, 19])],
    "roll": lambda t: t.roll(-9, dims=1),
    "heads": lambda t: t[:, :, 1:],
    "flip": lambda t: t.flip(1),
    "concatenate": lambda t: torch.cat((t[:, 30:], t[:, :12]), dim=1),
    "copy into a buffer": lambda t: torch.zeros_like(t).index_copy_(1, torch.tensor([3, 0, 47]), t[:, 20:23]),
    "clone and transpose": lambda t: t.transpose(1, 2).clone(),
}


@pytest.mark.parametrize("move", list(MOVES))
def test_moving_packed_rows_then_decoding_equals_decoding_then_moving(move):
    """The memory moves, rolls, gathers and copies packed rows as plain tensors: scale and data travel together."""
    fmt = KVFormat(FP8_E4M3, torch.float32)
    packed = fmt.encode(_rows(6))
    op = MOVES[move]
    assert torch.equal(fmt.decode(op(packed)), op(fmt.decode(packed)))


# ---- quality cost in a rollout ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_wan_state_dict(TINY, seed=WEIGHTS_SEED)


def _rollout(weights, dtype: torch.dtype, **memory) -> torch.Tensor:
    """The parity story on the tiny model in ``dtype`` (weights cast to it): the output latents in float32."""
    return _story(weights, dtype, **memory).latents.float()


def _story(weights, dtype: torch.dtype, **memory):
    model = CausalWan(WanDiT.from_state_dict(weights).to(dtype), dtype=dtype, device="cpu")
    scenes = parse_scene_script(json.loads(STORY.read_text(encoding="utf-8"))["meta"]["prompt"])
    embeddings = stand_in_text_embedding([s.prompt for s in scenes], TINY.text_dim)
    texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts)
    assert [s.num_blocks for s in plan] == [12, 4, 2, 2, 1]  # the 21-frame cache rolls, compression runs
    policy = EchoMemory(encode_text=lambda prompts: stand_in_text_embedding(prompts, TINY.text_dim), **memory)
    settings = RolloutSettings(num_frames=frames, height=SIZE, width=SIZE, seed=NOISE_SEED)
    with torch.inference_mode():
        return rollout(model, plan, settings, policy)


@pytest.fixture(scope="module")
def reference(weights) -> torch.Tensor:
    return _rollout(weights, torch.float32, kv_storage=COMPUTE)


@pytest.fixture(scope="module")
def bf16_error(weights, reference) -> float:
    """bf16 compute's own max |delta| from the float32 reference."""
    error = (_rollout(weights, torch.bfloat16, kv_storage=COMPUTE) - reference).abs().max().item()
    assert error > 0
    return error


def test_fp8_storage_costs_less_than_the_budget_times_bf16_compute(weights, reference, bf16_error):
    fp8 = _rollout(weights, torch.float32, kv_storage=FP8_E4M3)
    error = (fp8 - reference).abs().max().item()
    assert error > 0, "fp8 storage gave the float32 reference bit for bit: the keys and values were not encoded"
    assert error <= FP8_ERROR_BUDGET * bf16_error, (
        f"fp8 storage: max |delta| {error:.4g} = {error / bf16_error:.2f}x bf16 compute's {bf16_error:.4g} "
        f"(budget {FP8_ERROR_BUDGET}x; docs/HARDWARE.md)")


def test_the_gate_fails_a_coarser_storage(weights, reference, bf16_error, monkeypatch):
    """Keys and values rounded to powers of two before the fp8 encoding (a format without mantissa bits) break
    the budget: the gate measures the storage's precision."""
    encode = KVFormat.encode

    def coarse(self, x):
        mantissa, exponent = torch.frexp(x.float())
        return encode(self, torch.ldexp(torch.round(mantissa * 2) / 2, exponent))

    monkeypatch.setattr(KVFormat, "encode", coarse)
    error = (_rollout(weights, torch.float32, kv_storage=FP8_E4M3) - reference).abs().max().item()
    assert error > FP8_ERROR_BUDGET * bf16_error, f"{error / bf16_error:.2f}x bf16 compute's error"


def test_compute_storage_is_the_default_bit_for_bit(weights, reference):
    assert EchoMemory().kv_storage == COMPUTE
    assert torch.equal(_rollout(weights, torch.float32), reference)


def test_an_fp8_run_keeps_its_scene_pool_in_fp8_and_saves_it_in_the_compute_dtype(weights, tmp_path):
    """Recall frames stay in the run's storage format (0.52x); a saved pool holds them decoded, and a compute run
    recalls from the in-memory fp8 pool exactly as from its file."""
    fp8, compute = (_story(weights, torch.float32, kv_storage=kv).pool for kv in (FP8_E4M3, COMPUTE))
    assert len(fp8.entries) == len(compute.entries) == 5
    decode = KVFormat(FP8_E4M3, torch.float32).decode
    for packed, plain in zip(fp8.entries, compute.entries, strict=True):
        for (k, v), (k_plain, _) in zip(packed.recall, plain.recall, strict=True):
            assert k.dtype == v.dtype == torch.uint8 and k.shape[-1] == k_plain.shape[-1] + 4
            assert (decode(k) - k_plain).abs().max() < 0.1 * k_plain.abs().max()  # the same scene, near
    path = tmp_path / "fp8.safetensors"
    fp8.save(path)
    loaded = ScenePool.load(path)
    for packed, read in zip(fp8.entries, loaded.entries, strict=True):
        for (k, v), (k_read, v_read) in zip(packed.recall, read.recall, strict=True):
            assert k_read.dtype == torch.float32
            assert torch.equal(decode(k), k_read) and torch.equal(decode(v), v_read)
    packed = replace(loaded, entries=tuple(replace(read, recall=entry.recall)
                                           for read, entry in zip(loaded.entries, fp8.entries, strict=True)))
    assert packed.entries[0].recall[0][0].dtype == torch.uint8
    assert torch.equal(_rollout(weights, torch.float32, pool=packed), _rollout(weights, torch.float32, pool=loaded))


# ---- bad choices -----------------------------------------------------------------------------------------------

def test_an_unknown_kv_storage_is_refused_with_the_choices():
    with pytest.raises(KVStorageError, match=r"kv_storage must be one of compute, fp8_e4m3; got 'int4'"):
        EchoMemory(kv_storage="int4")
    with pytest.raises(KVStorageError, match=r"got 'auto'"):  # the memory needs a format; the planner picks auto
        EchoMemory(kv_storage="auto")
    with pytest.raises(KVStorageError, match=r"kv_storage must be one of"):
        KVFormat("fp16", torch.float32)
    with pytest.raises(ConfigError, match=r"kv_storage must be one of auto, compute, fp8_e4m3; got 'fp16'"):
        PresetChoice(kv_storage="fp16")
    assert EchoMemory(kv_storage=FP8_E4M3).kv_storage == FP8_E4M3
    assert PresetChoice(kv_storage=FP8_E4M3).kv_options() == (FP8_E4M3,)


def test_fp8_storage_is_refused_for_a_baseline_preset():
    with pytest.raises(ConfigError, match=r"kv_storage fp8_e4m3 is available for the echo-forcing presets; "
                                          r"self-forcing keeps its cache in the compute dtype"):
        PresetChoice(preset="self-forcing", kv_storage=FP8_E4M3)
    assert PresetChoice(preset="self-forcing", kv_storage=COMPUTE).kv_options() == (COMPUTE,)
    assert PresetChoice(preset="self-forcing").kv_options() == (COMPUTE,)  # auto never offers fp8 to a baseline
    assert PresetChoice(preset="echo-forcing-paper", kv_storage=FP8_E4M3).kv_options() == (FP8_E4M3,)
