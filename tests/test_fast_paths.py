"""The optimised paths give the numbers of the straightforward ones (issue 5's speed work keeps the maths).

complex64 RoPE against complex128, the per-position rotation tables kept between calls, weighting only the
decay span of the window, the pinned-memory copies, and ``torch.compile`` of the layer functions.
"""

from __future__ import annotations

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import make_policy
from echo_forcing.memory.devices import gather_to_device, to_device, to_storage
from echo_forcing.models import CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.models.block_forward import cpu_compile_problem, weigh_window
from echo_forcing.models.rope import ROTATIONS_KEPT, Rope3D
from echo_forcing.models.seam import AttentionWindow
from echo_forcing.pipeline import RolloutScene, RolloutSettings, rollout

CFG = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16)
GRID = (3, 4)


# --- RoPE ------------------------------------------------------------------------------------------------------

def test_complex64_rotation_is_within_one_float32_rounding_of_complex128():
    x = torch.randn(1, 5 * 12, 3, 128, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([0, 7, 18, 20, 63])
    rope = Rope3D(128)
    fast = rope.apply(x, positions, GRID)
    exact = rope.apply(x.double(), positions, GRID)
    assert fast.dtype == torch.float32 and exact.dtype == torch.float64
    # each output is a sum of two products of magnitude <= |x|: at most a few float32 steps of |x|
    bound = 4 * torch.finfo(torch.float32).eps * x.abs().amax(dim=-1, keepdim=True)
    assert ((fast.double() - exact).abs() <= bound).all()
    assert not torch.equal(fast.double(), exact)  # really the faster product, not the float64 one

    half = x.bfloat16()
    fast_bf16 = rope.apply(half, positions, GRID)
    exact_bf16 = rope.apply(half.double(), positions, GRID).bfloat16()
    assert fast_bf16.dtype == torch.bfloat16
    assert (fast_bf16 != exact_bf16).float().mean().item() < 1e-3  # rare neighbouring bf16 values only


def test_rotation_tables_are_built_once_per_position_list_and_bounded():
    rope = Rope3D(128)
    a = rope.rotation(torch.arange(21), GRID, torch.device("cpu"))
    assert rope.rotation(torch.arange(21), GRID, torch.device("cpu")) is a  # reused, not rebuilt
    assert torch.equal(a, rope.frequencies(torch.arange(21), GRID, torch.device("cpu")).to(torch.complex64))
    for start in range(2 * ROTATIONS_KEPT):
        rope.rotation(torch.arange(start, start + 3), GRID, torch.device("cpu"))
    assert len(rope._rotations) == ROTATIONS_KEPT
    assert rope.rotation(torch.arange(21), GRID, torch.device("cpu")) is not a  # evicted, rebuilt equal
    far = rope.rotation(torch.tensor([5000]), GRID, torch.device("cpu"))  # the tables grow: cache cleared
    assert far.shape == (12, 1, 64) and len(rope._rotations) == 1


# --- decay weighting ---------------------------------------------------------------------------------------------

def test_weighting_only_the_decay_span_equals_weighting_the_whole_window():
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(1, 7 * 12, 2, 128, generator=gen)
    v = torch.randn(1, 7 * 12, 2, 128, generator=gen)
    weights = torch.ones(7 * 12)
    weights[:30] = torch.rand(30, generator=gen)
    rotated = k * 2
    before = v.clone()
    full_k, full_v = weigh_window(rotated, AttentionWindow(k, v, None, torch.arange(3), weights), torch.float32)
    span_k, span_v = weigh_window(rotated, AttentionWindow(k, v, None, torch.arange(3), weights, weighted_tokens=36),
                                  torch.float32)
    assert torch.equal(full_k, span_k) and torch.equal(full_v, span_v)  # x 1.0 is exact
    assert torch.equal(v, before)  # the cache's values are never scaled in place
    owned = rotated.clone()
    own_k, own_v = weigh_window(owned, AttentionWindow(k, v, None, torch.arange(3), weights, weighted_tokens=36),
                                torch.float32, keys_owned=True)
    assert own_k is owned and torch.equal(own_k, full_k) and torch.equal(own_v, full_v)
    nothing_k, nothing_v = weigh_window(rotated, AttentionWindow(k, v, None, torch.arange(3), weights,
                                                                 weighted_tokens=0), torch.float32)
    assert nothing_k is rotated and nothing_v is v


def test_echo_weights_never_leave_the_announced_span_over_a_multi_shot_video():
    model = CausalWan(WanDiT.from_state_dict(random_wan_state_dict(CFG, seed=3)), dtype=torch.float32)
    prompts = ["a lighthouse at dusk", "a night market", "the lighthouse again", "the balcony", "the sea"]
    emb = stand_in_text_embedding(prompts, CFG.text_dim)
    entries = [None, "smooth", "hardcut", "recall", "smooth"]
    scenes = [RolloutScene(model.encode_text(emb[i:i + 1]), n, prompts[i], entries[i])
              for i, n in enumerate((8, 6, 2, 6, 3))]
    policy = make_policy("echo-forcing", encode_text=lambda p: stand_in_text_embedding(p, CFG.text_dim))
    seen = {"weighted": 0, "calls": 0}
    create = policy.create

    def checking_create(num_layers, infos=None):
        state = create(num_layers, infos)
        for layer in state.layers:
            update = layer.update

            def checked(q, k, v, call, update=update):
                window = update(q, k, v, call)
                seen["calls"] += 1
                if window.weights is not None:
                    seen["weighted"] += 1
                    assert window.weighted_tokens is not None
                    assert bool((window.weights[window.weighted_tokens:] == 1).all())
                    assert not bool((window.weights[:window.weighted_tokens] == 1).all())
                return window

            layer.update = checked
        return state

    object.__setattr__(policy, "create", checking_create)
    result = rollout(model, scenes, RolloutSettings(num_frames=75, height=48, width=64, seed=5), policy)
    assert [s["mode"] for s in result.switches] == ["smooth", "hardcut", "recall", "smooth"]
    assert 0 < seen["weighted"] < seen["calls"]


# --- pinned copies -----------------------------------------------------------------------------------------------

def test_storage_copies_give_the_same_tensors_on_the_cpu():
    source = torch.randn(6, 4, 2, 3)
    index = torch.tensor([4, 0, 4])
    assert torch.equal(gather_to_device(source, index, torch.device("cpu")), source.index_select(0, index))
    copy = to_storage(source, torch.device("cpu"))
    assert torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    assert to_device(source, torch.device("cpu"), torch.float64).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned-memory copies)")
def test_storage_copies_use_pinned_memory_under_a_gpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    x = torch.randn(6, 4, 2, 3, device=cuda)
    stored = to_storage(x, cpu)
    assert stored.is_pinned()
    back = to_device(stored, cuda)
    picked = gather_to_device(stored, torch.tensor([5, 1]), cuda)
    torch.cuda.synchronize()
    assert torch.equal(back, x) and torch.equal(picked, x[[5, 1]])


# --- torch.compile ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(cpu_compile_problem() is not None, reason=str(cpu_compile_problem()))
def test_compiled_layers_give_the_same_latents():
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16)
    dit = WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=6))
    eager = CausalWan(dit, dtype=torch.float32)
    compiled = CausalWan(dit, dtype=torch.float32, compile=True)
    assert compiled.compiled and not eager.compiled
    text = eager.encode_text(stand_in_text_embedding(["a lighthouse at dusk"], cfg.text_dim))
    settings = RolloutSettings(num_frames=6, height=32, width=48, seed=8)
    expected = rollout(eager, text, settings, make_policy("echo-forcing")).latents
    got = rollout(compiled, text, settings, make_policy("echo-forcing")).latents
    # fused kernels round differently in the last float32 bits; nothing else may change
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_compile_where_cpu_kernels_cannot_be_built_is_refused_with_the_reason(monkeypatch):
    from echo_forcing.models import block_forward

    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16)
    dit = WanDiT.from_state_dict(random_wan_state_dict(cfg, seed=6))
    monkeypatch.setattr(block_forward, "cpu_compile_problem", lambda: "no C++ compiler here")
    with pytest.raises(ValueError, match="no C\\+\\+ compiler here"):
        CausalWan(dit, dtype=torch.float32, compile=True)
    assert not CausalWan(dit, dtype=torch.float32).compiled  # eager needs nothing
