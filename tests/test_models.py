"""Unit tests of models/: RoPE, schedule, sinusoid, and the block forward over foreign module trees."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from echo_forcing.models import (
    BlockCall,
    CausalWan,
    FlowMatchSchedule,
    WanConfig,
    WanDiT,
    random_wan_state_dict,
)
from echo_forcing.models.block_forward import sinusoidal_embedding
from echo_forcing.models.rope import Rope3D, rope_frequencies, split_channels
from echo_forcing.models.seam import AttentionWindow

TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


# --- RoPE ------------------------------------------------------------------------------------------------

def test_rope_split_matches_wan():
    assert split_channels(128) == (22, 21, 21)
    assert sum(split_channels(128)) == 64


def test_rope_rotation_matches_explicit_pairs():
    torch.manual_seed(0)
    rope = Rope3D(128)
    grid = (2, 3)
    x = torch.randn(1, 2 * 6, 1, 128, dtype=torch.float64)
    positions = torch.tensor([5, 40])
    out = rope.apply(x, positions, grid)
    ct, ch, cw = split_channels(128)
    for token in range(12):
        frame, rem = divmod(token, 6)
        row, col = divmod(rem, 3)
        for c in range(64):
            if c < ct:
                pos, j, n = positions[frame].item(), c, 2 * ct
            elif c < ct + ch:
                pos, j, n = row, c - ct, 2 * ch
            else:
                pos, j, n = col, c - ct - ch, 2 * cw
            angle = pos * 10000.0 ** (-2 * j / n)
            re, im = x[0, token, 0, 2 * c].item(), x[0, token, 0, 2 * c + 1].item()
            cos, sin = math.cos(angle), math.sin(angle)
            assert out[0, token, 0, 2 * c].item() == pytest.approx(re * cos - im * sin, abs=1e-12)
            assert out[0, token, 0, 2 * c + 1].item() == pytest.approx(re * sin + im * cos, abs=1e-12)


def test_rope_scores_depend_on_relative_time_only():
    torch.manual_seed(1)
    rope = Rope3D(128)
    q, k = torch.randn(1, 1, 1, 128, dtype=torch.float64), torch.randn(1, 1, 1, 128, dtype=torch.float64)
    def score(pq, pk):
        return (rope.apply(q, torch.tensor([pq]), (1, 1)) * rope.apply(k, torch.tensor([pk]), (1, 1))).sum().item()
    assert score(10, 3) == pytest.approx(score(107, 100), abs=1e-10)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-6)


def test_rope_table_grows_beyond_1024_positions_with_the_same_values():
    rope = Rope3D(128, initial_positions=8)
    x = torch.randn(1, 1, 1, 128)
    far = rope.apply(x, torch.tensor([3000]), (1, 1))
    table = rope_frequencies(3001, 44)
    expected = torch.view_as_complex(x.double().reshape(1, 1, 1, 64, 2))[..., :22] * table[3000]
    assert torch.allclose(torch.view_as_real(expected).flatten(3).float(), far[..., :44])
    assert rope.num_positions > 3000


def test_rope_rejects_negative_positions_and_bad_token_counts():
    rope = Rope3D(128)
    with pytest.raises(ValueError, match=">= 0"):
        rope.apply(torch.zeros(1, 4, 1, 128), torch.tensor([-1]), (2, 2))
    with pytest.raises(ValueError, match="do not match"):
        rope.apply(torch.zeros(1, 5, 1, 128), torch.tensor([0]), (2, 2))


# --- schedule --------------------------------------------------------------------------------------------

def test_warped_four_step_schedule():
    ts = FlowMatchSchedule(5.0).denoising_timesteps((1000, 750, 500, 250))
    assert ts.dtype == torch.float32
    assert ts.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert FlowMatchSchedule(5.0).sigma(ts).tolist() == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-6)


def test_unwarped_schedule_uses_raw_steps():
    ts = FlowMatchSchedule(8.0).denoising_timesteps((1000, 757, 522), warp=False)
    assert ts.tolist() == [1000.0, 757.0, 522.0]


@pytest.mark.parametrize("steps", [(), (1000, 1000), (250, 500), (0,), (1001,)])
def test_bad_step_lists_are_refused(steps):
    with pytest.raises(ValueError):
        FlowMatchSchedule().denoising_timesteps(steps)


def test_x0_from_flow_is_float64_and_add_noise_mixes_by_sigma():
    sched = FlowMatchSchedule(5.0)
    xt = torch.full((1, 2, 1, 1, 1), 1.0)
    flow = torch.tensor([0.5, 2.0]).view(1, 2, 1, 1, 1)
    t = torch.tensor([[1000.0, 625.0]])
    x0 = sched.x0_from_flow(flow, xt, t)
    assert x0.flatten().tolist() == pytest.approx([1.0 - 0.5, 1.0 - 0.625 * 2.0], abs=1e-6)
    noisy = sched.add_noise(torch.zeros(3), torch.ones(3), 625.0)
    assert noisy.tolist() == pytest.approx([0.625] * 3, abs=1e-6)


def test_sinusoid_is_cos_first_float64():
    emb = sinusoidal_embedding(8, torch.tensor([0.0, 2.0]))
    assert emb.dtype == torch.float64
    assert emb[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert emb[1, 1].item() == pytest.approx(math.cos(2 * 10000 ** (-1 / 4)))
    assert emb[1, 5].item() == pytest.approx(math.sin(2 * 10000 ** (-1 / 4)))


# --- block forward ---------------------------------------------------------------------------------------

class _FullCache:
    """Minimal layer memory: attends over everything written so far at absolute positions."""

    def __init__(self):
        self.k, self.v, self.calls = [], [], []

    def update(self, q, k, v, call: BlockCall) -> AttentionWindow:
        self.calls.append(call)
        self.k.append(k)
        self.v.append(v)
        frames = torch.arange(call.end_frame - len(self.k) * call.num_frames, call.end_frame)
        return AttentionWindow(torch.cat(self.k, 1), torch.cat(self.v, 1), frames,
                               torch.arange(call.start_frame, call.end_frame))


def _one_call(model, seed=0, frames=3, weights_of=None):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, frames, 16, 8, 12, generator=gen)
    text = model.encode_text(torch.randn(1, 9, TINY.text_dim, generator=gen))
    memories = [_FullCache() for _ in range(TINY.num_layers)]
    t = torch.full((1, frames), 937.5)
    return model(latents, t, text, memories, BlockCall(0, frames, 937.5, False, (4, 6))), memories


def test_block_forward_shapes_and_memory_calls(tiny_dit):
    flow, memories = _one_call(CausalWan(tiny_dit))
    assert flow.shape == (1, 3, 16, 8, 12)
    assert torch.isfinite(flow).all()
    for mem in memories:
        assert len(mem.calls) == 1 and mem.k[0].shape == (1, 3 * 24, 2, 128)


def test_text_context_is_zero_padded_to_512(tiny_dit):
    model = CausalWan(tiny_dit)
    ctx = torch.randn(1, 11, TINY.text_dim)
    padded = torch.cat([ctx, torch.zeros(1, 501, TINY.text_dim)], dim=1)
    short, full = model.encode_text(ctx), model.encode_text(padded)
    assert short.k[0].shape == (1, 512, 2, 128)
    for a, b in zip(short.k + short.v, full.k + full.v, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at most 512"):
        model.encode_text(torch.zeros(1, 513, TINY.text_dim))
    with pytest.raises(ValueError, match="64"):
        model.encode_text(torch.zeros(1, 5, 32))


class _CastLinear(nn.Module):
    """Stands in for ComfyUI's manual-cast Linear: bf16 storage, weights cast to the input on every call."""

    def __init__(self, src: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(src.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = nn.Parameter(src.bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def _foreign_tree(dit: WanDiT) -> nn.Module:
    """A different module tree that only shares the Wan names: cast-on-call linears, bf16 raw parameters."""
    import copy

    other = copy.deepcopy(dit)
    for module in list(other.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, _CastLinear(child))
    for block in other.blocks:
        block.modulation = nn.Parameter(block.modulation.detach().to(torch.bfloat16), requires_grad=False)
    other.head.modulation = nn.Parameter(other.head.modulation.detach().to(torch.bfloat16), requires_grad=False)
    return other


def test_block_forward_runs_unchanged_on_a_tree_that_only_shares_the_names():
    sd = {k: v.to(torch.bfloat16).float() for k, v in random_wan_state_dict(TINY, seed=3).items()}
    ours = WanDiT.from_state_dict(sd)
    foreign = _foreign_tree(ours)
    assert not isinstance(foreign.blocks[0].self_attn.q, nn.Linear)
    assert foreign.blocks[0].modulation.dtype == torch.bfloat16
    a, _ = _one_call(CausalWan(ours), seed=5)
    b, _ = _one_call(CausalWan(foreign, dtype=torch.float32, config=ours.config), seed=5)
    assert torch.equal(a, b)


def test_window_weights_scale_keys_and_values(tiny_dit):
    model = CausalWan(tiny_dit)

    class Weighted(_FullCache):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def update(self, q, k, v, call):
            win = super().update(q, k, v, call)
            return AttentionWindow(win.k, win.v, win.k_time, win.q_time, torch.full((win.k.shape[1],), self.w))

    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 3, 16, 8, 12, generator=gen)
    text = model.encode_text(torch.randn(1, 4, TINY.text_dim, generator=gen))
    call = BlockCall(0, 3, 500.0, False, (4, 6))
    t = torch.full((1, 3), 500.0)
    plain = model(latents, t, text, [_FullCache() for _ in range(2)], call)
    ones = model(latents, t, text, [Weighted(1.0) for _ in range(2)], call)
    half = model(latents, t, text, [Weighted(0.5) for _ in range(2)], call)
    assert torch.allclose(plain, ones, atol=1e-6)
    assert not torch.allclose(plain, half, atol=1e-3)


def test_forward_checks_memory_count_and_grid(tiny_dit):
    model = CausalWan(tiny_dit)
    text = model.encode_text(torch.zeros(1, 1, TINY.text_dim))
    x = torch.zeros(1, 3, 16, 8, 12)
    with pytest.raises(ValueError, match="layer memories"):
        model(x, torch.zeros(1, 3), text, [_FullCache()], BlockCall(0, 3, 0.0, True, (4, 6)))
    with pytest.raises(ValueError, match="grid"):
        model(x, torch.zeros(1, 3), text, [_FullCache(), _FullCache()], BlockCall(0, 3, 0.0, True, (5, 6)))


def test_module_config_is_inferred_from_the_tree(tiny_dit):
    assert CausalWan(tiny_dit).config == TINY
    assert WanConfig.from_state_dict(tiny_dit.state_dict()) == TINY


def test_stand_in_text_embedding_is_per_word_and_zero_padded():
    from echo_forcing.cli.text_stand_in import stand_in_text_embedding, word_row

    emb = stand_in_text_embedding(["A red kite", "red  KITE over dunes", ""], 8)
    assert emb.shape == (3, 512, 8)
    assert torch.equal(emb[0, 1], word_row("red", 8)) and torch.equal(emb[1, 0], emb[0, 1])
    assert torch.equal(emb[1, 1], emb[0, 2])  # "KITE" lower-cased, repeated spaces ignored
    assert emb[0, 3:].abs().sum() == 0 and emb[2].abs().sum() == 0


def test_rollout_uses_the_models_latent_channels():
    from echo_forcing.memory import SelfForcingCacheConfig
    from echo_forcing.pipeline import RolloutSettings, rollout

    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, in_dim=4, out_dim=4)
    model = CausalWan(WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=1)))
    out = rollout(model, model.encode_text(torch.ones(1, 3, 16)), RolloutSettings(num_frames=3, height=32, width=32),
                  SelfForcingCacheConfig()).latents
    assert out.shape == (1, 3, 4, 4, 4)
