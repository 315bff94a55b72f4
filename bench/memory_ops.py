"""Microbenchmark of each Echo-Forcing memory operation of one layer at real shapes, against the attention.

    python bench/memory_ops.py                                 # CPU, float32
    python bench/memory_ops.py --device cuda --dtype bfloat16  # on a GPU
    python bench/memory_ops.py --markdown docs/BENCHMARKS.md   # also write the table there

One self-attention layer of Wan2.1-1.3B at 480x832: 12 heads x 128, a block of 3 latent frames (4,680 query
tokens) over the full 21-frame window (32,760 key tokens, 30x52 tokens per frame). A real ``EchoLayerMemory``
with the official defaults is first driven through 8 blocks of random pre-RoPE q/k/v (fixed seed; one
denoising call and the clean context pass per block), so the cache is full, the query calibration is
finished, the candidate history holds 21 summarised frames and the 3 recall candidates (scene frames 0, 4,
8) are recorded. Each operation is then timed as the pack performs it, with the pack's own functions on
that layer's own tensors (placement included: under a GPU the history, the anchor pool and the recall
candidates sit in pinned CPU memory). The one exception is the decay weighting of the window, which is
two inline lines of ``models/block_forward.py`` (mirrored here).

Every layer of the model repeats the same work, so the shares against the attention hold for the whole
model. Random tensors: the numbers describe the shipped code's cost, not picture quality. Never part of
the test suite; tests assert no timings.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from benchmark_report import commit, hardware, write_section

from echo_forcing.memory import EchoMemoryConfig, Transition
from echo_forcing.memory.decay import difference_rates
from echo_forcing.memory.hierarchical_memory import EchoLayerMemory
from echo_forcing.memory.phase_compression import PhaseCalibration, drift_gate, select_tokens, summarize
from echo_forcing.memory.relative_rope import key_positions, query_positions
from echo_forcing.memory.rolling_anchors import anchor_group
from echo_forcing.models import BlockCall
from echo_forcing.models.attention import attention
from echo_forcing.models.block_forward import weigh_window
from echo_forcing.models.rope import Rope3D

HEADS, HEAD_DIM = 12, 128  # Wan2.1-1.3B
GRID = (30, 52)  # tokens per latent frame at 480x832
FRAME_TOKENS = GRID[0] * GRID[1]
BLOCK_FRAMES = 3
CALLS_PER_BLOCK = 5  # 4 denoising calls + 1 clean context pass
WARM_BLOCKS = 8  # blocks fed before timing: the 21-frame cache is full and has rolled once
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Op:
    """One timed operation: a row of the table."""

    group: str
    name: str
    call: str
    """The pack call that is timed, and its sizes."""
    when: str
    """When the pack runs it."""
    runs: int
    """Runs in a block where it runs."""
    every_block: bool
    """Runs in every block once the cache is full (else only in some blocks of a scene)."""
    fn: Callable[[], object]
    part_of_above: bool = False
    """A part of the previous row, shown for where the time goes but not added to the totals."""
    ms: float = 0.0

    @property
    def label(self) -> str:
        if self.part_of_above:
            return f"↳ {self.name}"
        return self.name if self.group == "attention" else f"{self.group}: {self.name}"

    @property
    def per_block_ms(self) -> float:
        return self.ms * self.runs


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` runs after ``warmup`` runs (GPU synchronised)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


class Inputs:
    """Random pre-RoPE ``[1, tokens, 12, 128]`` tensors from one seeded generator (drawn on the CPU)."""

    def __init__(self, seed: int, device: torch.device, dtype: torch.dtype):
        self.gen = torch.Generator().manual_seed(seed)
        self.device, self.dtype = device, dtype

    def qkv(self, tokens: int = BLOCK_FRAMES * FRAME_TOKENS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (1, tokens, HEADS, HEAD_DIM)
        return tuple(torch.randn(shape, generator=self.gen).to(self.device, self.dtype) for _ in range(3))


def call(block: int, context_pass: bool) -> BlockCall:
    return BlockCall(block * BLOCK_FRAMES, BLOCK_FRAMES, 0.0 if context_pass else 1000.0, context_pass, GRID)


def filled_layer(inputs: Inputs) -> EchoLayerMemory:
    """An ``EchoLayerMemory`` after ``WARM_BLOCKS`` blocks of one scene, collecting recall statistics."""
    layer = EchoLayerMemory(EchoMemoryConfig())
    for block in range(WARM_BLOCKS):
        layer.update(*inputs.qkv(), call(block, context_pass=False))
        layer.recorder.start()  # EchoMemoryState.before_context_pass, when a transition carries a recall frame
        layer.update(*inputs.qkv(), call(block, context_pass=True))
        layer.recorder.stop()
    cfg = layer.config
    if not (layer.local_end == cfg.budget_frames and layer.calibration.ready
            and layer.history.size == cfg.budget_frames and len(layer.recorder.candidates) == 3):
        raise RuntimeError("the warm-up did not bring the layer into its steady state")
    return layer


def operations(layer: EchoLayerMemory, inputs: Inputs) -> list[Op]:
    """The operations of one layer, as ``CausalWan`` and ``EchoMemoryState`` call them."""
    cfg, device = layer.config, inputs.device
    p = FRAME_TOKENS
    rope = Rope3D(HEAD_DIM)  # what CausalWan builds
    last = WARM_BLOCKS - 1
    q, k, v = inputs.qkv()  # a repeat denoising call of the last block: the window is the full 21 frames
    window = layer.update(q, k, v, call(last, context_pass=False))
    keys = rope.apply(window.k, window.k_time, GRID).type_as(v)
    queries = rope.apply(q, window.q_time, GRID).type_as(v)
    n_keys, n_queries = window.k.shape[1], q.shape[1]
    q_clean, k_clean, v_clean = inputs.qkv()  # a clean context pass
    history, calibration = layer.history, layer.calibration
    frame = [layer.global_end]

    def append() -> None:  # the context pass's history append, at ever newer frames (ages stay consistent)
        history.append(k_clean, v_clean, frame[0], calibration, cfg.amplitude_compensation, (k_clean, v_clean))
        frame[0] += BLOCK_FRAMES

    unsummarized = history.slots()[:cfg.budget_frames - BLOCK_FRAMES]

    def summarize_all() -> None:  # the scene's calibration is finished: the 18 frames stored before it
        for slot in unsummarized:  # (the harness marks them unsummarised again, to time the same work each run)
            history.summarized[slot] = False
        history.summarize_all(calibration, cfg.amplitude_compensation, (k_clean, v_clean))

    def compress() -> None:
        history.counts.zero_()  # keep the candidates the same from run to run
        layer._compress(q, p, layer.local_end, frame[0])  # the newest history frames: the cache's last block

    gate = drift_gate(q, calibration, cfg.drift_gate_lambda)
    scores = history.scores(gate, layer.omega, layer.offsets, cfg.recent_frames)
    chosen = select_tokens(scores, None, cfg.compressed_frames * p, cfg.reuse_cap)
    fresh = PhaseCalibration(HEADS, HEAD_DIM, device)
    budget, slot_time = cfg.budget_frames, layer.slot_time(call(last, context_pass=False))
    comp, every, scene_first = "phase compression", "every call", "first 7 blocks of a scene (context pass)"
    group = anchor_group(slot_time, cfg.anchor_pool_frames, budget, BLOCK_FRAMES, cfg.anchor_order)
    return [
        Op("attention", "attention (reference)", f"`attention` (SDPA), {n_queries:,} queries x {n_keys:,} keys",
           every, CALLS_PER_BLOCK, True, lambda: attention(queries, keys, window.v)),
        Op("relative RoPE", "positions", "`key_positions` + `query_positions`", every,
           CALLS_PER_BLOCK, True,
           lambda: (key_positions(layer.local_end, budget, layer.jump, cfg.transition_frames),
                    query_positions(slot_time, BLOCK_FRAMES, budget, layer.jump, cfg.transition_frames))),
        Op("relative RoPE", "rotate the window's keys",
           f"`Rope3D.apply`, {n_keys:,} keys", every, CALLS_PER_BLOCK, True,
           lambda: rope.apply(window.k, window.k_time, GRID).type_as(v)),
        Op("relative RoPE", "rotation table", "`Rope3D.rotation`, complex64, kept between calls", every,
           CALLS_PER_BLOCK, True, lambda: rope.rotation(window.k_time, GRID, device), part_of_above=True),
        Op("relative RoPE", "for comparison: the same rotation in complex128 (the official code's)",
           f"`Rope3D.apply` on float64 keys, {n_keys:,} keys, cast back", every, CALLS_PER_BLOCK, True,
           lambda: rope.apply(window.k.double(), window.k_time, GRID).type_as(v), part_of_above=True),
        Op("relative RoPE", "rotate the queries", f"`Rope3D.apply`, {n_queries:,} queries", every,
           CALLS_PER_BLOCK, True, lambda: rope.apply(q, window.q_time, GRID).type_as(v)),
        Op("rolling anchors", "next anchor group", f"`AnchorPool.group`, {BLOCK_FRAMES} pool frames to the device",
           "every block (its rolling call)", 1, True, lambda: layer.pool.group(group)),
        Op(comp, "query calibration", f"`PhaseCalibration.add`, {n_queries:,} clean queries", scene_first, 1, False,
           lambda: fresh.add(q_clean)),
        Op(comp, "summaries of the frames before calibration",
           f"`CandidateHistory.summarize_all`, {len(unsummarized)} frames", "once per scene (7th block)", 1, False,
           summarize_all),
        Op(comp, "history append", f"`CandidateHistory.append`, {BLOCK_FRAMES} clean frames (copy + summaries)",
           "every block (context pass)", 1, True, append),
        Op(comp, "summaries", f"`summarize`, {p:,} keys (one frame)", "every block (context pass)",
           BLOCK_FRAMES, True, lambda: summarize(k_clean[0, :p], calibration, cfg.amplitude_compensation),
           part_of_above=True),
        Op(comp, "compressed tokens", f"`EchoLayerMemory._compress`: gate, scores, top {cfg.compressed_frames * p:,}, "
           "gather, write", "every block (its rolling call)", 1, True, compress),
        Op(comp, "drift gate", f"`drift_gate`, {n_queries:,} queries", "every block", 1, True,
           lambda: drift_gate(q, calibration, cfg.drift_gate_lambda), part_of_above=True),
        Op(comp, "scores",
           f"`CandidateHistory.scores` (`score_tokens`), {history.size} x {p:,} tokens", "every block", 1, True,
           lambda: history.scores(gate, layer.omega, layer.offsets, cfg.recent_frames), part_of_above=True),
        Op(comp, "selection", f"`chosen_counts` + `select_tokens`, top {cfg.compressed_frames * p:,}",
           "every block", 1, True,
           lambda: select_tokens(scores, history.chosen_counts(), cfg.compressed_frames * p, cfg.reuse_cap),
           part_of_above=True),
        Op(comp, "gather", f"`CandidateHistory.take`, {chosen.numel():,} tokens", "every block", 1,
           True, lambda: history.take(chosen, (k_clean, v_clean)), part_of_above=True),
        Op("recall frames", "scene statistics", f"`SceneRecorder.record`, {n_queries:,} clean queries",
           "every block (context pass) of a multi-shot video", 1, True,
           lambda: layer.recorder.record(q_clean, k_clean, v_clean, p)),
        Op("recall frames", "fusion",
           f"`SceneRecorder.recall_frame`, {len(layer.recorder.candidates)} candidate frames from the anchor pool, "
           "on the device, cast", "once per scene (last block)", 1, False, layer.recall_frame),
    ]


def decay_operations(layer: EchoLayerMemory, inputs: Inputs) -> list[Op]:
    """Decay of 3 old frames in slots 0..2 (what a smooth switch carries), rates per position (``diff``).

    Run last: it leaves the layer with non-trivial weights, as in the first blocks of a new scene.
    """
    decay = layer.config.mode(Transition.SMOOTH).decay
    p, last = FRAME_TOKENS, WARM_BLOCKS - 1
    layer.decay.begin(decay, 0, BLOCK_FRAMES * p, evict_tokens=BLOCK_FRAMES * p)
    layer.estimate_decay(decay, None)
    layer.decay.apply()
    q, k, v = inputs.qkv()
    window = layer.update(q, k, v, call(last, context_pass=False))
    if window.weights is None:
        raise RuntimeError("the decay left no weights on the window")
    dtype = inputs.dtype

    rotated = window.k.clone()  # stands for the fresh rotated keys CausalWan passes (scaled in place)

    def weigh() -> tuple[torch.Tensor, torch.Tensor]:  # as CausalWan calls it
        return weigh_window(rotated, window, dtype, keys_owned=True)

    when = "every call, in the 5 blocks after a smooth / recall switch (1 block after a hard cut)"
    new_first = layer.block_frame(0)[0][:p].unsqueeze(0)
    return [
        Op("decay", "difference rates", f"`difference_rates`, a frame pair of {p:,} positions",
           "once per scene (first block)", 1, False,
           lambda: difference_rates(new_first, layer.k[:, :p], decay.min_rate, decay.max_rate)),
        Op("decay", "weight update", f"`OldMemoryDecay.apply`, {BLOCK_FRAMES * p:,} old tokens",
           "5 blocks after a smooth / recall switch", 1, False, layer.decay.apply),
        Op("decay", "weighting the window", f"`weigh_window`: the {window.weighted_tokens:,} old tokens x weights "
           f"(keys in place), the rest of the {window.k.shape[1]:,} values copied (an upper bound: those blocks' "
           "windows hold 4 to 18 frames)", when,
           CALLS_PER_BLOCK, False, weigh),
    ]


def summary(ops: list[Op]) -> tuple[float, list[tuple[str, float, float]]]:
    """Attention per block and, per group, (group, every-block ms, occasional ms), parts excluded."""
    attention_block = next(op.per_block_ms for op in ops if op.group == "attention")
    groups = []
    for group in dict.fromkeys(op.group for op in ops if op.group != "attention"):
        rows = [op for op in ops if op.group == group and not op.part_of_above]
        groups.append((group, sum(op.per_block_ms for op in rows if op.every_block),
                       sum(op.per_block_ms for op in rows if not op.every_block)))
    return attention_block, groups


def _ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 1 else f"{value:.3f} ms"


def _share(value: float, reference: float) -> str:
    return f"{100 * value / reference:.2f} %"


def _cell(value: float, reference: float, prefix: str = "") -> str:
    """Two table cells: time and share, or dashes for an operation that does not run."""
    return f"{prefix}{_ms(value)} | {_share(value, reference)}" if value else "- | -"


def report(ops: list[Op], device: torch.device, dtype: torch.dtype, repeats: int, warmup: int,
           command: str) -> str:
    attention_block, groups = summary(ops)
    lines = [
        f"Measured {datetime.date.today().isoformat()} at commit `{commit()}` on {hardware(device)}, "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        f"Command: `{command}`. One layer at real shapes: 12 heads x 128, a block of 3 latent frames at 480x832 "
        f"({BLOCK_FRAMES * FRAME_TOKENS:,} queries) over the full 21-frame window ({21 * FRAME_TOKENS:,} keys), "
        f"{str(dtype).replace('torch.', '')}; median of {repeats} runs after {warmup} warm-up. The layer is a real "
        "`EchoLayerMemory` (official defaults) filled by 8 blocks of random pre-RoPE q/k/v (seed 0); each row "
        "times the pack's own call on its tensors. Per block = median x runs in a block where it runs (a block "
        "is 4 denoising calls + 1 clean context pass); share = per block / the block's 5 attention calls. "
        "Rows marked ↳ are parts of the row above (not added again). Every layer repeats this work, so the "
        "shares hold for the whole model.", "",
        "| operation | pack call | when | runs / block | median | per block | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in ops:
        name = f"&nbsp;&nbsp;{op.label}" if op.part_of_above else op.label
        lines.append(f"| {name} | {op.call} | {op.when} | {op.runs} | {_ms(op.ms)} | {_ms(op.per_block_ms)} | "
                     f"{_share(op.per_block_ms, attention_block)} |")
    lines += ["", "Per memory operation, against the block's 5 attention calls "
              f"({_ms(attention_block)}):", "",
              "| operation | every block (cache full) | share | extra, in the blocks where it runs | share |",
              "|---|---|---|---|---|"]
    for group, every, extra in groups:
        lines.append(f"| {group} | {_cell(every, attention_block)} | {_cell(extra, attention_block)} |")
    every = sum(g[1] for g in groups)
    extra = sum(g[2] for g in groups)
    lines.append(f"| all memory operations | {_cell(every, attention_block)} | "
                 f"{_cell(extra, attention_block, 'at most ')} |")
    largest = max((op for op in ops if op.group != "attention" and not op.part_of_above),
                  key=lambda op: op.per_block_ms)
    lines += ["", f"Largest memory operation per block: {largest.label}, "
              f"{_ms(largest.per_block_ms)} = {_share(largest.per_block_ms, attention_block)} of the attention. "
              "The window rotation is not specific to Echo-Forcing here: the pack's Self-Forcing cache also keeps "
              "pre-RoPE keys and the DiT rotates the whole window on every call."]
    return "\n".join(lines) + "\n"


def text_table(ops: list[Op]) -> str:
    attention_block, _ = summary(ops)
    out = [f"{'operation':<62} {'runs':>4} {'median ms':>11} {'per block ms':>13} {'share':>9}"]
    for op in ops:
        name = ("  " + op.label) if op.part_of_above else op.label
        out.append(f"{name:<62} {op.runs:>4} {op.ms:>11.3f} {op.per_block_ms:>13.3f} "
                   f"{100 * op.per_block_ms / attention_block:>8.2f}%")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="compute dtype of q/k/v and the cache (default float32; bfloat16 on a GPU)")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per operation (median; default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before them (default 1)")
    parser.add_argument("--markdown", type=Path, help="write the tables into this markdown file (section replaced)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.warmup < 0:
        print("--repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    print(f"one layer, {HEADS}x{HEAD_DIM} heads, {GRID[0]}x{GRID[1]} tokens per frame, on {hardware(device)}, "
          f"{dtype}; {args.repeats} runs after {args.warmup} warm-up", flush=True)
    with torch.inference_mode():
        inputs = Inputs(0, device, dtype)
        started = time.perf_counter()
        layer = filled_layer(inputs)
        print(f"layer filled in {time.perf_counter() - started:.1f} s", flush=True)
        ops = []
        for phase in (operations, decay_operations):  # decay last: it leaves the layer with weights
            ops += phase(layer, inputs)
            for op in ops:
                if not op.ms:
                    op.ms = median_ms(op.fn, args.repeats, args.warmup, device)
                    print(f"  {op.group}: {op.name}: {op.ms:.3f} ms", flush=True)
    command = "python bench/memory_ops.py" + "".join(
        f" --{name} {value}" for name, value, default in
        (("device", args.device, "cpu"), ("dtype", args.dtype, "float32"), ("repeats", args.repeats, 9),
         ("warmup", args.warmup, 1)) if value != default)
    print()
    print(text_table(ops))
    text = report(ops, device, dtype, args.repeats, args.warmup, command)
    print()
    print(text)
    if args.markdown:
        title = f"Memory operations, one layer at real shapes ({'GPU' if device.type == 'cuda' else 'CPU'}, " \
                f"{args.dtype})"
        write_section(args.markdown, title, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
