"""Reward Forcing's cache: sink 3 + rolling 6 at slot positions, and the EMA blend of every frame that leaves
into the sink, computed as the code computes it (products rounded to the cache dtype)."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory.config import ConfigError
from echo_forcing.memory.frame_cache import CacheLengthError
from echo_forcing.memory.presets import make_policy
from echo_forcing.memory.reward_forcing import RewardForcingCacheConfig
from echo_forcing.models import BlockCall

GRID, P = (1, 2), 2


def _frames(start: int, count: int, dtype=torch.float32) -> torch.Tensor:
    """Keys whose every value is the frame's index + 1 (so each slot says which frame it holds)."""
    values = torch.arange(start + 1, start + count + 1, dtype=torch.float32).repeat_interleave(P)
    return values.view(1, -1, 1, 1).expand(1, count * P, 1, 4).to(dtype).clone()


def _block(layer, block: int, dtype=torch.float32):
    start = 3 * block
    for t in (1000.0, 500.0):  # noisy calls: marked keys, overwritten by the clean pass
        noisy = _frames(start, 3, dtype) + 100
        window = layer.update(noisy, noisy, noisy, BlockCall(start, 3, t, False, GRID))
        if t == 1000.0:  # what the first call attends (the window is a view of the buffer: copy it now)
            first = window.k.clone(), window.k_time, window.q_time
    clean = _frames(start, 3, dtype)
    layer.update(clean, clean, clean, BlockCall(start, 3, 0.0, True, GRID))
    return first


def test_layout_slot_positions_and_the_ema_sink():
    layer = make_policy("reward-forcing").create(1).layers[0]
    sink = _frames(0, 3)[0]  # frames 0..2, as the first block writes them
    for block in range(6):
        keys, k_time, q_time = _block(layer, block)
        n = min(3 * block + 3, 9)
        assert k_time.tolist() == list(range(n)) and q_time.tolist() == list(range(n - 3, n))
        held = keys[0, ::P, 0, 0].tolist()
        if block >= 3:  # the frames that left (3*block-6 .. 3*block-4, clean) were blended into the sink
            gone = _frames(3 * block - 6, 3)[0]
            sink = 0.999 * sink + (1 - 0.999) * gone
            assert held[3:6] == [3 * block - 2, 3 * block - 1, 3 * block]  # the previous block, clean
            assert held[6:] == [3 * block + 101, 3 * block + 102, 3 * block + 103]  # this block, noisy
        assert torch.allclose(layer.k[0, :3 * P], sink, atol=1e-6) and torch.equal(layer.k[0, :3 * P],
                                                                                    layer.v[0, :3 * P])
    assert layer.local_end == 9 and layer.device_bytes == 2 * 9 * P * 4 * 4


def test_the_blend_rounds_like_the_code_in_bf16():
    """In bf16, 0.999 * x rounds back to x: the sink barely moves, as in the released sampler."""
    layer = make_policy("reward-forcing").create(1).layers[0]
    for block in range(4):
        _block(layer, block, torch.bfloat16)
    first = _frames(0, 3, torch.bfloat16)[0]
    gone = _frames(3, 3, torch.bfloat16)[0]
    want = 0.999 * first + (1 - 0.999) * gone  # each product rounded to bf16, then the sum
    assert layer.k.dtype == torch.bfloat16 and torch.equal(layer.k[0, :3 * P], want)
    assert not torch.equal(want, (0.999 * first.float() + 0.001 * gone.float()).bfloat16())


def test_bad_settings_are_refused():
    with pytest.raises(CacheLengthError, match="needs 3-frame blocks"):
        RewardForcingCacheConfig().check_length(12, 1)
    with pytest.raises(ConfigError, match="ema_alpha must be a number in"):
        RewardForcingCacheConfig(ema_alpha=1.5)
    with pytest.raises(ConfigError, match="sink_size"):
        RewardForcingCacheConfig(sink_size=9)
