"""The plain Self-Forcing cache behind the memory seam: slot layout, positions, overwrite and roll rules."""

from __future__ import annotations

import pytest
import torch

from echo_forcing.memory import CacheLengthError, SelfForcingCacheConfig
from echo_forcing.models import BlockCall

P = 4  # tokens per frame in these tests (grid 2x2)


def _kv(start: int, frames: int, marker: float = 0.0):
    """Keys whose every token holds its absolute frame index (+ marker), so slot contents are readable."""
    k = torch.arange(start, start + frames, dtype=torch.float32).repeat_interleave(P).view(1, -1, 1, 1) + marker
    k = k.expand(1, frames * P, 1, 2).clone()
    return k, -k


def _slot_frames(window) -> list[int]:
    return window.k[0, ::P, 0, 0].round().long().tolist()


def _run_block(cache, block: int, frames: int = 3):
    """Four denoising calls with noisy markers, then the clean context pass; returns the last window."""
    start = block * frames
    for step, t in enumerate((1000.0, 937.5, 833.3, 625.0)):
        k, v = _kv(start, frames, marker=0.25 * (step + 1))
        cache.update(k, k, v, BlockCall(start, frames, t, False, (2, 2)))
    k, v = _kv(start, frames)
    return cache.update(k, k, v, BlockCall(start, frames, 0.0, True, (2, 2)))


def test_global_cache_appends_then_overwrites_and_uses_absolute_positions():
    cache = SelfForcingCacheConfig().create(1).layers[0]
    for block in range(7):
        window = _run_block(cache, block)
        assert _slot_frames(window) == list(range(3 * block + 3))
        assert window.k_time.tolist() == list(range(3 * block + 3))
        assert window.q_time.tolist() == [3 * block, 3 * block + 1, 3 * block + 2]
        assert torch.equal(window.v, -window.k)
    assert cache.local_end == 21 and cache.global_end == 21
    assert cache.device_bytes == 2 * 21 * P * 2 * 4


def test_repeated_calls_of_a_block_overwrite_its_slots():
    cache = SelfForcingCacheConfig().create(1).layers[0]
    k, v = _kv(0, 3, marker=0.5)
    first = cache.update(k, k, v, BlockCall(0, 3, 1000.0, False, (2, 2)))
    assert first.k[0, ::P, 0, 0].tolist() == [0.5, 1.5, 2.5]
    k, v = _kv(0, 3)
    second = cache.update(k, k, v, BlockCall(0, 3, 0.0, True, (2, 2)))
    assert second.k.shape[1] == 3 * P and second.k[0, ::P, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_global_cache_refuses_videos_longer_than_21_frames_before_work():
    config = SelfForcingCacheConfig()
    config.check_length(21, 3)
    with pytest.raises(CacheLengthError, match="21 latent frames"):
        config.check_length(24, 3)


def test_rolling_cache_keeps_the_sink_and_drops_the_oldest_frames():
    cache = SelfForcingCacheConfig(local_attn_size=9, sink_size=3).create(1).layers[0]
    expected = {
        0: [0, 1, 2], 1: [0, 1, 2, 3, 4, 5], 2: list(range(9)),
        3: [0, 1, 2, 6, 7, 8, 9, 10, 11], 4: [0, 1, 2, 9, 10, 11, 12, 13, 14], 9: [0, 1, 2, 24, 25, 26, 27, 28, 29],
    }
    for block in range(10):
        window = _run_block(cache, block)
        if block in expected:
            assert _slot_frames(window) == expected[block], block
            assert window.k_time.tolist() == expected[block]
        assert window.q_time.tolist() == [3 * block + i for i in range(3)]


def test_rolling_cache_without_sink_is_a_sliding_window():
    cache = SelfForcingCacheConfig(local_attn_size=6).create(1).layers[0]
    for block in range(5):
        window = _run_block(cache, block)
    assert _slot_frames(window) == list(range(9, 15))


@pytest.mark.parametrize("kwargs, match", [
    ({"local_attn_size": 0}, "at least 1"),
    ({"local_attn_size": 6, "sink_size": 6}, "smaller than"),
    ({"sink_size": -1}, ">= 0"),
])
def test_bad_cache_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelfForcingCacheConfig(**kwargs)


def test_rolling_cache_too_small_for_sink_and_block():
    with pytest.raises(CacheLengthError, match="cannot keep"):
        SelfForcingCacheConfig(local_attn_size=4, sink_size=2).check_length(30, 3)
