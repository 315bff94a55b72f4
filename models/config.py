"""Wan2.1 text-to-video DiT configuration, inferred from a state dict.

The parameter names and shapes are exactly those of the original Wan code, so the same config describes
the 1.3B and 14B releases, the causal students trained from them (Self-Forcing, CausVid, LongLive) and the
tiny random models the tests build. The one thing shapes cannot tell is the head count: Wan always uses a
head dimension of 128, so ``num_heads = dim // 128`` (ComfyUI infers it the same way).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

HEAD_DIM = 128
"""Head dimension of every released Wan2.1 model."""

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


class WanConfigError(ValueError):
    """The tensors do not describe a Wan2.1 text-to-video DiT."""


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of a Wan2.1 T2V DiT (names follow the original Wan code)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise WanConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise WanConfigError(f"head dim {self.head_dim} must be even for rotary embeddings")
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim"):
            if getattr(self, name) <= 0:
                raise WanConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name of the original Wan T2V DiT with its shape (825 entries at 1.3B)."""
        d, f = self.dim, self.ffn_dim
        shapes: dict[str, tuple[int, ...]] = {
            "patch_embedding.weight": (d, self.in_dim, *self.patch_size),
            "patch_embedding.bias": (d,),
            "text_embedding.0.weight": (d, self.text_dim),
            "text_embedding.0.bias": (d,),
            "text_embedding.2.weight": (d, d),
            "text_embedding.2.bias": (d,),
            "time_embedding.0.weight": (d, self.freq_dim),
            "time_embedding.0.bias": (d,),
            "time_embedding.2.weight": (d, d),
            "time_embedding.2.bias": (d,),
            "time_projection.1.weight": (6 * d, d),
            "time_projection.1.bias": (6 * d,),
            "head.head.weight": (self.out_dim * self.patch_volume, d),
            "head.head.bias": (self.out_dim * self.patch_volume,),
            "head.modulation": (1, 2, d),
        }
        for i in range(self.num_layers):
            p = f"blocks.{i}."
            shapes[p + "modulation"] = (1, 6, d)
            for attn in ("self_attn", "cross_attn"):
                for lin in ("q", "k", "v", "o"):
                    shapes[f"{p}{attn}.{lin}.weight"] = (d, d)
                    shapes[f"{p}{attn}.{lin}.bias"] = (d,)
                if self.qk_norm:
                    shapes[f"{p}{attn}.norm_q.weight"] = (d,)
                    shapes[f"{p}{attn}.norm_k.weight"] = (d,)
            if self.cross_attn_norm:
                shapes[p + "norm3.weight"] = (d,)
                shapes[p + "norm3.bias"] = (d,)
            shapes[p + "ffn.0.weight"] = (f, d)
            shapes[p + "ffn.0.bias"] = (f,)
            shapes[p + "ffn.2.weight"] = (d, f)
            shapes[p + "ffn.2.bias"] = (d,)
        return shapes

    def parameter_count(self) -> int:
        return sum(math.prod(s) for s in self.expected_shapes().values())

    @classmethod
    def from_state_dict(cls, shapes: dict) -> WanConfig:
        """Infer the config from a state dict (tensors) or a name -> shape mapping with plain Wan names.

        Raises WanConfigError naming the keys that are missing when the tensors are not a Wan DiT.
        Checking every key and shape against the inferred config is the job of the loader
        (``models.checkpoints``), which reports all differences at once.
        """
        shapes = {k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
        anchors = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                   "blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight", "head.head.weight")
        missing = [k for k in anchors if k not in shapes]
        if missing:
            raise WanConfigError(
                "not a Wan2.1 DiT state dict: missing " + ", ".join(missing)
                + (f" (found e.g. {', '.join(sorted(shapes)[:5])})" if shapes else " (it is empty)"))
        if any(k.startswith("img_emb.") or ".cross_attn.k_img." in k for k in shapes):
            raise WanConfigError("this is a Wan image-to-video model (img_emb / k_img keys); "
                                 "the causal students are text-to-video models")
        patch_w = shapes["patch_embedding.weight"]
        if len(patch_w) != 5:
            raise WanConfigError(f"patch_embedding.weight has shape {patch_w}, expected a 5-D Conv3d weight")
        dim, in_dim, *patch = patch_w
        layers = {int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))}
        num_layers = max(layers) + 1
        if dim % HEAD_DIM:
            raise WanConfigError(f"model width {dim} is not a multiple of the Wan head dimension {HEAD_DIM}")
        head_out = shapes["head.head.weight"][0]
        volume = math.prod(patch)
        if head_out % volume:
            raise WanConfigError(f"head.head.weight rows {head_out} are not a multiple of the patch volume {volume}")
        return cls(
            dim=dim,
            ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
            num_heads=dim // HEAD_DIM,
            num_layers=num_layers,
            text_dim=shapes["text_embedding.0.weight"][1],
            freq_dim=shapes["time_embedding.0.weight"][1],
            in_dim=in_dim,
            out_dim=head_out // volume,
            patch_size=tuple(patch),
            qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
            cross_attn_norm="blocks.0.norm3.weight" in shapes,
        )

    @property
    def signature(self) -> str:
        """Short human-readable description, e.g. ``Wan2.1 DiT 1.3B (30 layers, 12x128 heads)``."""
        billions = self.parameter_count() / 1e9
        size = f"{billions:.1f}B" if billions >= 0.1 else f"{self.parameter_count() / 1e6:.1f}M"
        family = "Wan2.2" if self.in_dim == 48 else "Wan2.1"  # the Wan2.2 VAE's 48 latent channels (TI2V-5B)
        return f"{family} DiT {size} ({self.num_layers} layers, {self.num_heads}x{self.head_dim} heads)"


WAN21_T2V_1_3B = WanConfig()
"""Wan2.1-T2V-1.3B and its causal students (Self-Forcing, CausVid, LongLive 1.3B)."""

WAN21_T2V_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
"""Wan2.1-T2V-14B."""
