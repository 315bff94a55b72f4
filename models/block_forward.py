"""The block forward of a causal Wan2.1 DiT, written against the Wan module tree by name.

``CausalWan`` runs one forward call on a block of latent frames. It only *calls* submodules
(``patch_embedding``, ``text_embedding``, ``time_embedding``, ``time_projection``,
``blocks.N.{norm1, self_attn.{q,k,v,o,norm_q,norm_k}, norm3, cross_attn.*, norm2, ffn}``, ``head.{norm,head}``)
and casts the two raw parameters (``blocks.N.modulation``, ``head.modulation``) to the compute dtype and
device, so it runs unchanged on the pack's ``WanDiT`` and on ComfyUI's Wan model inside a ModelPatcher
(where LoRA patches, fp8 weights and low-VRAM casting live in those submodules).

``compile=True`` runs the two tensor-only halves of every layer (norms, projections, attention, FFN) through
``torch.compile``; off by default (compiling takes a while, and ComfyUI's own patching of modules, such as
low-VRAM casting, may not trace). Tests check it gives the same latents.

Per call: per-frame timesteps -> sinusoid (float64, cos half first) -> time embedding
-> 6 modulation vectors per frame; per layer the adaLN-modulated self-attention over the window the
layer's memory returns (see ``models.seam``), text cross-attention over the cached 512 text keys/values,
and the modulated FFN; then the modulated head and unpatchify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .attention import attention, biased_attention
from .config import WanConfig
from .rope import Rope3D
from .seam import AttentionWindow, BlockCall, LayerMemory


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """``[cos(p * 10000^(-k/half)), sin(...)]`` for k < dim/2, float64 ``[N, dim]`` (cos half first)."""
    half = dim // 2
    position = position.to(torch.float64)
    exponents = torch.arange(half, dtype=torch.float64, device=position.device).div(half)
    angles = torch.outer(position, torch.pow(10000, -exponents))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


@dataclass(frozen=True)
class TextContext:
    """Cross-attention keys and values of one prompt, per layer ``[B, 512, heads, head_dim]``; with an SGF+
    memory expert also its own (``memory``, from its text embedding and cross-attention weights)."""

    k: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]
    memory: TextContext | None = None

    @property
    def nbytes(self) -> int:
        own = sum(t.numel() * t.element_size() for t in (*self.k, *self.v))
        return own + (self.memory.nbytes if self.memory is not None else 0)


def module_config(dit: nn.Module) -> WanConfig:
    """The ``WanConfig`` of any module tree with Wan parameter names (pack module or ComfyUI's)."""
    return WanConfig.from_state_dict({name: p.shape for name, p in dit.named_parameters()})


def _frames(y: torch.Tensor, f: int) -> torch.Tensor:
    """``[B, F*P, C]`` -> ``[B, F, P, C]`` (tokens grouped by latent frame)."""
    return y.unflatten(1, (f, -1))


def _first_weight(dit: nn.Module) -> torch.Tensor:
    return dit.patch_embedding.weight


def weigh_window(keys: torch.Tensor, window: AttentionWindow, dtype: torch.dtype,
                 keys_owned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated ``keys`` and the window's values scaled by its per-token weights. Only the span that may differ
    from 1 (``window.weighted_tokens``) is multiplied (x 1 is exact, so the result is the same); ``keys`` is
    scaled in place when the caller owns it (a fresh rotation), the cache's own tensors are never changed."""
    if window.weights is None:
        return keys, window.v
    n = keys.shape[1] if window.weighted_tokens is None else min(window.weighted_tokens, keys.shape[1])
    if n <= 0:
        return keys, window.v
    w = window.weights[:n].to(device=keys.device, dtype=dtype)[None, :, None, None]

    def scaled(t: torch.Tensor) -> torch.Tensor:  # a new tensor: the first n tokens x w, the rest as they are
        return t * w if n == t.shape[1] else torch.cat((t[:, :n] * w, t[:, n:]), dim=1)

    if keys_owned:
        keys[:, :n] *= w
        return keys, scaled(window.v)
    return scaled(keys), scaled(window.v)


COMPILE_RECOMPILE_LIMIT = 64
"""Graphs torch.compile may keep per layer function: one per window length and call kind (the window grows
by a block at a time until the cache is full, a LongLive re-cache has its own length)."""


def cpu_compile_problem() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here (None when it can): no C++ compiler, or PyTorch
    installed under a path with whitespace (inductor passes its library folder to the linker unquoted)."""
    import shutil
    from pathlib import Path

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++)"
    lib = Path(torch.__file__).parent / "lib"
    if any(ch.isspace() for ch in str(lib)):
        return (f"torch.compile on the CPU cannot link when PyTorch is installed under a path with a space "
                f"({lib}); use an environment in a folder without spaces, or leave compile off")
    return None


def compile_layer_functions(*functions: Callable) -> tuple[Callable, ...]:
    """``torch.compile`` the per-layer tensor functions of the block forward (the memory update, the RoPE and
    the weighting between them stay eager). The layers share the compiled graphs: their modules are traced
    as inputs, so 30 layers compile once per shape. Triton on a GPU, C++ on the CPU (needs a compiler)."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), COMPILE_RECOMPILE_LIMIT))
    return tuple(torch.compile(fn, dynamic=False) for fn in functions)


class CausalWan:
    """Runs block forwards of a Wan module tree with a per-layer memory (cache policy) behind each layer.

    ``memory_expert``: SGF+'s second module tree of the same shape (``models.memory_expert``); the clean context
    passes run it, the denoising calls run ``dit``."""

    def __init__(self, dit: nn.Module, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 config: WanConfig | None = None,
                 attention_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = attention,
                 compile: bool = False, memory_expert: nn.Module | None = None):
        self.dit = dit
        self.config = config or module_config(dit)
        self.memory_expert = memory_expert
        if memory_expert is not None and module_config(memory_expert) != self.config:
            raise ValueError("the memory expert's shape differs from the model's; it must mirror its weights")
        weight = _first_weight(dit)
        if dtype is None:
            dtype = weight.dtype if weight.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else weight.device
        self.attention = attention_fn
        self.rope = Rope3D(self.config.head_dim)
        self.compiled = compile
        self._layer_in, self._layer_out = self._layer_inputs, self._layer_outputs
        if compile:
            problem = cpu_compile_problem() if self.device.type == "cpu" else None
            if problem is not None:
                raise ValueError(problem)
            self._layer_in, self._layer_out = compile_layer_functions(self._layer_inputs, self._layer_outputs)

    def _param(self, p: torch.Tensor) -> torch.Tensor:
        return p.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_text(self, context: torch.Tensor) -> TextContext:
        """Project prompt embeddings ``[B, L <= 512, text_dim]`` (zero-padded to 512) into per-layer K/V (and the
        memory expert's own, when there is one)."""
        text = self._encode_text(self.dit, context)
        if self.memory_expert is None:
            return text
        return TextContext(text.k, text.v, self._encode_text(self.memory_expert, context))

    def _encode_text(self, dit: nn.Module, context: torch.Tensor) -> TextContext:
        cfg = self.config
        if context.dim() != 3 or context.shape[-1] != cfg.text_dim:
            raise ValueError(f"text embeddings must be [batch, tokens, {cfg.text_dim}], got {list(context.shape)}")
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"text embeddings have {context.shape[1]} tokens; the model takes at most {cfg.text_len}")
        b = context.shape[0]
        padded = context.new_zeros(b, cfg.text_len, cfg.text_dim)
        padded[:, : context.shape[1]] = context
        ctx = dit.text_embedding(padded.to(device=self.device, dtype=self.dtype))
        n, d = cfg.num_heads, cfg.head_dim
        ks, vs = [], []
        for block in dit.blocks:
            ca = block.cross_attn
            ks.append(ca.norm_k(ca.k(ctx)).view(b, -1, n, d))
            vs.append(ca.v(ctx).view(b, -1, n, d))
        return TextContext(tuple(ks), tuple(vs))

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, text: TextContext,
                 memories: Sequence[LayerMemory], call: BlockCall) -> torch.Tensor:
        """Flow prediction ``[B, F, C, H, W]`` for normalised latents ``[B, F, C, H, W]`` at ``timesteps [B, F]``
        (a context pass with a memory expert runs the expert, with its text keys and values)."""
        cfg, dit = self.config, self.dit
        if call.context_pass and self.memory_expert is not None:
            if text.memory is None:
                raise ValueError("the text was encoded without the memory expert's keys and values")
            dit, text = self.memory_expert, text.memory
        if len(memories) != cfg.num_layers:
            raise ValueError(f"{len(memories)} layer memories for a {cfg.num_layers}-layer model")
        b, f = latents.shape[:2]

        x = dit.patch_embedding(latents.permute(0, 2, 1, 3, 4).to(device=self.device, dtype=self.dtype))
        grid = tuple(x.shape[3:])  # [B, dim, F, h, w]
        if x.shape[2] != f or grid != call.grid:
            raise ValueError(f"latent grid {tuple(x.shape[2:])} does not match the call ({f}, {call.grid})")
        x = x.flatten(2).transpose(1, 2)  # [B, L, dim]

        t = timesteps.reshape(b, f).to(self.device)
        e = dit.time_embedding(sinusoidal_embedding(cfg.freq_dim, t.flatten()).to(self.dtype))  # [B*F, dim]
        e0 = dit.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (b, f))  # [B, F, 6, dim]

        for block, memory, text_k, text_v in zip(dit.blocks, memories, text.k, text.v, strict=True):
            q, k, v, mod = self._layer_in(block, x, e0, f)
            window = memory.update(q, k, v, call)
            q = self.rope.apply(q, window.q_time, grid).type_as(v)
            keys = window.k if window.keys_rotated else self.rope.apply(window.k, window.k_time, grid).type_as(v)
            keys, values = weigh_window(keys, window, self.dtype, keys_owned=not window.keys_rotated)
            x = self._layer_out(block, x, q, keys, values, mod, text_k, text_v, f, window.logit_bias)

        head = dit.head
        hmod = (self._param(head.modulation).unsqueeze(1) + e.unflatten(0, (b, f)).unsqueeze(2)).chunk(2, dim=2)
        out = head.head(_frames(head.norm(x), f) * (1 + hmod[1]) + hmod[0])  # [B, F, h*w, C*pt*ph*pw]
        return self._unpatchify(out, grid)

    def _layer_inputs(self, block: nn.Module, x: torch.Tensor, e0: torch.Tensor, f: int) -> tuple:
        """Pre-RoPE q, k, v ``[B, L, heads, head_dim]`` of one layer's self-attention and its 6 modulations."""
        b, n, d = x.shape[0], self.config.num_heads, self.config.head_dim
        mod = (self._param(block.modulation).unsqueeze(1) + e0).chunk(6, dim=2)  # 6 x [B, F, 1, dim]
        sa = block.self_attn
        y = (_frames(block.norm1(x), f) * (1 + mod[1]) + mod[0]).flatten(1, 2)
        q = sa.norm_q(sa.q(y)).view(b, -1, n, d)
        k = sa.norm_k(sa.k(y)).view(b, -1, n, d)
        v = sa.v(y).view(b, -1, n, d)
        return q, k, v, mod

    def _layer_outputs(self, block: nn.Module, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor,
                       values: torch.Tensor, mod: tuple, text_k: torch.Tensor, text_v: torch.Tensor,
                       f: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The rest of one layer: self-attention over the window (with the window's logit bias, if any), text
        cross-attention and the FFN."""
        b, n, d = x.shape[0], self.config.num_heads, self.config.head_dim
        sa, ca = block.self_attn, block.cross_attn
        y = sa.o((self.attention(q, keys, values) if bias is None else
                  biased_attention(q, keys, values, bias)).flatten(2))  # no name: freed before the FFN runs
        x = x + (_frames(y, f) * mod[2]).flatten(1, 2)
        cq = ca.norm_q(ca.q(block.norm3(x))).view(b, -1, n, d)
        x = x + ca.o(self.attention(cq, text_k, text_v).flatten(2))
        y = block.ffn((_frames(block.norm2(x), f) * (1 + mod[4]) + mod[3]).flatten(1, 2))
        return x + (_frames(y, f) * mod[5]).flatten(1, 2)

    def _unpatchify(self, out: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, F, h*w, C*pt*ph*pw]`` -> ``[B, F*pt, C, h*ph, w*pw]``."""
        b, f = out.shape[:2]
        h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        out = out.reshape(b, f, h, w, pt, ph, pw, c)
        out = torch.einsum("bfhwpqrc->bfpchqwr", out)
        return out.reshape(b, f * pt, c, h * ph, w * pw)
