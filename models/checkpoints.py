"""Reading, converting and validating causal Wan2.1 checkpoints into plain Wan parameter names.

Every supported file ends up as the original Wan2.1 T2V state dict (825 keys at 1.3B), checked name by name
and shape by shape against the config its shapes imply, *before* any module is built: a bad file raises
``CheckpointError`` saying what is wrong and what to do, never a partial load.

Layouts:
- Self-Forcing ``self_forcing_dmd.pt`` / CausVid ``model.pt`` / LongLive ``longlive_base.pt``: a torch pickle
  dict with ``generator_ema`` and/or ``generator`` (LongLive also accepts ``model``), keys ``model.<wan name>``,
  possibly with ``_fsdp_wrapped_module.`` segments. The official loaders pick ``generator_ema`` (SF/EF,
  ``--use_ema``) or ``generator`` (CausVid, LongLive), delete ``_fsdp_wrapped_module.`` and load strictly into
  their wrapper, whose ``model.`` prefix we strip. Other entries (``critic``, ``step``) are ignored.
- LongLive ``lora.pt``: a PEFT LoRA on every block linear, merged here as PEFT's ``merge_and_unload`` does.
- ComfyUI repackaged safetensors (``model.diffusion_model.`` prefix), plain Wan safetensors, and ComfyUI's
  "scaled fp8" safetensors (``scaled_fp8`` marker, per-layer ``scale_weight``), dequantised on load.
- A research checkpoint converted by ``python -m echo_forcing models download``: the chosen entry's tensors
  under plain Wan names (a LoRA's under its own names) with the entry in the safetensors metadata
  (:data:`CONVERTED_ENTRY_KEY`); it is read back as ``{entry: tensors}``, so it loads exactly like the pickle
  (the same entry, the same ``weights`` choices).

Pickles are only ever opened with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..safe_files import available_memory
from .config import WanConfig
from .memory_expert import MemoryExpertError, split_memory_expert
from .wan import WanDiT

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SUPPORTED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
RESEARCH_ENTRIES = ("generator_ema", "generator", "model")
"""Top-level entries of research checkpoints, in the order ``weights="auto"`` tries them."""
_WRAPPERS = ("state_dict", "module")
_FSDP = "_fsdp_wrapped_module."
_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight$")
_LORA_STRIP = ("base_model.model.", "model.", "diffusion_model.")
_OTHER_ARCHS = {"input_blocks.": "a Stable Diffusion 1.x/2.x/XL UNet", "double_blocks.": "a Flux transformer",
                "joint_blocks.": "a Stable Diffusion 3 MMDiT", "transformer_blocks.": "a diffusers transformer"}
STORED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, *_FP8)
"""Weight dtypes a checkpoint may store (fp8 is dequantised or upcast at load); int8 and others are refused."""
_LIST = 10
CONVERTED_ENTRY_KEY = "echo_forcing.source_entry"
"""Safetensors metadata key naming the research entry (``generator_ema``, ``generator``, ``model`` or
``generator_lora``) a converted file holds."""
_CONVERTED_ENTRIES = (*RESEARCH_ENTRIES, "generator_lora")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says what is wrong and what to do."""


@dataclass
class ConvertedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    source: str
    notes: list[str] = field(default_factory=list)
    entry: str | None = None
    """The research entry used (``generator_ema``, ``generator``, ``model``), None for a bare state dict."""


@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    config: WanConfig
    source: str
    notes: list[str] = field(default_factory=list)
    memory_expert: dict[str, torch.Tensor] | None = None
    """SGF+'s memory expert under plain Wan names (``models.memory_expert``), None for a one-expert student."""


def read_tensors(path) -> dict:
    """Raw contents of a ``.safetensors`` or torch pickle file (``weights_only=True``, memory-mapped if zip)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CheckpointError(f"{name}: unsupported checkpoint extension {suffix or '(none)'!r}; "
                              f"supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path} (check the file name and the models folder)")
    size, free = os.path.getsize(path), available_memory()
    if free is not None and size > free:
        raise CheckpointError(f"{name} is {size / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of RAM is "
                              "available; close other programs or models, or use a smaller (fp8) file")
    corrupt = f"{name} is truncated or corrupt (an interrupted download?); re-download it"
    if suffix == ".safetensors":
        try:
            tensors = load_file(path, device="cpu")
            entry = converted_entry(path)
        except SafetensorError as e:
            raise CheckpointError(f"{corrupt} ({e})") from None
        return {entry: tensors} if entry else tensors
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's zip format can be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except OSError as e:
        raise CheckpointError(f"{name} could not be opened: {e}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError) as e:
        raise _pickle_error(name, corrupt, e) from None


def converted_entry(path) -> str | None:
    """The research entry a safetensors file converted by ``models download`` holds, from its metadata."""
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        entry = (f.metadata() or {}).get(CONVERTED_ENTRY_KEY)
    return entry if entry in _CONVERTED_ENTRIES else None


def _pickle_error(name: str, corrupt: str, e: Exception) -> CheckpointError:
    msg = str(e)
    unsafe = re.search(r"GLOBAL\s+([\w.]+)", msg)
    if unsafe or "Unsupported global" in msg:
        wanted = f" (it asked for {unsafe.group(1)})" if unsafe else ""
        return CheckpointError(
            f"{name} contains pickled code objects{wanted} and was refused for safety: checkpoints are only "
            "loaded with torch.load(weights_only=True). If you trust the file, convert it to .safetensors "
            "in a trusted environment and load that instead.")
    if isinstance(e, EOFError) or re.search(r"central directory|truncated|EOF|Ran out of input|corrupt", msg):
        return CheckpointError(f"{corrupt} ({type(e).__name__}: {msg.splitlines()[0] if msg else 'empty'})")
    detail = [ln for ln in msg.splitlines() if ln.strip() and not ln.startswith(("Weights only", "Please", "Check"))]
    return CheckpointError(f"{name} could not be read as a PyTorch checkpoint ({'; '.join(detail) or type(e).__name__})"
                           "; it may be corrupt or not a torch.save file. Re-download it or use .safetensors.")


def _select(raw: Mapping, weights: str, prefer_generator: bool) -> tuple[str | None, Mapping]:
    """Pick the generator entry of a research dict; ``None`` means a bare state dict."""
    if weights not in ("auto", "ema", "generator"):
        raise CheckpointError(f"weights must be 'auto', 'ema' or 'generator', got {weights!r}")
    present = [k for k in RESEARCH_ENTRIES if isinstance(raw.get(k), Mapping)]
    wanted = {"ema": "generator_ema", "generator": "generator"}.get(weights)
    if wanted and wanted not in present:
        found = sorted(map(str, raw))
        raise CheckpointError(
            f"weights={weights!r} asks for the {wanted!r} entry, but the checkpoint has none; top-level entries: "
            f"{', '.join(found[:_LIST])}{' ...' if len(found) > _LIST else ''}. Use weights='auto'.")
    if prefer_generator and "generator" in present:
        present.remove("generator")
        present.insert(0, "generator")
    entry = wanted or (present[0] if present else None)
    chosen = raw[entry] if entry else raw
    for wrapper in _WRAPPERS:  # {"state_dict": {...}} / {"module": {...}} around the tensors
        if not any(isinstance(v, torch.Tensor) for v in chosen.values()) and isinstance(chosen.get(wrapper), Mapping):
            chosen = chosen[wrapper]
    return entry, chosen


def _dequantise(sd: dict, dtype: torch.dtype, notes: list[str]) -> bool:
    """ComfyUI scaled fp8: ``W = weight.float() * scale_weight``; drop marker/scale keys; upcast plain fp8."""
    scaled = "scaled_fp8" in sd
    sd.pop("scaled_fp8", None)
    scales = {k[: -len(".scale_weight")]: sd.pop(k) for k in [k for k in sd if k.endswith(".scale_weight")]}
    for k in [k for k in sd if k.endswith(".scale_input")]:
        del sd[k]
    for layer, s in scales.items():
        w = sd.get(layer + ".weight")
        if w is None:
            raise CheckpointError(f"{layer}.scale_weight has no {layer}.weight: the scaled fp8 file is corrupt; "
                                  "re-download it")
        s = s.float().reshape(() if s.numel() == 1 else (-1, *[1] * (w.dim() - 1)))
        sd[layer + ".weight"] = (w.float() * s).to(dtype)
    upcast = [k for k, v in sd.items() if v.dtype in _FP8]
    for k in upcast:
        sd[k] = sd[k].to(dtype)
    if scales:
        notes.append(f"dequantised {len(scales)} scaled fp8 weights (weight * scale_weight) to {dtype}")
    if upcast:
        notes.append(f"upcast {len(upcast)} fp8 tensors without scale to {dtype}")
    return scaled or bool(scales)


def convert_to_wan(raw: Mapping, *, weights: str = "auto", dtype: torch.dtype | None = None,
                   prefer_generator: bool = False) -> ConvertedCheckpoint:
    """Rename any supported layout to plain Wan names; names and shapes are not validated here.

    ``weights``: "auto" (``generator_ema``, else ``generator``, else ``model``, else the dict itself; with
    ``prefer_generator`` ``generator`` first), "ema" or "generator". fp8 tensors become ``dtype``
    (default float32). Non-tensor entries are ignored.
    """
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"the checkpoint holds a {type(raw).__name__}, not a dict of tensors")
    entry, chosen = _select(raw, weights, prefer_generator)
    notes = []
    if entry:
        ignored = sorted(str(k) for k in raw if k != entry)
        if ignored:
            notes.append(f"used '{entry}'; ignored top-level entries: {', '.join(ignored)}")
    tensors = {str(k): v for k, v in chosen.items() if isinstance(v, torch.Tensor)}
    if len(tensors) < len(chosen):
        notes.append(f"ignored {len(chosen) - len(tensors)} non-tensor entries")
    prefix = next((p for p in _COMFY_PREFIXES if any(k.startswith(p) for k in tensors)), None)
    sd = _strip_comfy_prefix(tensors, prefix, notes) if prefix else _strip_research_names(tensors)
    scaled = _dequantise(sd, dtype or torch.float32, notes)
    return ConvertedCheckpoint(state_dict=sd, source=_layout_name(tensors, scaled, entry, prefix), notes=notes,
                               entry=entry)


def _strip_comfy_prefix(tensors: dict[str, torch.Tensor], prefix: str, notes: list[str]) -> dict:
    """Keep the tensors under ComfyUI's ``prefix`` (without it) and the ``scaled_fp8`` marker; note the rest."""
    sd = {}
    for k, v in tensors.items():
        if k.startswith(prefix) or k.endswith("scaled_fp8"):
            sd[k.removeprefix(prefix) if k.startswith(prefix) else "scaled_fp8"] = v
    if len(sd) < len(tensors):  # VAE / text encoder of an all-in-one file
        notes.append(f"ignored {len(tensors) - len(sd)} tensors outside '{prefix}'")
    return sd


def _strip_research_names(tensors: dict[str, torch.Tensor]) -> dict:
    """Research names to Wan names: drop ``_fsdp_wrapped_module.`` segments and the wrapper's ``model.``."""
    sd = {}
    for k, v in tensors.items():
        k = k.replace(_FSDP, "")
        sd[k.removeprefix("model.")] = v
    return sd


def _layout_name(tensors: Mapping[str, torch.Tensor], scaled: bool, entry: str | None, prefix: str | None) -> str:
    """What kind of file the tensors came from, as :attr:`ConvertedCheckpoint.source` says it."""
    if scaled:
        return "scaled fp8 safetensors"
    if entry:
        return f"Self-Forcing/CausVid/LongLive research checkpoint ({entry})"
    if prefix:
        return "ComfyUI repackaged safetensors"
    if any(k.replace(_FSDP, "").startswith("model.") for k in tensors):
        return "research checkpoint (bare state dict)"
    return "plain Wan state dict"


def _lora_module(key: str) -> tuple[str, str] | None:
    """``(wan module, kind)`` of a LoRA key, ``kind`` in A/B/alpha; ``None`` for a foreign key."""
    key = key.replace(_FSDP, "")
    for p in _LORA_STRIP:
        key = key.removeprefix(p)
    if key.endswith(".alpha"):
        return key[: -len(".alpha")], "alpha"
    m = _LORA_KEY.match(key)
    if not m:
        return None
    return m["module"], "A" if m["kind"] in ("lora_A", "lora_down") else "B"


def merge_lora(state_dict: dict, lora_raw: Mapping, alpha: float | None = None) -> dict:
    """Merge LongLive's PEFT LoRA into plain Wan weights: ``W += (alpha / r) * B @ A``.

    Same result as LongLive's ``merge_and_unload``: A [r, in], B [out, r], computed in float32 and cast back
    to W's dtype; biases untouched. alpha: a per-module ``.alpha`` tensor, else ``alpha``, else r (scale 1,
    as LongLive's rank 256 / alpha 256). Returns a new dict; ``state_dict`` is not modified.
    """
    lora = lora_raw.get("generator_lora", lora_raw) if isinstance(lora_raw, Mapping) else None
    if not isinstance(lora, Mapping):
        raise CheckpointError("the LoRA file holds no dict of tensors")
    parts = _lora_parts(lora)
    _check_lora_values(parts)
    out = dict(state_dict)
    for module, p in sorted(parts.items()):
        out[module + ".weight"] = _merged_weight(module, p, state_dict, alpha)
    return out


def lora_tensors(lora_raw: Mapping) -> tuple[str | None, dict[str, torch.Tensor]]:
    """A LoRA file's tensors as stored (LongLive's ``generator_lora`` entry, else the dict itself) and the entry's
    name, checked as :func:`merge_lora` checks them (LoRA keys only, A and B per module, finite float values)."""
    entry = "generator_lora" if isinstance(lora_raw, Mapping) and "generator_lora" in lora_raw else None
    lora = lora_raw[entry] if entry else lora_raw
    if not isinstance(lora, Mapping):
        raise CheckpointError("the LoRA file holds no dict of tensors")
    parts = _lora_parts(lora)
    _check_lora_values(parts)
    missing = sorted(m for m, p in parts.items() if "A" not in p or "B" not in p)
    if missing:
        raise CheckpointError(f"LoRA modules without both A and B matrices: {', '.join(missing[:_LIST])}; the LoRA "
                              "file is incomplete")
    return entry, {str(k): v for k, v in lora.items() if isinstance(v, torch.Tensor)}


def _lora_parts(lora: Mapping) -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA's tensors by Wan module, then by kind (A, B, alpha); non-tensor entries are skipped.

    :class:`CheckpointError` for a key that is not a LoRA key, a kind given twice, or no LoRA tensor at all.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for k, v in lora.items():
        if not isinstance(v, torch.Tensor):
            continue
        parsed = _lora_module(str(k))
        if parsed is None:
            foreign.append(str(k))
            continue
        module, kind = parsed
        if kind in parts.setdefault(module, {}):
            raise CheckpointError(f"LoRA has two {kind} tensors for {module} (several adapters?); keep one")
        parts[module][kind] = v
    if foreign:
        raise CheckpointError(f"not a LoRA key: {', '.join(foreign[:_LIST])} ({len(foreign)} in all); expected "
                              "PEFT '<module>.lora_A.weight'/'lora_B.weight' or 'lora_down'/'lora_up' names")
    if not parts:
        raise CheckpointError("the LoRA file contains no LoRA tensors (lora_A/lora_B or lora_down/lora_up)")
    return parts


def _check_lora_values(parts: dict[str, dict[str, torch.Tensor]]) -> None:
    """:class:`CheckpointError` when a LoRA tensor is not finite or not stored as a float dtype."""
    check_finite({f"{m}.{k}": t for m, p in parts.items() for k, t in p.items()}, "the LoRA file")
    floats = (torch.float32, torch.float16, torch.bfloat16)
    odd = sorted({str(t.dtype) for p in parts.values() for t in p.values() if t.dtype not in floats})
    if odd:
        raise CheckpointError(f"the LoRA stores its matrices as {', '.join(odd)}; use a float32, float16 or "
                              "bfloat16 LoRA")


def _merged_weight(module: str, p: dict[str, torch.Tensor], state_dict: dict, alpha: float | None) -> torch.Tensor:
    """``module``'s base weight plus its LoRA delta ``(alpha / r) * B @ A`` (float32 math, W's dtype).

    :class:`CheckpointError` when A or B is missing, the base model lacks the module, or the shapes disagree.
    """
    if "A" not in p or "B" not in p:
        missing = "B (lora_B/lora_up)" if "A" in p else "A (lora_A/lora_down)"
        raise CheckpointError(f"LoRA module {module} has no {missing} matrix; the LoRA file is incomplete")
    a, b, target = p["A"], p["B"], module + ".weight"
    if target not in state_dict:
        raise CheckpointError(f"LoRA targets {module}, which the base model does not have ({target} missing); "
                              "is this LoRA for another model?")
    w = state_dict[target]
    shapes = f"A {list(a.shape)}, B {list(b.shape)}, weight {list(w.shape)}"
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise CheckpointError(f"LoRA {module}: rank mismatch between A and B ({shapes})")
    if w.dim() != 2 or (b.shape[0], a.shape[1]) != tuple(w.shape):
        raise CheckpointError(f"LoRA {module} does not match the base model ({shapes}); "
                              "is this LoRA for another model size?")
    rank = a.shape[0]
    module_alpha = float(p["alpha"]) if "alpha" in p else alpha
    scale = (rank if module_alpha is None else module_alpha) / rank
    return (w.float() + scale * (b.float() @ a.float())).to(w.dtype)


def _architecture_hint(keys: list[str]) -> str:
    for prefix, arch in _OTHER_ARCHS.items():
        if any(k.startswith(prefix) or f".{prefix}" in k for k in keys):
            return f" The keys look like {arch}."
    return ""


def validate_wan_state_dict(sd: Mapping) -> WanConfig:
    """Infer the config from the shapes and check every name and shape against it, reporting all at once."""
    try:
        cfg = WanConfig.from_state_dict(sd)
    except (ValueError, IndexError, TypeError) as e:
        keys = sorted(sd)
        what = "an image-to-video model" if "image-to-video" in str(e) else "not a Wan2.1 text-to-video DiT"
        raise CheckpointError(
            f"this checkpoint is {what}: {e}.{_architecture_hint(keys)} Found {len(keys)} keys, e.g. "
            f"{', '.join(keys[:_LIST]) or 'none'}. Echo-Forcing needs a causal Wan2.1 T2V student "
            "(Self-Forcing, CausVid, LongLive) or Wan2.1-T2V weights.") from None
    bad = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.dtype not in STORED_DTYPES})
    if bad:
        raise CheckpointError(f"the checkpoint stores weights as {', '.join(bad)}, which this pack cannot compute "
                              "with; use a float32, float16, bfloat16 or fp8 (e4m3fn / e5m2) file")
    expected = cfg.expected_shapes()
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = [f"{k}: file {list(sd[k].shape)} vs expected {list(s)}"
                  for k, s in expected.items() if k in sd and tuple(sd[k].shape) != s]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
        if items:
            more = f" ... (+{len(items) - _LIST} more)" if len(items) > _LIST else ""
            problems.append(f"{len(items)} {label}: {'; '.join(items[:_LIST])}{more}")
    if problems:
        raise CheckpointError(f"the weights do not match a {cfg.signature}:\n  " + "\n  ".join(problems)
                              + "\nThe file is not a complete Wan2.1 T2V DiT (wrong model, or a partial/merged "
                              "file); nothing was loaded.")
    return cfg


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinity (weights, LoRAs, the pack's state files)."""
    return [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()
            and not bool(torch.isfinite(v).all())]


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse ``tensors`` (named ``what`` in the message) when a floating-point one holds NaN or infinity."""
    bad = non_finite(tensors)
    if bad:
        more = f" and {len(bad) - _LIST} more" if len(bad) > _LIST else ""
        raise CheckpointError(f"{what} holds NaN or infinite values ({', '.join(bad[:_LIST])}{more}); it is damaged "
                              "or was trained or merged badly, and would only make noise: use another file")


def load_wan_checkpoint(path, *, lora=None, lora_alpha: float | None = None, weights: str = "auto",
                        dtype: torch.dtype = torch.bfloat16) -> LoadedCheckpoint:
    """Read, convert, validate, merge the LoRA, cast; raises before anything is built.

    The base is validated before the merge (a merge never changes names or shapes), so a wrong base file is
    reported as such rather than as a LoRA that does not fit it.

    With a LoRA and ``weights="auto"`` the base ``generator`` is preferred over ``generator_ema``: LongLive
    trained its LoRA on top of ``generator`` and its inference config uses ``use_ema: false``.
    """
    raw = read_tensors(path)
    conv = convert_to_wan(raw, weights=weights, dtype=dtype, prefer_generator=lora is not None)
    had_ema = isinstance(raw, Mapping) and "generator_ema" in raw
    del raw  # drop the entries that were not selected (critic, optimizer state) before the LoRA merge
    notes = conv.notes
    try:
        sd, expert = split_memory_expert(conv.state_dict)
    except MemoryExpertError as err:
        raise CheckpointError(str(err)) from None
    cfg = validate_wan_state_dict(sd)
    check_finite(sd, f"the checkpoint {os.path.basename(os.fspath(path))}")
    if expert is not None:
        if validate_wan_state_dict(expert) != cfg:
            raise CheckpointError("the SGF+ memory expert has another shape than the weights it mirrors")
        check_finite(expert, f"the memory expert of {os.path.basename(os.fspath(path))}")
        expert = {k: v.to(dtype) if v.is_floating_point() else v for k, v in expert.items()}
        notes.append("SGF+ memory expert: the clean context passes run these weights, the denoising calls the "
                     "others")
    if lora is not None:
        if weights == "auto" and had_ema and conv.source.endswith("(generator)"):
            notes.append("LoRA given: used 'generator' rather than 'generator_ema' (LongLive's LoRA was "
                         "trained on top of 'generator')")
        sd = merge_lora(sd, read_tensors(lora), alpha=lora_alpha)
        notes.append(f"merged LoRA {os.path.basename(os.fspath(lora))}"
                     + (" into the generation expert" if expert is not None else ""))
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    if lora is not None or dtype.itemsize < 4:
        check_finite(sd, f"the weights in {str(dtype).replace('torch.', '')} (after the LoRA merge and the cast)")
    return LoadedCheckpoint(state_dict=sd, config=cfg, source=conv.source, notes=notes, memory_expert=expert)


def load_wan_model(path, *, lora=None, lora_alpha: float | None = None, weights: str = "auto",
                   dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> WanDiT:
    """``load_wan_checkpoint`` then a plain-torch ``WanDiT`` holding exactly those weights (a file with an SGF+
    memory expert is refused: it needs both, :func:`load_wan_experts`)."""
    dit, expert = load_wan_experts(path, lora=lora, lora_alpha=lora_alpha, weights=weights, dtype=dtype,
                                   device=device)
    if expert is not None:
        raise CheckpointError(f"{os.path.basename(os.fspath(path))} holds an SGF+ memory expert besides the "
                              "weights; load both (load_wan_experts) and give the expert to CausalWan")
    return dit


def load_wan_experts(path, *, lora=None, lora_alpha: float | None = None, weights: str = "auto",
                     dtype: torch.dtype = torch.bfloat16,
                     device: torch.device | str = "cpu") -> tuple[WanDiT, WanDiT | None]:
    """The DiT and, for an SGF+ file, its memory expert (``CausalWan(dit, memory_expert=...)``), else None."""
    ckpt = load_wan_checkpoint(path, lora=lora, lora_alpha=lora_alpha, weights=weights, dtype=dtype)
    dit = WanDiT.from_state_dict(ckpt.state_dict, dtype=dtype, device=device)
    expert = None if ckpt.memory_expert is None else WanDiT.from_state_dict(ckpt.memory_expert, dtype=dtype,
                                                                             device=device)
    return dit, expert
