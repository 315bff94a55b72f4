"""One prepared check of the pack on a CUDA GPU: correctness against the CPU fixtures, then figures at the full
Wan2.1-1.3B shapes, all within a time budget.

    python bench/gpu_check.py                                        # on the GPU (default budget 450 s)
    python bench/gpu_check.py --markdown docs/BENCHMARKS.md --json gpu_check.json
    python bench/gpu_check.py --device cpu --quick                   # smoke run of every part on the CPU

Four processes in turn: (a), the core runs of (b), the compiled run, the other presets of (b). A crash or a hung
compile ends that process only, and what it measured before is kept; inside, every step is timed and guarded
(a failure is reported, the next step still runs). A global budget (``--budget``, 450 s) is shared out: a step
the remaining time cannot hold is skipped or cut short after fewer blocks, and the output says which and why.
Exit status 1 when a check fails or a step errs.

(a) correctness on the device, float32 (TF32 off): the parity scenarios of tests/test_parity_self_forcing.py
    (global 21-frame cache; rolling cache with a sink), tests/test_parity_echo_compression.py (phase-compression
    scores and selection) and tests/test_parity_echo_story.py (the five-scene Echo-Forcing story), rebuilt
    with the same inputs and compared with the same fixtures (max |delta| <= 1e-3). Under CUDA the Echo-Forcing
    memory keeps its anchor pool, candidate history and scene-pool frames in pinned CPU memory and copies them
    asynchronously: the check asserts they are pinned. Then a six-shot script at a small size in float32, in
    bf16 and in bf16 with fp8_e4m3 keys and values: outputs finite, the distance to float32 reported.
(b) full 1.3B shapes (random bf16 weights, 480x832, 4 steps; the six-shot scripts of bench/rollout.py):
    echo-forcing on the 60 s script, self-forcing, echo-forcing with fp8_e4m3 KV storage, echo-forcing on a
    13 s script and on the same script with every shot twice as long (memory flat in length), echo-forcing
    with fp8 weights; then echo-forcing with ``torch.compile`` (``CausalWan(compile=True)``) on the 13 s script
    (steady block time against the eager run, and the latents' distance to it); then the other presets if time
    is left. Per run: first and steady (full-cache) block time, video FPS (12 frames per block), peak GPU
    memory (``torch.cuda.max_memory_allocated``, weights included) and the memory planner's figure
    (``pipeline.memory_need.memory_need(...).device_bytes`` with the weights counted) with the measured/planned
    ratio. One process holds the model for its runs; the peak statistics are reset before each run.
(c) output: progress lines as it goes, then a summary (tables and comparisons); ``--markdown FILE`` writes it as
    the section "## GPU check (bench/gpu_check.py)" of FILE, ``--json FILE`` dumps every figure.

fp8 weights: ``nn.Linear`` cannot multiply float8 weights, so every Linear of the transformer blocks is
swapped for one that keeps its weight as ``float8_e4m3fn`` with a scale per output row and dequantises it
to bf16 at each call (what ComfyUI does with fp8 checkpoints); embeddings, head, norms, modulations and biases
stay bf16. The planner's figure counts every parameter at one byte.

``--quick`` runs the same code on tiny shapes and few blocks (a smoke run, e.g. on the CPU); checks that need
CUDA then say "skipped: not CUDA". Random weights: the figures measure the machinery, not picture quality.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rollout as bench_rollout
import torch
import torch.nn.functional as F
from benchmark_report import commit, hardware, write_section
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import SelfForcingCacheConfig, make_policy, preset_names
from echo_forcing.memory.echo_memory import EchoMemory
from echo_forcing.memory.kv_storage import COMPUTE, FP8_E4M3, FP8_MAX
from echo_forcing.memory.phase_compression import (
    PhaseCalibration,
    drift_gate,
    geometric_offsets,
    score_tokens,
    select_tokens,
    summarize,
    temporal_omega,
)
from echo_forcing.models import WAN21_T2V_1_3B, CausalWan, WanConfig, WanDiT, random_wan_state_dict
from echo_forcing.models.block_forward import cpu_compile_problem
from echo_forcing.pipeline import RolloutSettings, parse_scene_script, rollout, scenes_for_script
from echo_forcing.pipeline.memory_need import memory_need, weight_bytes
from echo_forcing.pipeline.rollout import PendingText, token_grid

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SF_FIXTURES = FIXTURES / "self_forcing"
ECHO_FIXTURES = FIXTURES / "echo_forcing"
LATENT_TOLERANCE = 1e-3
"""The parity budget of the tests: max |ours - reference| (the fixtures' 16-bit storage step included)."""
STORY_CONFIG = WanConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=1, text_dim=64, in_dim=4, out_dim=4)
"""The story fixture's model (tests/test_parity_echo_story.py): one layer of the real 12 x 128 heads."""
STORY_TOKENS = 1560
FPS = bench_rollout.FPS
SCRIPT = bench_rollout.SCRIPT_SECONDS  # 2+2+2+2+2+8 blocks: the last shot fills and rolls the 21-frame cache
SCRIPT_2X = tuple(2 * s for s in SCRIPT)
MINUTE = bench_rollout.MINUTE_SECONDS  # the 60 s six-shot video
VIDEO_FRAMES_PER_BLOCK = 12
MIB = 2**20
DEFAULT_BUDGET = 450.0
REPORT_RESERVE = 10.0
"""Seconds kept at the end of the budget for the report."""
KILL_GRACE = 20.0
"""Seconds a part may run past its own deadline (a block in progress, process start) before it is killed."""
SECTION = "GPU check (bench/gpu_check.py)"
QUICK_SIZE = (128, 224)
"""--quick: latent 16x28, 8x14 tokens per frame."""
SMALL_SIZE = (240, 416)
"""(a)'s low-precision runs on the GPU: latent 30x52, 15x26 tokens per frame."""


def say(text: str) -> None:
    print(text, flush=True)


def _cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _rss_mib() -> float | None:
    """The process's resident set size in MiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _memory_mib(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset (CUDA), else the process's RSS now."""
    return torch.cuda.max_memory_allocated(device) / MIB if _cuda(device) else _rss_mib()


def _free(device: torch.device) -> None:
    gc.collect()
    if _cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---- a rollout that can stop early ------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by the interrupt hook to end a rollout before its next block."""


@dataclass
class Run:
    latents: torch.Tensor
    """The blocks done, ``[B, frames, C, h, w]`` float32 on the CPU."""
    blocks: list[dict]
    planned: int
    stopped: str | None
    """Why it stopped before the end (None: every block ran)."""
    seconds: float
    state: object | None = None
    result: object | None = None


def _capturing(policy) -> dict:
    """Keep the memory state the policy creates last (the rollout's) in the returned dict's "state"."""
    box: dict = {}
    create = policy.create

    def capture(*args, **kwargs):
        box["state"] = create(*args, **kwargs)
        return box["state"]

    object.__setattr__(policy, "create", capture)  # frozen dataclasses: an instance attribute shadows the method
    return box


def capped_rollout(model: CausalWan, text, settings: RolloutSettings, policy, *, cap: int | None = None,
                   until: float | None = None, after_block: Callable[[dict, object], None] | None = None) -> Run:
    """``rollout`` that stops before block ``cap`` or when the next block would end after ``until`` (time.time()).

    Latents are collected block by block, so a stopped run still returns the blocks it made (the rollout is
    causal: they equal the first blocks of the complete run).
    """
    box = _capturing(policy)
    blocks: list[dict] = []
    frames: list[torch.Tensor] = []
    planned = settings.num_blocks
    stop: dict = {}

    def interrupt() -> None:
        n = len(blocks)
        if cap is not None and n >= cap:
            stop["why"] = f"block cap {cap}"
            raise _Stop
        if until is not None and n:
            if time.time() + 1.1 * blocks[-1]["seconds"] > until:
                stop["why"] = "time budget"
                raise _Stop

    def on_block(event) -> None:
        frames.append(event.latents.clone())
        row = {"block": event.index, "scene": event.scene, "seconds": event.seconds,
               "slots": event.memory.slots, "memory_mib": _memory_mib(model.device)}
        blocks.append(row)
        if after_block is not None:
            after_block(row, box.get("state"))

    started = time.perf_counter()
    result = None
    try:
        with torch.inference_mode():
            result = rollout(model, text, settings, policy, on_block=on_block, interrupt=interrupt)
    except _Stop:
        pass
    seconds = time.perf_counter() - started
    latents = torch.cat(frames, dim=1) if frames else torch.empty(0)
    return Run(latents, blocks, planned, stop.get("why"), seconds, box.get("state"), result)


# ---- (a) correctness ----------------------------------------------------------------------------------------------

def _golden(path: Path) -> tuple[torch.Tensor, float]:
    data = np.load(path)
    scale = float(data["scale"])
    return torch.from_numpy(data["latents_q"].astype(np.float64) * scale), scale


def _compare(ours: torch.Tensor, golden: torch.Tensor, scale: float) -> dict:
    diff = (ours.double() - golden).abs().max().item()
    ok = diff <= LATENT_TOLERANCE
    return {"status": "pass" if ok else "fail", "max_delta": diff, "bound": LATENT_TOLERANCE,
            "storage_step": scale}


def _placement(state, device: torch.device) -> dict:
    """Where the Echo-Forcing memory keeps its tensors (under CUDA: storage in pinned CPU memory)."""
    if not _cuda(device):
        return {"placement": "skipped: not CUDA"}
    layer = state.layers[0]
    return {"working cache on device": layer.k.device.type == "cuda",
            "storage device is cpu": layer.storage.type == "cpu",
            "anchor pool pinned": bool(layer.pool.k.is_pinned() and layer.pool.v.is_pinned()),
            "candidate history pinned": bool(layer.history.k.is_pinned() and layer.history.v.is_pinned())}


def _placement_ok(placement: dict) -> bool:
    return all(v for v in placement.values() if isinstance(v, bool))


class SelfForcingFixture:
    """The tiny model and text of tests/test_parity_self_forcing.py, on ``device`` in float32."""

    def __init__(self, device: torch.device):
        weights = {k: v.float() for k, v in load_file(SF_FIXTURES / "tiny_wan.safetensors").items()}
        self.model = CausalWan(WanDiT.from_state_dict(weights, dtype=torch.float32, device=device),
                               dtype=torch.float32, device=device)
        with safe_open(SF_FIXTURES / "inputs.safetensors", "pt") as f:
            self.seed = int(f.metadata()["seed"])
            self.text = self.model.encode_text(f.get_tensor("text_embeds"))


def check_sf_global(ctx: dict, until: float) -> dict:
    fx = ctx["sf"]()
    golden, scale = _golden(SF_FIXTURES / "golden_global.npz")
    settings = RolloutSettings(num_frames=21, height=480, width=832, seed=fx.seed)
    run = capped_rollout(fx.model, fx.text, settings, SelfForcingCacheConfig(), cap=1 if ctx["quick"] else None,
                         until=until)
    n = run.latents.shape[1] if run.latents.numel() else 0
    if not n:
        return {"status": "skipped", "note": f"no block within the time ({run.stopped})"}
    out = _compare(run.latents, golden[:, :n], scale)
    out["compared"] = f"frames 0..{n - 1} of 21" + (f" (stopped: {run.stopped})" if run.stopped else "")
    return out


def check_sf_rolling(ctx: dict, until: float) -> dict:
    fx = ctx["sf"]()
    golden, scale = _golden(SF_FIXTURES / "golden_rolling.npz")  # frames 6..11: the blocks that roll the cache
    settings = RolloutSettings(num_frames=12, height=480, width=832, seed=fx.seed)
    run = capped_rollout(fx.model, fx.text, settings, SelfForcingCacheConfig(local_attn_size=6, sink_size=3),
                         until=until)
    if run.stopped:
        return {"status": "skipped", "note": f"stopped after {len(run.blocks)} of 4 blocks ({run.stopped}); the "
                                             "fixture holds frames 6..11"}
    out = _compare(run.latents[:, 6:12], golden, scale)
    out["compared"] = "frames 6..11 of 12 (cache rolled)"
    return out


def check_echo_compression(ctx: dict, until: float) -> dict:
    """tests/test_parity_echo_compression.py with every tensor on the device."""
    device = ctx["device"]
    official = np.load(ECHO_FIXTURES / "pc_scores.npz")
    g = torch.Generator().manual_seed(7)
    history_k = torch.randn(1, 32760, 12, 128, generator=g)
    q_real = torch.randn(12, 64, generator=g)
    q_imag = torch.randn(12, 64, generator=g)
    abs_extra = torch.rand(12, 64, generator=g)
    q_recent = torch.randn(1, 4680, 12, 128, generator=g)
    counts = torch.randint(0, 10, (1, 32760), generator=g)
    if abs(history_k.double().sum().item() / float(official["inputs_history_k_sum"]) - 1) > 1e-9:
        return {"status": "fail", "note": "the inputs no longer reproduce the fixture's"}
    calib = PhaseCalibration(12, 128, device)
    calib.mean = torch.complex(q_real, q_imag).to(device)
    calib.abs_mean = calib.mean.abs() + abs_extra.to(device)
    history, recent, counts = history_k[0].to(device), q_recent.to(device), counts[0].to(device)
    frames = torch.arange(5, 26, device=device).repeat_interleave(1560)
    worst, notes, ok = 0.0, [], True
    for lam, tag in ((3.0, "l3_sum"), (2.0, "l2_sum")):
        gate = drift_gate(recent, calib, lam)
        gate_err = abs(gate.item() - float(official[f"gate_{tag}"])) / abs(float(official[f"gate_{tag}"]))
        ours = score_tokens(summarize(history, calib, True), frames.max() + 1 - frames, gate,
                            temporal_omega(128, device), geometric_offsets(21))
        ours[-4680:] = -float("inf")
        reference = torch.from_numpy(official[f"fused_{tag}"])
        finite = torch.isfinite(reference)
        ours_cpu = ours.cpu()
        same_finite = torch.equal(finite, torch.isfinite(ours_cpu))
        diff = (ours_cpu[finite] - reference[finite]).abs().max().item()
        chosen = select_tokens(ours, counts, 3 * 1560, reuse_cap=8)
        same_choice = chosen.cpu().tolist() == official[f"selected_{tag}"].tolist()
        worst = max(worst, diff)
        ok = ok and gate_err <= 1e-6 and same_finite and diff < 2e-5 and same_choice
        notes.append(f"lambda {lam:g}: gate rel err {gate_err:.1e}, selection "
                     f"{'identical' if same_choice else 'DIFFERS'}")
    return {"status": "pass" if ok else "fail", "max_delta": worst, "bound": 2e-5,
            "compared": "scores of 32,760 history tokens, 4,680 chosen", "note": "; ".join(notes)}


def _story_model(device: torch.device, dtype: torch.dtype, digest_expected: str | None = None,
                 cfg: WanConfig = STORY_CONFIG) -> CausalWan:
    sd = random_wan_state_dict(cfg, seed=2026)
    if digest_expected is not None:
        digest = hashlib.sha256()
        for name in sorted(sd):
            digest.update(sd[name].contiguous().numpy().tobytes())
        if digest.hexdigest() != digest_expected:
            raise AssertionError("the weight generator no longer reproduces the story fixture's weights")
    return CausalWan(WanDiT.from_state_dict(sd, dtype=dtype, device=device), dtype=dtype, device=device)


def _echo_encoder(text_dim: int):
    return lambda prompts: stand_in_text_embedding(list(prompts), text_dim)


def check_echo_story(ctx: dict, until: float) -> dict:
    """tests/test_parity_echo_story.py's run (12, 4, 2, 2, 1 blocks), latents against story_latents.npz."""
    device = ctx["device"]
    trace = json.loads((ECHO_FIXTURES / "story_trace.json").read_text())
    model = _story_model(device, torch.float32, trace["meta"]["weights_sha256"])
    scenes = parse_scene_script(trace["meta"]["prompt"])
    embeddings = stand_in_text_embedding([s.prompt for s in scenes], STORY_CONFIG.text_dim)
    texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts)
    blocks = [s.num_blocks for s in plan]
    if blocks != trace["meta"]["blocks_per_scene_effective"]:
        want = trace["meta"]["blocks_per_scene_effective"]
        return {"status": "fail", "note": f"scene plan {blocks}, the fixture's {want}"}
    policy = EchoMemory(encode_text=_echo_encoder(STORY_CONFIG.text_dim))
    settings = RolloutSettings(num_frames=frames, height=480, width=832, seed=trace["meta"]["noise_seed"])
    placement: dict = {}

    def after_block(row: dict, state) -> None:
        if not placement and state is not None:
            placement.update(_placement(state, device))

    run = capped_rollout(model, plan, settings, policy, cap=1 if ctx["quick"] else None, until=until,
                         after_block=after_block)
    n = run.latents.shape[1] if run.latents.numel() else 0
    if not n:
        return {"status": "skipped", "note": f"no block within the time ({run.stopped})"}
    golden, scale = _golden(ECHO_FIXTURES / "story_latents.npz")
    out = _compare(run.latents, golden[:, :n], scale)
    out["compared"] = f"frames 0..{n - 1} of {frames}" + (f" (stopped: {run.stopped})" if run.stopped else "")
    notes = [f"{k}: {v}" for k, v in placement.items()]
    if run.result is not None:
        modes = [s["mode"] for s in run.result.switches]
        want = [s["mode"] for s in trace["switches"]]
        notes.append(f"switch modes {'match' if modes == want else f'DIFFER: {modes} vs {want}'}")
        entries = run.result.pool.entries if run.result.pool is not None else []
        if _cuda(device) and entries and entries[0].recall:
            k = entries[0].recall[0][0]
            pinned = k.device.type == "cpu" and bool(k.is_pinned())
            placement["scene pool frames pinned"] = pinned
            notes.append(f"scene pool frames pinned: {pinned}")
        if modes != want:
            out["status"] = "fail"
    if not _placement_ok(placement):
        out["status"] = "fail"
    out["placement"] = placement
    out["note"] = "; ".join(notes)
    return out


def check_low_precision(ctx: dict, until: float) -> dict:
    """The six-shot script at a small size: float32, bf16, and bf16 with fp8_e4m3 keys and values."""
    device, quick = ctx["device"], ctx["quick"]
    height, width = QUICK_SIZE if quick else SMALL_SIZE
    cfg = bench_rollout.TINY if quick else STORY_CONFIG
    scenes = parse_scene_script(bench_rollout.six_shot_script(SCRIPT))
    runs, placement = {}, {}
    for name, dtype, kv in (("float32", torch.float32, COMPUTE), ("bf16", torch.bfloat16, COMPUTE),
                            ("bf16 + fp8_e4m3 KV", torch.bfloat16, FP8_E4M3)):
        model = _story_model(device, dtype, cfg=cfg)
        embeddings = stand_in_text_embedding([s.prompt for s in scenes], cfg.text_dim)
        texts = [model.encode_text(embeddings[i:i + 1]) for i in range(len(scenes))]
        plan, frames = scenes_for_script(scenes, texts, fps=FPS)
        policy = EchoMemory(encode_text=_echo_encoder(cfg.text_dim), kv_storage=kv)
        settings = RolloutSettings(num_frames=frames, height=height, width=width, seed=0)

        def after_block(row: dict, state, kv=kv) -> None:
            if kv == FP8_E4M3 and not placement and state is not None:
                placement.update(_placement(state, device))
                if state.layers and hasattr(state.layers[0], "pool"):
                    placement["fp8 pool stored as uint8"] = state.layers[0].pool.k.dtype == torch.uint8

        run = capped_rollout(model, plan, settings, policy, until=until, after_block=after_block)
        runs[name] = run
        say(f"    {name}: {len(run.blocks)}/{run.planned} blocks in {run.seconds:.1f} s")
        del model
        _free(device)
        if run.stopped:
            break
    finite = all(bool(torch.isfinite(r.latents).all()) for r in runs.values() if r.latents.numel())
    notes = []
    reference = runs.get("float32")
    for name in ("bf16", "bf16 + fp8_e4m3 KV"):
        r = runs.get(name)
        if r is None or reference is None or not r.latents.numel():
            continue
        n = min(r.latents.shape[1], reference.latents.shape[1])
        delta = (r.latents[:, :n].double() - reference.latents[:, :n].double())
        rel = (delta.norm() / reference.latents[:, :n].double().norm()).item()
        notes.append(f"{name} vs float32: max |delta| {delta.abs().max().item():.3g}, relative RMS {rel:.3g}")
    if "bf16" in runs and "bf16 + fp8_e4m3 KV" in runs and runs["bf16 + fp8_e4m3 KV"].latents.numel():
        a, b = runs["bf16"].latents, runs["bf16 + fp8_e4m3 KV"].latents
        n = min(a.shape[1], b.shape[1])
        rel = ((b[:, :n].double() - a[:, :n].double()).norm() / a[:, :n].double().norm()).item()
        notes.append(f"fp8 KV vs bf16: relative RMS {rel:.3g}")
    notes += [f"{k}: {v}" for k, v in placement.items()]
    stopped = [f"{k} stopped ({r.stopped})" for k, r in runs.items() if r.stopped]
    complete = len(runs) == 3 and not stopped
    status = "pass" if finite and _placement_ok(placement) else "fail"
    if not complete and status == "pass":
        status = "partial"
    planned = next(iter(runs.values())).planned if runs else 0
    compared = f"{cfg.signature}, {width}x{height}, {planned} blocks of the six-shot script; outputs finite: {finite}"
    return {"status": status, "compared": compared, "placement": placement, "note": "; ".join(notes + stopped)}


CHECKS = (
    ("self-forcing, global 21-frame cache", check_sf_global, 0.20),
    ("self-forcing, rolling cache + sink", check_sf_rolling, 0.25),
    ("echo-forcing, phase-compression scores", check_echo_compression, 0.05),
    ("echo-forcing, five-scene story", check_echo_story, 0.30),
    ("bf16 and bf16 + fp8_e4m3 KV, six-shot script", check_low_precision, 0.20),
)
"""The correctness steps and their shares of the part's time (a step may use what earlier ones left)."""


def part_correctness(cfg: dict, rec: Recorder) -> None:
    device, until = torch.device(cfg["device"]), cfg["until"]
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 parity: no TF32 in matmuls or convolutions
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    cache: dict = {}

    def sf() -> SelfForcingFixture:
        if "sf" not in cache:
            cache["sf"] = SelfForcingFixture(device)
        return cache["sf"]

    ctx = {"device": device, "quick": cfg["quick"], "sf": sf}
    for i, (label, fn, share) in enumerate(CHECKS):
        left = until - time.time()
        rest = sum(s for _, _, s in CHECKS[i:])
        step_until = time.time() + left * share / rest if i + 1 < len(CHECKS) else until
        if left < 5:
            rec.write({"kind": "check", "label": label, "status": "skipped", "seconds": 0.0,
                       "note": f"time budget: {max(left, 0):.0f} s left"})
            say(f"[a] {label}: skipped (time budget)")
            continue
        guarded(rec, "check", label, lambda fn=fn, step_until=step_until: fn(ctx, step_until))
        if label.startswith("self-forcing, rolling"):
            cache.pop("sf", None)
        _free(device)


# ---- (b) figures at full shapes ------------------------------------------------------------------------------------

class Fp8Linear(nn.Module):
    """A Linear whose weight is kept as float8_e4m3fn with a float scale per output row, dequantised to the
    compute dtype at every call (how ComfyUI runs fp8 checkpoints: cast per layer at run time)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        wide = linear.weight.detach().float()
        scale = wide.abs().amax(dim=1, keepdim=True).div_(FP8_MAX).clamp_min_(torch.finfo(torch.float32).tiny)
        self.register_buffer("weight8", wide.div_(scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn))
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        self.compute_dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight8.float() * self.scale).to(self.compute_dtype)
        return F.linear(x, weight, self.bias)


def to_fp8_linears(dit: nn.Module, dtype: torch.dtype) -> int:
    """Swap every Linear of ``dit.blocks`` for an ``Fp8Linear`` (in place); the number swapped."""
    swapped = 0
    for parent in list(dit.blocks.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Fp8Linear(child, dtype))
                swapped += 1
    return swapped


class Models:
    """The benchmark model (random weights, seed 0), rebuilt only when the weight format changes."""

    def __init__(self, cfg: WanConfig, dtype: torch.dtype, device: torch.device, compile: bool = False):
        self.cfg, self.dtype, self.device, self.compile = cfg, dtype, device, compile
        self.kind: str | None = None
        self.model: CausalWan | None = None
        self.build_s = 0.0

    def get(self, kind: str) -> CausalWan:
        if kind == self.kind and self.model is not None:
            return self.model
        self.model, self.kind = None, None
        _free(self.device)
        started = time.perf_counter()
        sd = random_wan_state_dict(self.cfg, seed=0, dtype=self.dtype, device=self.device)
        dit = WanDiT.from_state_dict(sd, dtype=self.dtype, device=self.device)
        del sd
        if kind == "fp8":
            to_fp8_linears(dit, self.dtype)
            _free(self.device)
        # config given: module_config() reads it from the parameters, and fp8 weights are buffers
        self.model = CausalWan(dit, dtype=self.dtype, device=self.device, config=self.cfg, compile=self.compile)
        self.kind = kind
        self.build_s = time.perf_counter() - started
        say(f"    model built ({kind} weights, {self.cfg.signature}) in {self.build_s:.1f} s")
        return self.model


@dataclass
class Row:
    label: str
    preset: str = "echo-forcing"
    seconds: tuple[float, ...] = MINUTE
    kv: str = COMPUTE
    weights: str = "bf16"
    cap: int | None = None
    """Most blocks to run (None: the whole script)."""
    share: float = 1.0
    """Share of the part's time (0: only what the core runs leave)."""
    min_blocks: int = 2
    role: str = ""
    notes: list[str] = field(default_factory=list)


def bench_rows(quick: bool) -> list[Row]:
    """The runs of part (b): the core runs by priority, then the other presets (time permitting)."""
    small = 8 if quick else 16  # 16 blocks of the 60 s script: shot 1 (13 blocks, full cache, rolled) + a cut
    rows = [
        Row("echo-forcing, 60 s", cap=20 if quick else None, share=3.0, role="minute"),
        Row("self-forcing", preset="self-forcing", cap=small, role="baseline"),
        Row("echo-forcing, fp8_e4m3 KV", kv=FP8_E4M3, cap=small, role="fp8-kv"),
        Row("echo-forcing, 13 s script", seconds=SCRIPT, share=1.2, min_blocks=8, role="flat-short"),
        Row("echo-forcing, 26 s script (shots 2x)", seconds=SCRIPT_2X, share=2.0, min_blocks=8, role="flat-long"),
        Row("echo-forcing, fp8 weights", weights="fp8", cap=small, role="fp8-weights"),
    ]
    core = {r.preset for r in rows}
    rows += [Row(p, preset=p, cap=small, share=0.0, min_blocks=small, role="extra") for p in preset_names()
             if p not in core]
    return rows


def _steady(blocks: list[dict]) -> tuple[float | None, list[int]]:
    """Mean time of the last (up to) 3 blocks that attended the fullest cache of the run, and their indices."""
    if not blocks:
        return None, []
    fullest = max(b["slots"] for b in blocks)
    chosen = [b for b in blocks if b["slots"] == fullest][-3:]
    return sum(b["seconds"] for b in chosen) / len(chosen), [b["block"] for b in chosen]


def _summary(row: Row, run_blocks: list[dict], planned: int, stopped: str | None, total_s: float, extra: dict) -> dict:
    steady, which = _steady(run_blocks)
    video = VIDEO_FRAMES_PER_BLOCK * len(run_blocks)
    memory = [b["memory_mib"] for b in run_blocks if b["memory_mib"] is not None]
    out = {"label": row.label, "preset": row.preset, "kv_storage": row.kv, "weights": row.weights,
           "script_seconds": list(row.seconds), "role": row.role, "blocks_planned": planned,
           "blocks_done": len(run_blocks), "stopped": stopped,
           "first_block_s": run_blocks[0]["seconds"] if run_blocks else None,
           "steady_block_s": steady, "steady_blocks": which,
           "fps": VIDEO_FRAMES_PER_BLOCK / steady if steady else None,
           "overall_fps": video / total_s if total_s and run_blocks else None, "total_s": total_s,
           "peak_mib": max(memory) if memory else None, "blocks": run_blocks, **extra}
    if out["peak_mib"] is not None and out.get("planned_mib"):
        out["ratio"] = out["peak_mib"] / out["planned_mib"]
    return out


def bench_run(row: Row, models: Models, ctx: dict, until: float, rec: Recorder) -> dict:
    """One run of ``row`` with the measurements of part (b); a partial record is written after every block."""
    device, quick, dtype, cfg = ctx["device"], ctx["quick"], models.dtype, models.cfg
    height, width = QUICK_SIZE if quick else (480, 832)
    model = models.get(row.weights)
    scenes = parse_scene_script(bench_rollout.six_shot_script(row.seconds))
    encode = _echo_encoder(cfg.text_dim)
    embeddings = encode([s.prompt for s in scenes])
    texts = [PendingText(lambda i=i: model.encode_text(embeddings[i:i + 1])) for i in range(len(scenes))]
    plan, frames = scenes_for_script(scenes, texts, fps=FPS)
    echo = row.preset.startswith("echo")
    policy = make_policy(row.preset, **({"encode_text": encode, "kv_storage": row.kv} if echo else {}))
    settings = RolloutSettings(num_frames=frames, height=height, width=width, seed=0)
    wdtype = torch.float8_e4m3fn if row.weights == "fp8" else dtype
    need = memory_need(cfg, dtype, policy, token_grid(cfg.patch_size, settings), frames=frames,
                       frames_per_block=settings.frames_per_block, latent_size=settings.latent_size,
                       shots=len(scenes), weights=weight_bytes(cfg, wdtype))
    _free(device)
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) / MIB
    else:
        resident = _rss_mib()
    extra = {"planned_mib": need.device_bytes / MIB, "planned_parts_mib": {k: v / MIB for k, v in need.device.items()},
             "planned_kv_storage": need.kv_storage, "resident_before_mib": resident,
             "memory_kind": "peak GPU (max_memory_allocated)" if _cuda(device) else "RSS (process)",
             "size": [width, height], "latent_frames": frames}
    started = time.perf_counter()
    done: list[dict] = []

    def after_block(block: dict, state) -> None:
        done.append(block)
        if state is not None:
            extra["cache_mib"] = state.device_bytes / MIB
            extra["storage_mib"] = state.storage_bytes / MIB
        if block["block"] < 3 or (block["block"] + 1) % 10 == 0:  # a progress line, not all 80 at the GPU's pace
            say(f"    {row.label} block {block['block'] + 1:2d}/{settings.num_blocks} (shot {block['scene'] + 1}): "
                f"{block['seconds'] * 1000:8.1f} ms, {extra['memory_kind'].split(' (')[0]} "
                f"{block['memory_mib'] or 0:9.1f} MiB, cache {block['slots']} frames")
        partial = _summary(row, list(done), settings.num_blocks, "in progress", time.perf_counter() - started, extra)
        rec.write({"kind": "run", "final": False, **partial})

    run = capped_rollout(model, plan, settings, policy, cap=row.cap, until=until, after_block=after_block)
    if row.role == "flat-short" and ctx.get("scratch") and run.latents.numel():
        torch.save(run.latents, Path(ctx["scratch"]) / "eager_script_latents.pt")
    if ctx.get("compare_to") and Path(ctx["compare_to"]).exists() and run.latents.numel():
        eager = torch.load(ctx["compare_to"])
        n = min(eager.shape[1], run.latents.shape[1])
        extra["vs_eager_max_delta"] = (run.latents[:, :n] - eager[:, :n]).abs().max().item()
        extra["vs_eager_first_block_max_delta"] = (run.latents[:, :3] - eager[:, :3]).abs().max().item()
        extra["vs_eager_frames"] = n
    if run.result is not None:
        extra["cache_mib"] = run.result.cache_bytes / MIB
        extra["storage_mib"] = run.result.storage_bytes / MIB
    if row.weights == "fp8":
        extra["weights_method"] = ("Linear weights of the blocks as float8_e4m3fn + a float32 scale per output "
                                   "row, dequantised to bf16 per call; other parameters bf16")
    summary = _summary(row, run.blocks, run.planned, run.stopped, run.seconds, extra)
    summary["status"] = "ok"
    return summary


def part_bench(cfg: dict, rec: Recorder) -> None:
    device, quick, until = torch.device(cfg["device"]), cfg["quick"], cfg["until"]
    model_cfg = bench_rollout.TINY if quick else WAN21_T2V_1_3B
    models = Models(model_cfg, torch.bfloat16, device)
    ctx = {"device": device, "quick": quick, "scratch": cfg["scratch"]}
    extras = cfg.get("rows") == "extra"
    rows = [r for r in bench_rows(quick) if (r.role == "extra") == extras]
    estimate: float | None = cfg.get("estimate")  # seconds per steady block of the runs so far
    for i, row in enumerate(rows):
        left = until - time.time()
        core_left = sum(r.share for r in rows[i:])
        allot = left * row.share / core_left if row.share and core_left else left
        need = (estimate or 0) * row.min_blocks
        if left < 5 or (estimate is not None and allot < need):
            note = (f"skipped: time budget ({allot:.0f} s for this run, ~{need:.0f} s needed for {row.min_blocks} "
                    "blocks)")
            rec.write({"kind": "run", "final": True, "label": row.label, "role": row.role, "status": "skipped",
                       "note": note})
            say(f"[b] {row.label}: {note}")
            continue
        record = guarded(rec, "run", row.label,
                         lambda row=row, allot=allot: bench_run(row, models, ctx, time.time() + allot, rec),
                         extra={"final": True, "role": row.role})
        if record.get("steady_block_s"):
            estimate = max(estimate or 0.0, record["steady_block_s"])
    models.model = None
    _free(device)


def part_compile(cfg: dict, rec: Recorder) -> None:
    device, quick = torch.device(cfg["device"]), cfg["quick"]
    label = "echo-forcing, 13 s script, torch.compile"
    if device.type == "cpu" and cpu_compile_problem():
        rec.write({"kind": "run", "final": True, "label": label, "role": "compile", "status": "skipped",
                   "note": f"skipped: {cpu_compile_problem()}"})
        return
    model_cfg = bench_rollout.TINY if quick else WAN21_T2V_1_3B
    models = Models(model_cfg, torch.bfloat16, device, compile=True)
    compare = Path(cfg["scratch"]) / "eager_script_latents.pt"
    ctx = {"device": device, "quick": quick, "compare_to": str(compare)}
    row = Row(label, seconds=SCRIPT, cap=3 if quick else None, role="compile")
    guarded(rec, "run", label, lambda: bench_run(row, models, ctx, cfg["until"], rec),
            extra={"final": True, "role": "compile"})


# ---- worker plumbing ------------------------------------------------------------------------------------------------

class Recorder:
    """Appends JSON records to a file (one a line), so a killed part still leaves what it measured."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def guarded(rec: Recorder, kind: str, label: str, fn: Callable[[], dict], extra: dict | None = None) -> dict:
    """Run one step: its record (with its time), or an error record with the exception; never raises."""
    say(f"[{kind}] {label}")
    started = time.perf_counter()
    try:
        record = fn()
    except Exception as e:
        traceback.print_exc()
        sys.stdout.flush()
        record = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:500]}"}
    record = {"kind": kind, "label": label, **(extra or {}), **record, "seconds": time.perf_counter() - started}
    rec.write(record)
    detail = record.get("error") or record.get("note") or ""
    say(f"[{kind}] {label}: {record.get('status')} in {record['seconds']:.1f} s"
        + (f" (max |delta| {record['max_delta']:.3g})" if record.get("max_delta") is not None else "")
        + (f" - {detail[:300]}" if detail else ""))
    return record


PARTS = {"correctness": part_correctness, "bench": part_bench, "compile": part_compile, "presets": part_bench}


def worker(part: str, config: dict, out: Path) -> int:
    rec = Recorder(out)
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    started = time.perf_counter()
    try:
        PARTS[part](config, rec)
    except Exception as e:  # a failure outside the guarded steps (model build, CUDA init)
        traceback.print_exc()
        rec.write({"kind": "part-error", "label": part, "status": "error", "error": f"{type(e).__name__}: {e}"})
        return 1
    finally:
        say(f"[{part}] part done in {time.perf_counter() - started:.1f} s")
    return 0


def spawn(part: str, config: dict, kill_at: float, scratch: Path) -> tuple[list[dict], str | None]:
    """Run a part in a fresh process until ``kill_at`` (time.time()); its records and what went wrong (or None)."""
    out = scratch / f"{part}.jsonl"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--worker-config", json.dumps(config),
           "--worker-out", str(out)]
    problem = None
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # its own group: compile workers die with it
    try:
        code = proc.wait(timeout=max(kill_at - time.time(), 1.0))
        if code:
            problem = f"process exited with code {code}"
    except subprocess.TimeoutExpired:
        problem = "killed at the time budget"
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        try:  # the worker, or what it left behind (compile workers)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    records = []
    if out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records, problem


def _latest(records: list[dict], kind: str) -> list[dict]:
    """The last record of every label of ``kind``, in first-seen order (a run's final record replaces its partial
    ones; a run cut off by a kill keeps its last partial record)."""
    by: dict[str, dict] = {}
    for r in records:
        if r.get("kind") == kind:
            by[r["label"]] = {**by.get(r["label"], {}), **r}  # an error record keeps the blocks done before it
    return list(by.values())


# ---- report ---------------------------------------------------------------------------------------------------------

def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:,.0f} ms"


def _mem(mib: float | None) -> str:
    if mib is None:
        return "-"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:,.0f} MiB"


def check_table(checks: list[dict]) -> list[str]:
    lines = ["| check | result | max abs delta | bound | compared | notes | time |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        delta = "-" if c.get("max_delta") is None else f"{c['max_delta']:.3g}"
        bound = "-" if c.get("bound") is None else f"{c['bound']:g}"
        note = c.get("error") or c.get("note") or ""
        lines.append(f"| {c['label']} | {c.get('status')} | {delta} | {bound} | {c.get('compared', '-')} | "
                     f"{note.replace('|', '/')} | {c.get('seconds', 0):.1f} s |")
    return lines


def run_table(runs: list[dict], cuda: bool) -> list[str]:
    lines = ["| run | KV storage | weights | blocks done / planned | first block | steady block (blocks) | "
             "video FPS | " + ("peak GPU memory" if cuda else "RSS (process)") + " | planner (device) | "
             "measured / planner | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("status") in ("skipped", "error") and not r.get("blocks_done"):
            why = r.get("error") or r.get("note") or ""
            why = why if why.startswith(r.get("status", "")) else f"{r.get('status')}: {why}"
            lines.append(f"| {r['label']} | - | - | - | - | - | - | - | - | - | {why.replace('|', '/')} |")
            continue
        which = ", ".join(str(b + 1) for b in r.get("steady_blocks", []))
        notes = []
        if r.get("stopped"):
            notes.append(f"stopped early: {r['stopped']}")
        if r.get("status") == "error":
            notes.append(f"error: {r.get('error')}")
        if r.get("vs_eager_max_delta") is not None:
            notes.append(f"vs eager: max abs delta {r['vs_eager_max_delta']:.3g} over {r['vs_eager_frames']} "
                         f"frames ({r['vs_eager_first_block_max_delta']:.3g} in block 1)")
        if r.get("weights_method"):
            notes.append(r["weights_method"])
        if r.get("cache_mib") is not None:
            notes.append(f"memory state {_mem(r['cache_mib'])} on device, {_mem(r.get('storage_mib'))} off")
        ratio = f"{r['ratio']:.2f}" if cuda and r.get("ratio") else "-"
        fps = f"{r['fps']:.2f}" if r.get("fps") else "-"
        lines.append(
            f"| {r['label']} | {r.get('kv_storage', '-')} | {r.get('weights', '-')} | {r.get('blocks_done', 0)} / "
            f"{r.get('blocks_planned', '-')} | {_ms(r.get('first_block_s'))} | {_ms(r.get('steady_block_s'))} "
            f"({which}) | {fps} | {_mem(r.get('peak_mib'))} | {_mem(r.get('planned_mib'))} | {ratio} | "
            f"{'; '.join(notes).replace('|', '/')} |")
    return lines


def derived(runs: list[dict], cuda: bool) -> list[str]:
    """The comparisons between runs (flatness, overhead, compile, fp8), as markdown bullets."""
    by = {r.get("role"): r for r in runs if r.get("blocks_done")}
    out = []
    short, long_ = by.get("flat-short"), by.get("flat-long")
    if short and long_ and short.get("peak_mib") and long_.get("peak_mib"):
        growth = long_["peak_mib"] / short["peak_mib"]
        cut = "" if not long_.get("stopped") else f" (the longer run stopped after {long_['blocks_done']} blocks)"
        out.append(f"- memory flat in length: peak of the script with shots twice as long ({long_['blocks_done']} "
                   f"blocks) / the script's ({short['blocks_done']} blocks) = {growth:.3f}{cut}"
                   + ("" if cuda else " (process RSS, includes the output latents in host memory)"))
    minute = by.get("minute")
    if minute and minute.get("blocks"):
        blocks = minute["blocks"]
        fullest = max(b["slots"] for b in blocks)
        first_full = next(b for b in blocks if b["slots"] == fullest)
        if first_full is not blocks[-1] and first_full["memory_mib"] and blocks[-1]["memory_mib"]:
            out.append(f"- echo-forcing, 60 s: memory after block {first_full['block'] + 1} (cache first full) "
                       f"{_mem(first_full['memory_mib'])}, after block {blocks[-1]['block'] + 1} "
                       f"{_mem(blocks[-1]['memory_mib'])} ({blocks[-1]['memory_mib'] / first_full['memory_mib']:.3f}x)")
        if cuda and minute.get("peak_mib"):
            whole = "" if not minute.get("stopped") else f" over the {minute['blocks_done']} blocks run"
            out.append(f"- echo-forcing 60 s six-shot peak GPU memory {_mem(minute['peak_mib'])}{whole} "
                       f"(target <= 12 GB: {'met' if minute['peak_mib'] * MIB <= 12e9 else 'missed'})")
    base = by.get("baseline")
    if minute and base and minute.get("steady_block_s") and base.get("steady_block_s"):
        out.append(f"- echo-forcing steady block {minute['steady_block_s'] / base['steady_block_s']:.3f}x "
                   f"self-forcing's")
    fp8 = by.get("fp8-kv")
    if fp8 and minute and fp8.get("peak_mib") and len(minute.get("blocks", [])) >= fp8["blocks_done"]:
        same = minute["blocks"][fp8["blocks_done"] - 1]["memory_mib"]
        if same:
            out.append(f"- fp8_e4m3 KV: peak {_mem(fp8['peak_mib'])} vs {_mem(same)} with compute KV over the same "
                       f"{fp8['blocks_done']} blocks ({fp8['peak_mib'] / same:.3f}x); steady block "
                       f"{_ms(fp8.get('steady_block_s'))} vs {_ms(minute.get('steady_block_s'))}")
    weights = by.get("fp8-weights")
    if weights and weights.get("planned_mib"):
        out.append(f"- fp8 weights: planner {_mem(weights['planned_mib'])} (every parameter at 1 byte); measured "
                   f"{_mem(weights.get('peak_mib'))} with the Linear weights of the blocks in fp8 "
                   f"(resident before the run {_mem(weights.get('resident_before_mib'))})")
    comp = by.get("compile")
    comparable = comp and short and comp.get("steady_block_s") and short.get("steady_block_s")
    if comparable and max(b["slots"] for b in comp["blocks"]) < max(b["slots"] for b in short["blocks"]):
        out.append(f"- torch.compile: the run stopped after {comp['blocks_done']} blocks, before its cache was as full "
                   f"as the eager run's: no steady time to compare (block times "
                   f"{', '.join(_ms(b['seconds']) for b in comp['blocks'])}, compiling included)")
    elif comparable:
        out.append(f"- torch.compile: steady block {_ms(comp['steady_block_s'])} vs eager "
                   f"{_ms(short['steady_block_s'])} ({short['steady_block_s'] / comp['steady_block_s']:.2f}x "
                   f"speed-up); first block (compiling) {_ms(comp.get('first_block_s'))}")
    return out


def report(results: dict) -> str:
    meta = results["meta"]
    cuda = meta["device"].startswith("cuda")
    lines = [
        f"Measured {meta['date']} at commit `{meta['commit']}` on {meta['hardware']}, torch {meta['torch']}"
        + (f" (CUDA {meta['cuda']})" if meta.get("cuda") else "") + f", Python {meta['python']}. "
        f"Command: `{meta['command']}`; budget {meta['budget_s']:.0f} s, took {meta['elapsed_s']:.0f} s.",
        "",
        "### (a) Correctness on the device (float32, TF32 off, vs the CPU fixtures of tests/)",
        "",
        *check_table(results["checks"]),
        "",
        f"### (b) Runs: {meta['model']}, bf16 random weights, {meta['size']}, 4 steps, six-shot scripts",
        "",
        "Steady block = mean of the last (up to) 3 blocks that attended the run's fullest cache (block numbers in "
        "brackets); video FPS = 12 frames / steady block. Planner = `memory_need(...).device_bytes` with the "
        "weights counted. " + ("Peak GPU memory = `torch.cuda.max_memory_allocated` over the run, weights "
                               "included (statistics reset before each run)." if cuda else
                               "On the CPU the memory column is the process's RSS (all runs share one process)."),
        "",
        *run_table(results["runs"], cuda),
        "",
        *(derived(results["runs"], cuda) or ["- no comparison could be made"]),
    ]
    if results["notes"]:
        lines += ["", "Notes:", "", *[f"- {n}" for n in results["notes"]]]
    return "\n".join(lines) + "\n"


# ---- main ------------------------------------------------------------------------------------------------------------

def _command(args: argparse.Namespace) -> str:
    parts = ["python bench/gpu_check.py"]
    if args.device != "cuda":
        parts.append(f"--device {args.device}")
    if args.quick:
        parts.append("--quick")
    if args.budget != DEFAULT_BUDGET:
        parts.append(f"--budget {args.budget:g}")
    if args.skip_compile:
        parts.append("--skip-compile")
    if args.presets != "all":
        parts.append(f"--presets {args.presets}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return worker(args.worker, json.loads(args.worker_config), Path(args.worker_out))
    started = time.time()
    final = started + args.budget
    device = torch.device(args.device)
    if _cuda(device) and not torch.cuda.is_available():
        say("--device cuda: no CUDA GPU is available here (use --device cpu --quick for a smoke run)")
        return 2
    if device.type == "cpu" and not args.quick:
        say("note: full 1.3B shapes on the CPU will mostly be cut short by the budget; --quick is the CPU smoke run")
    meta = {"date": datetime.date.today().isoformat(), "commit": commit(), "hardware": hardware(device),
            "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "command": _command(args), "budget_s": args.budget,
            "quick": args.quick, "model": (bench_rollout.TINY if args.quick else WAN21_T2V_1_3B).signature,
            "size": "x".join(map(str, (QUICK_SIZE if args.quick else (480, 832))[::-1]))}
    say(f"GPU check on {meta['hardware']}, torch {meta['torch']}, commit {meta['commit']}, budget {args.budget:.0f} s"
        + (" (quick)" if args.quick else ""))
    results: dict = {"meta": meta, "checks": [], "runs": [], "parts": {}, "notes": []}
    # CPU runs: half the cores, so a busy machine does not leave torch's threads spinning at their barriers (with
    # every core taken, another process's load makes each parallel region wait: blocks were 80x slower)
    threads = max(1, (os.cpu_count() or 2) // 2) if device.type == "cpu" else None
    if threads:
        meta["hardware"] = f"{platform.processor() or platform.machine()}, {threads} torch threads"
    compile_share = 0.0 if args.skip_compile else 0.25
    a_share = 0.35 if args.quick else 0.2
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        scratch = Path(tmp)
        # (a), the core runs of (b), the compiled run (it may use what the core runs left), the other presets
        plan = [("correctness", lambda: started + a_share * args.budget),
                ("bench", lambda: final - REPORT_RESERVE - compile_share * args.budget),
                ("compile", lambda: final - REPORT_RESERVE),
                ("presets", lambda: final - REPORT_RESERVE)]
        if args.skip_compile:
            plan.pop(2)
            results["notes"].append("torch.compile run skipped (--skip-compile)")
        if args.presets == "core":
            plan.pop()
        for part, until_of in plan:
            until = until_of()
            if until - time.time() < 15:
                results["notes"].append(f"part {part} skipped: {max(until - time.time(), 0):.0f} s left in the budget")
                say(f"== part {part}: skipped (time budget)")
                continue
            say(f"== part {part}: until +{until - started:.0f} s")
            steady = [r["steady_block_s"] for r in results["runs"] if r.get("steady_block_s") and r.get("role")
                      not in ("compile", "fp8-weights")]
            config = {"device": args.device, "quick": args.quick, "until": until, "scratch": str(scratch),
                      "rows": "extra" if part == "presets" else "core", "estimate": max(steady, default=None),
                      "threads": threads}
            part_started = time.time()
            records, problem = spawn(part, config, min(until + KILL_GRACE, final), scratch)
            results["parts"][part] = {"seconds": time.time() - part_started, "problem": problem}
            if problem:
                results["notes"].append(f"part {part}: {problem}; what it recorded before is kept")
            results["checks"] += _latest(records, "check")
            results["runs"] += _latest(records, "run")
            for r in records:
                if r.get("kind") == "part-error":
                    results["notes"].append(f"part {part} failed: {r['error']}")
    for r in results["runs"]:
        if r.get("final") is False:
            r["stopped"] = "the part's process ended during this run (killed or crashed); figures up to then"
        elif r.get("status") == "error" and r.get("stopped") == "in progress":
            r["stopped"] = "error during the run; figures up to then"
        if r.get("stopped") and r.get("role") == "minute":
            results["notes"].append(f"the 60 s run was cut at {r['blocks_done']} of {r['blocks_planned']} blocks "
                                    f"({r['stopped']})")
    meta["elapsed_s"] = time.time() - started
    text = report(results)
    say("")
    say(text)
    if args.markdown:
        write_section(args.markdown, SECTION, text)
        say(f"wrote section '{SECTION}' of {args.markdown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        say(f"wrote {args.json}")
    bad = [c["label"] for c in results["checks"] if c.get("status") in ("fail", "error")]
    bad += [r["label"] for r in results["runs"] if r.get("status") == "error"]
    bad += [f"part {p}" for p, v in results["parts"].items() if v["problem"] and "killed" not in v["problem"]]
    say(f"done in {meta['elapsed_s']:.0f} s: " + (f"FAILED: {', '.join(bad)}" if bad else "no failures"))
    return 1 if bad else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few blocks: a smoke run of every part")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for everything (default 450)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile run")
    parser.add_argument("--presets", choices=("all", "core"), default="all",
                        help="all: the other presets too when time is left (default); core: only the core runs")
    parser.add_argument("--markdown", type=Path, help=f"write the section '## {SECTION}' of this markdown file")
    parser.add_argument("--json", type=Path, help="dump the raw figures to this JSON file")
    parser.add_argument("--worker", choices=tuple(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
