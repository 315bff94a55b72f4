"""``python -m echo_forcing tiny-models OUT_DIR``: tiny random model files that ComfyUI's own loaders accept.

OUT_DIR is laid out as a ComfyUI models folder, so it can be added as a ``base_path`` in
``extra_model_paths.yaml`` (the command prints the snippet):

* ``diffusion_models/echo_forcing_tiny_dit.safetensors`` — a 2-layer causal Wan2.1 T2V DiT (3.26M parameters,
  plain Wan keys, float32): core ``UNETLoader`` detects it as WAN21, and the pack's loader reads it;
* ``diffusion_models/echo_forcing_tiny_selfforcing.pt`` — the same weights as a Self-Forcing research checkpoint
  (``{"generator_ema": {"model.<key>": ...}, "generator": ...}``), for the pack's loader;
* ``loras/echo_forcing_tiny_longlive_lora.pt`` — a rank-4 LongLive-style PEFT LoRA on every block linear of
  that DiT (``{"generator_lora": {"base_model.model.blocks.i.<linear>.lora_A.weight": ...}}``);
* ``text_encoders/echo_forcing_tiny_clip_l.safetensors`` — a complete random CLIP-L (fp16, 247 MB): core
  ``CLIPLoader`` with type ``sd3`` pads its 768-wide output to 4096, so ``CLIPTextEncode`` gives
  ``[1, 77, 4096]``, the DiT's text width;
* ``vae/echo_forcing_tiny_wan21_vae.safetensors`` — a complete random Wan2.1 VAE (fp16, 254 MB) for core
  ``VAELoader``; encode and decode give finite values of the right shapes.

Two more parts, for the 48-channel latents of Wan2.2 TI2V-5B (LongLive 2.0), are written only when named in
``--only`` (the VAE is large):

* ``wan22-dit``: ``diffusion_models/echo_forcing_tiny_wan22_dit.safetensors`` — the tiny DiT with 48 input and
  output channels (3.32M parameters, plain Wan keys, float32): core ``UNETLoader`` detects it as WAN22, and the
  pack's loader gives it the LongLive 2.0 model card (8-frame blocks, UniPC, sizes in multiples of 32 px);
* ``wan22-vae``: ``vae/echo_forcing_tiny_wan22_vae.safetensors`` — a complete random Wan2.2 VAE (fp16, 1.41 GB:
  ComfyUI builds every Wan2.2 VAE at the released widths, so no smaller file loads) for core ``VAELoader``;
  VAE Decode turns ``T`` latent frames of ``h x w`` into ``1 + 4 (T - 1)`` frames of ``16 h x 16 w``.

A random model makes no picture: the files are for wiring, loading and shape checks without downloads (CI, a
first run of a workflow). Existing files are never overwritten without ``--force``; every file is written to a
hidden temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import random_wan_state_dict
from ..safe_files import atomic_write
from .tiny_files import (
    TINY_DIT_CONFIG,
    TINY_WAN22_DIT_CONFIG,
    random_clip_l_state_dict,
    random_wan21_vae_state_dict,
    random_wan22_vae_state_dict,
    tiny_lora_state_dict,
)

PARTS = ("dit", "clip", "vae", "wan22-dit", "wan22-vae")
DEFAULT_PARTS = ("dit", "clip", "vae")
"""What the command writes without ``--only``; the Wan2.2 parts (1.4 GB) only when named."""
DIT_FILE = "diffusion_models/echo_forcing_tiny_dit.safetensors"
SELF_FORCING_FILE = "diffusion_models/echo_forcing_tiny_selfforcing.pt"
LORA_FILE = "loras/echo_forcing_tiny_longlive_lora.pt"
CLIP_FILE = "text_encoders/echo_forcing_tiny_clip_l.safetensors"
VAE_FILE = "vae/echo_forcing_tiny_wan21_vae.safetensors"
WAN22_DIT_FILE = "diffusion_models/echo_forcing_tiny_wan22_dit.safetensors"
WAN22_VAE_FILE = "vae/echo_forcing_tiny_wan22_vae.safetensors"
FILES = {"dit": (DIT_FILE, SELF_FORCING_FILE, LORA_FILE), "clip": (CLIP_FILE,), "vae": (VAE_FILE,),
         "wan22-dit": (WAN22_DIT_FILE,), "wan22-vae": (WAN22_VAE_FILE,)}
LORA_RANK = 4
_SEED_STRIDE = 16  # each part draws from its own stream: seed * 16 + part


class TinyModelsError(ValueError):
    """The command cannot run as asked (bad --only, files in the way); the message says what to do."""


@dataclass
class Written:
    path: Path
    bytes: int
    what: str


def parse_only(text: str | None) -> tuple[str, ...]:
    """``"dit,vae"`` -> ``("dit", "vae")`` in canonical order; ``None`` -> :data:`DEFAULT_PARTS`."""
    if text is None:
        return DEFAULT_PARTS
    wanted = {p.strip().lower() for p in text.split(",") if p.strip()}
    unknown = sorted(wanted - set(PARTS))
    if unknown or not wanted:
        raise TinyModelsError(f"--only takes a comma-separated subset of {','.join(PARTS)}; got {text!r}")
    return tuple(p for p in PARTS if p in wanted)


def _save_safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> int:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata)).size


def _save_torch(obj: dict, path: Path) -> int:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp)).size


def write_tiny_models(out_dir: Path, only: tuple[str, ...] = DEFAULT_PARTS, seed: int = 0, force: bool = False,
                      log: Callable[[str], None] = print) -> list[Written]:
    """Write the requested parts under ``out_dir``; refuse (before writing anything) if a target exists."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TinyModelsError(f"{out_dir} exists and is not a folder")
    if not 0 <= seed < 2 ** 63 // _SEED_STRIDE:
        raise TinyModelsError(f"--seed must be between 0 and {2 ** 63 // _SEED_STRIDE - 1}, got {seed}")
    targets = [out_dir / f for part in only for f in FILES[part]]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise TinyModelsError(f"refusing to overwrite {len(existing)} existing file(s): {', '.join(existing)}; "
                              "pass --force to replace them, or choose another folder")
    meta = {"generator": "python -m echo_forcing tiny-models", "seed": str(seed),
            "note": "random weights for wiring and shape checks; they make no picture"}
    written: list[Written] = []

    def record(rel: str, size: int, what: str) -> None:
        written.append(Written(out_dir / rel, size, what))
        log(f"wrote {out_dir / rel} ({size / 2 ** 20:.1f} MiB): {what}")

    if "dit" in only:
        sd = random_wan_state_dict(TINY_DIT_CONFIG, seed=seed * _SEED_STRIDE + 0)
        what = f"tiny causal {TINY_DIT_CONFIG.signature}, text width {TINY_DIT_CONFIG.text_dim}"
        record(DIT_FILE, _save_safetensors(sd, out_dir / DIT_FILE, {**meta, "format": "pt"}),
               f"{what}, plain Wan keys (UNETLoader)")
        research = {"model." + k: v for k, v in sd.items()}  # one storage per tensor: both entries share it
        record(SELF_FORCING_FILE, _save_torch({"generator_ema": research, "generator": research},
                                              out_dir / SELF_FORCING_FILE),
               "the same weights as a Self-Forcing checkpoint (generator_ema / generator)")
        lora = tiny_lora_state_dict(TINY_DIT_CONFIG, rank=LORA_RANK, seed=seed * _SEED_STRIDE + 1)
        record(LORA_FILE, _save_torch({"generator_lora": lora}, out_dir / LORA_FILE),
               f"LongLive-style PEFT LoRA, rank {LORA_RANK}, {len(lora) // 2} block linears")
        del sd, research, lora
    if "clip" in only:
        sd = random_clip_l_state_dict(seed=seed * _SEED_STRIDE + 2)
        record(CLIP_FILE, _save_safetensors(sd, out_dir / CLIP_FILE, meta),
               "random CLIP-L text encoder, fp16 (CLIPLoader type sd3 -> CONDITIONING [1, 77, 4096])")
        del sd
    if "vae" in only:
        sd = random_wan21_vae_state_dict(seed=seed * _SEED_STRIDE + 3)
        record(VAE_FILE, _save_safetensors(sd, out_dir / VAE_FILE, meta), "random Wan2.1 VAE, fp16 (VAELoader)")
        del sd
    if "wan22-dit" in only:
        sd = random_wan_state_dict(TINY_WAN22_DIT_CONFIG, seed=seed * _SEED_STRIDE + 4)
        record(WAN22_DIT_FILE, _save_safetensors(sd, out_dir / WAN22_DIT_FILE, {**meta, "format": "pt"}),
               f"tiny causal {TINY_WAN22_DIT_CONFIG.signature}, {TINY_WAN22_DIT_CONFIG.in_dim} latent channels "
               "(the TI2V-5B / LongLive 2.0 layout), plain Wan keys (UNETLoader: WAN22)")
        del sd
    if "wan22-vae" in only:
        sd = random_wan22_vae_state_dict(seed=seed * _SEED_STRIDE + 5)
        record(WAN22_VAE_FILE, _save_safetensors(sd, out_dir / WAN22_VAE_FILE, meta),
               "random Wan2.2 VAE at full size (48 latent channels, stride 16), fp16 (VAELoader)")
        del sd
    return written


def extra_model_paths_snippet(out_dir: Path) -> str:
    """The ``extra_model_paths.yaml`` entry that makes ComfyUI search ``out_dir`` like its models folder."""
    base = Path(out_dir).resolve().as_posix()
    return (f"echo_forcing_tiny:\n    base_path: {base}\n    diffusion_models: diffusion_models\n"
            "    text_encoders: text_encoders\n    vae: vae\n    loras: loras\n")


def run(out_dir: Path, only: str | None = None, seed: int = 0, force: bool = False, log=print) -> list[Written]:
    started = time.perf_counter()
    written = write_tiny_models(out_dir, parse_only(only), seed=seed, force=force, log=log)
    total = sum(w.bytes for w in written)
    log(f"{len(written)} file(s), {total / 2 ** 20:.1f} MiB in {time.perf_counter() - started:.1f} s.")
    log("Point ComfyUI at them with this entry in extra_model_paths.yaml "
        "(or start it with --extra-model-paths-config FILE):\n")
    log(extra_model_paths_snippet(out_dir))
    return written


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-models", help="write tiny random DiT / CLIP-L / Wan VAE files that ComfyUI loads",
                       description="Write tiny random model files (a causal Wan2.1 DiT, CLIP-L, the Wan2.1 VAE; on "
                                   "request a 48-channel Wan2.2 DiT and the Wan2.2 VAE) that ComfyUI's own loaders "
                                   "accept, laid out as a ComfyUI models folder.")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="models folder to write (created if needed)")
    p.add_argument("--only", metavar="PARTS", help=f"comma-separated subset of {','.join(PARTS)} (default: "
                                                   f"{','.join(DEFAULT_PARTS)}; the Wan2.2 VAE alone is 1.41 GB)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=lambda args: run(args.out_dir, args.only, args.seed, args.force))
