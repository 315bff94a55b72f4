"""SGF+'s memory expert: the checkpoint's twin tensors become a second Wan model of the same shape, which the clean
context passes run while the denoising calls run the base weights (``models.memory_expert``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from echo_forcing.memory import SelfForcingCacheConfig
from echo_forcing.models import (
    CausalWan,
    CheckpointError,
    WanDiT,
    load_wan_experts,
    load_wan_model,
    random_wan_state_dict,
)
from echo_forcing.models.memory_expert import (
    MemoryExpertError,
    base_name,
    has_memory_expert,
    memory_name,
    split_memory_expert,
)
from echo_forcing.pipeline import RolloutSettings, rollout


def _sgf_file(tiny_config, base: dict, expert: dict) -> dict:
    """The SGF+ research layout: ``model.`` + the base names and the memory twins' names."""
    return {**{f"model.{k}": v for k, v in base.items()}, **{f"model.{memory_name(k)}": v for k, v in expert.items()}}


def test_twin_names_follow_the_released_layout(tiny_state_dict):
    assert memory_name("blocks.0.self_attn.q.weight") == "blocks.0.self_attn.q.memory_weight"
    assert memory_name("blocks.1.norm3.bias") == "blocks.1.norm3.memory_bias"
    assert memory_name("blocks.1.cross_attn.norm_k.weight") == "blocks.1.cross_attn.norm_k.memory_weight"
    assert memory_name("blocks.0.modulation") == "blocks.0.memory_modulation"
    assert memory_name("patch_embedding.weight") == "memory_patch_embedding.weight"
    assert memory_name("time_projection.1.bias") == "memory_time_projection.1.bias"
    assert memory_name("head.modulation") == "memory_head.modulation"
    assert memory_name("head.head.weight") == "memory_head.head.weight"
    for key in tiny_state_dict:
        assert base_name(memory_name(key)) == key and base_name(key) is None
    assert not has_memory_expert(tiny_state_dict)


def test_split_gives_two_mirrored_state_dicts_and_refuses_partial_experts(tiny_config, tiny_state_dict):
    expert = random_wan_state_dict(tiny_config, seed=99)
    raw = {**tiny_state_dict, **{memory_name(k): v for k, v in expert.items()}}
    base, got = split_memory_expert(raw)
    assert base.keys() == tiny_state_dict.keys() and got.keys() == expert.keys()
    assert all(torch.equal(got[k], expert[k]) for k in expert)
    assert split_memory_expert(tiny_state_dict) == (tiny_state_dict, None)
    partial = dict(raw)
    del partial["blocks.1.memory_modulation"]
    with pytest.raises(MemoryExpertError, match=r"1 base tensors without a memory twin: blocks.1.modulation"):
        split_memory_expert(partial)
    skewed = {**raw, "blocks.0.ffn.0.memory_weight": torch.zeros(3, 3)}
    with pytest.raises(MemoryExpertError, match=r"shape mismatches \(memory vs base\): blocks.0.ffn.0.weight"):
        split_memory_expert(skewed)
    stray = {**raw, "memory_extra.weight": torch.zeros(1)}
    with pytest.raises(MemoryExpertError, match=r"memory tensors without a base tensor: extra.weight"):
        split_memory_expert(stray)


def test_checkpoints_with_an_expert_load_both(tmp_path, tiny_config, tiny_state_dict):
    expert = random_wan_state_dict(tiny_config, seed=99)
    path = tmp_path / "sgf_plus.pt"
    torch.save({"generator": _sgf_file(tiny_config, tiny_state_dict, expert),
                "generator_ema": _sgf_file(tiny_config, tiny_state_dict, expert)}, path)
    dit, mem = load_wan_experts(path, dtype=torch.float32)
    assert all(torch.equal(dict(dit.named_parameters())[k], v) for k, v in tiny_state_dict.items())
    assert all(torch.equal(dict(mem.named_parameters())[k], v) for k, v in expert.items())
    with pytest.raises(CheckpointError, match="holds an SGF\\+ memory expert besides the weights"):
        load_wan_model(path, dtype=torch.float32)
    broken = _sgf_file(tiny_config, tiny_state_dict, expert)
    broken["model.blocks.0.self_attn.k.memory_weight"] = torch.full_like(expert["blocks.0.self_attn.k.weight"],
                                                                          float("nan"))
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"the memory expert of broken.safetensors holds NaN"):
        load_wan_experts(tmp_path / "broken.safetensors", dtype=torch.float32)
    del broken["model.memory_head.modulation"]
    save_file(broken, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="SGF\\+ memory expert does not mirror its weights"):
        load_wan_experts(tmp_path / "partial.safetensors", dtype=torch.float32)
    dit, mem = load_wan_experts(_plain(tmp_path, tiny_state_dict), dtype=torch.float32)
    assert mem is None


def _plain(tmp_path, sd):
    path = tmp_path / "plain.safetensors"
    save_file(sd, str(path))
    return path


class _Calls(CausalWan):
    """Records which weights each call ran (by the patch embedding it used) and whether it was a context pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ran = []
        for name, tree in (("base", self.dit), ("expert", self.memory_expert)):
            if tree is not None:
                tree.patch_embedding.register_forward_hook(lambda *_, n=name: self.ran.append(n))

    def __call__(self, latents, timesteps, text, memories, call):
        self.ran.append("context" if call.context_pass else "denoise")
        return super().__call__(latents, timesteps, text, memories, call)


def _video(model, seed=5):
    text = model.encode_text(torch.randn(1, 7, model.config.text_dim, generator=torch.Generator().manual_seed(1)))
    return rollout(model, text, RolloutSettings(num_frames=9, height=32, width=48, seed=seed),
                   SelfForcingCacheConfig()).latents


def test_context_passes_run_the_expert_and_denoising_the_base(tiny_config, tiny_state_dict):
    base = WanDiT.from_state_dict(tiny_state_dict)
    expert = WanDiT.from_state_dict(random_wan_state_dict(tiny_config, seed=99))
    model = _Calls(base, dtype=torch.float32, memory_expert=expert)
    with_expert = _video(model)
    assert model.ran == (["denoise", "base"] * 4 + ["context", "expert"]) * 3
    plain = _video(CausalWan(base, dtype=torch.float32))
    same = _video(CausalWan(base, dtype=torch.float32, memory_expert=WanDiT.from_state_dict(tiny_state_dict)))
    assert torch.equal(same, plain)  # an expert equal to the base changes nothing, bit for bit
    assert torch.equal(with_expert[:, :3], plain[:, :3])  # block 0 attends to no cache yet
    assert (with_expert[:, 3:] - plain[:, 3:]).abs().max() > 1e-3  # later blocks read the expert's cache
    text = model.encode_text(torch.zeros(1, 4, tiny_config.text_dim))
    assert text.memory is not None and not torch.equal(text.memory.k[0], text.k[0])
    assert text.nbytes == 2 * sum(t.numel() * t.element_size() for t in (*text.k, *text.v))
    other = random_wan_state_dict(tiny_config.__class__(dim=256, ffn_dim=256, num_heads=2, num_layers=2,
                                                        text_dim=64), seed=3)
    with pytest.raises(ValueError, match="memory expert's shape differs"):
        CausalWan(base, memory_expert=WanDiT.from_state_dict(other))
