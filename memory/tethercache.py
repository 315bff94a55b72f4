"""TetherCache: a sink, a memory chosen by GRAB and edited by TAME, and a recent window ("TetherCache S3+M14+R4").

What it is: TetherCache (paper "TetherCache: Stabilizing Autoregressive Long-Form Video Generation with Gated
Recall and Trusted Alignment"; code my4f175/TetherCache @ 37c581a, Apache-2.0) is a training-free cache for
the Self-Forcing student. Reference: docs/BASELINES.md §6. Single prompt in the original; here a new prompt
only changes the text, as for Self-Forcing.

Layout (per layer, frames): a budget of K = ``budget_size`` = 21 slots split into

    [ sink S = 3 | memory M = 14 | recent R = 4 ]     (M = K - S - R)

* warm-up: blocks are appended until the K slots are full; at the context pass that fills them, the frames
  in the memory slots (frames 3..16) become the first memory members;
* later blocks, first call: the oldest ``F`` recent frames (F = frames per block, 3) are set aside as
  *pending*, the rest of recent moves to its front and the new block takes the last F slots; later calls
  of the block overwrite those slots;
* context pass (the clean call at t = 0), after the block's clean keys are written and before its own
  attention: **GRAB** (gated recall with attention-diversity balancing) picks the M memory frames among the
  current members and the pending frames, and **TAME** (trusted alignment via memory editing) edits the
  admitted pending frames; pending frames not admitted are dropped.

GRAB (``grab_scores``): for each candidate frame c, the *attention mass* is the mean over heads, query
tokens and c's key tokens of q.k / sqrt(d) (pre-RoPE queries of this context pass, pre-RoPE keys), turned
into a softmax over candidates (divided by ``score_temperature`` first). *Temporal diversity* uses the
candidates' absolute frame indices: with sigma = max(1, extent / 2) (extent = last - first + 1), similarity
exp(-|i - j| / sigma) (0 for a frame with itself), redundancy_c = max_j similarity_cj * mass_j, diversity_c =
max(0, 1 - redundancy_c). Score = mass + ``alpha`` * diversity (batch-averaged); the M best are kept (all of
them when there are no more than M candidates), in candidate order: kept members first, then the admitted
pending frames, so memory stays in time order.

TAME (``tame``): statistics per (head, channel) over batch and tokens (mean, population std floored at 1e-6)
of the *trusted* keys - the sink and the memory before this admission - and of the admitted frame;
x' = (1 - tau) * x + tau * (std_t * (x - mean_x) / std_x + mean_t), for keys and values alike, in float32.

Positions: keys are stored pre-RoPE and every call rotates the window at its slot positions 0 .. n-1, the
block's queries at its own slots (the last F), as the original; ``rope="unified"`` uses the unified
relative recipe instead (memory/unified_rope.py), which differs only when the budget is below 21 frames.

Where this differs from the TetherCache code (deliberately, same numbers):
* the attention mass is computed from the per-head mean query and each candidate's per-head mean key
  (the mean of a dot product is the dot product of the means), instead of materialising the
  [heads, queries, candidate tokens] logits - at 480x832 that tensor is 6 GB per layer in float32; the
  result agrees to float32 rounding (tests/test_parity_tethercache.py);
* pending frames wait in F spare slots behind the budget instead of a fresh copy per block;
* a budget that warm-up cannot fill exactly (K not a multiple of F), or a recent window shorter than a block,
  is refused before any work: the code would shift empty slots or write into the memory region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, check_int
from .frame_cache import CacheLengthError, FrameBuffer
from .state import BlockReport, MemoryState, SceneInfo
from .unified_rope import PRETRAINED_FRAMES, check_rope, unified_slot_times

TETHER_ROPE_MODES = ("slot", "unified")
STD_FLOOR = 1e-6
SPARE_FRAMES = 3
"""Spare slots for the pending frames when the buffer is sized before the first call (memory_footprint)."""


@dataclass(frozen=True)
class TetherCacheConfig:
    """TetherCache's budget, regions and the GRAB / TAME strengths (the paper's defaults)."""

    budget_size: int = 21
    """K: frames in the cache (= the attention window), sink + memory + recent."""
    sink_size: int = 3
    """S: the first frames of the video, never evicted."""
    recent_size: int = 4
    """R: the newest frames (the current block and the frames just before it), first in, first out."""
    alpha: float = 0.35
    """GRAB: weight of temporal diversity against attention mass in a candidate's score."""
    tau: float = 0.35
    """TAME: how far an admitted frame's statistics move towards the trusted pool's (0 = no edit)."""
    score_temperature: float = 1.0
    """GRAB: temperature of the softmax over the candidates' attention logits."""
    rope: str = "slot"
    """"slot": positions are the slot indices (the code); "unified": the unified relative RoPE recipe."""
    rope_frames: int = PRETRAINED_FRAMES
    """Unified RoPE: frames of the model's trained range (the newest id stops at rope_frames - 1)."""

    def __post_init__(self):
        check_int("budget_size", self.budget_size, 1, None)
        check_int("sink_size", self.sink_size, 0, self.budget_size - 1,
                  f" (below budget_size={self.budget_size})")
        check_int("recent_size", self.recent_size, 1, self.budget_size - self.sink_size,
                  f" (sink_size + recent_size must fit budget_size={self.budget_size})")
        for name in ("alpha", "tau", "score_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha!r}")
        if not 0 <= self.tau <= 1:
            raise ConfigError(f"tau must lie in 0..1, got {self.tau!r}")
        if self.score_temperature <= 0:
            raise ConfigError(f"score_temperature must be > 0, got {self.score_temperature!r}")
        check_rope(self.rope, TETHER_ROPE_MODES, self.rope_frames)

    @property
    def memory_size(self) -> int:
        """M = K - S - R: the frames GRAB manages."""
        return self.budget_size - self.sink_size - self.recent_size

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; the recent window must hold a block and warm-up must fill the budget exactly."""
        if self.recent_size < frames_per_block:
            raise CacheLengthError(
                f"TetherCache's recent window (recent_size={self.recent_size}) must hold a whole "
                f"{frames_per_block}-frame block; use recent_size >= {frames_per_block}")
        if self.budget_size % frames_per_block:
            raise CacheLengthError(
                f"TetherCache's budget_size={self.budget_size} is not a whole number of {frames_per_block}-frame "
                f"blocks, so warm-up would not fill it; use a multiple of {frames_per_block}")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> TetherCacheState:
        return TetherCacheState([TetherCacheLayer(self) for _ in range(num_layers)])


class TetherCacheState(MemoryState):
    """TetherCache has no scene logic (a new prompt only changes the text); it reports the memory."""

    def end_block(self, scene: int, first_in_scene: bool, last_in_scene: bool) -> BlockReport:
        layer = self.layers[0]
        notes = {}
        if layer.filled:
            notes["memory_frames"] = layer.memory_frames()
            notes["admitted"] = layer.last_admitted
        return BlockReport(slots=layer.local_end, notes=notes)


# ---- GRAB -------------------------------------------------------------------------------------------------

def attention_mass(q: torch.Tensor, frame_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over candidates of the mean attention logit of the queries on each candidate frame.

    ``q`` ``[B, N, H, d]`` pre-RoPE queries; ``frame_keys`` ``[B, C, H, d]`` each candidate frame's mean
    pre-RoPE key. Returns ``[B, C]`` float32.
    """
    q_mean = q.mean(dim=1, dtype=torch.float32)  # [B, H, d]
    logits = torch.einsum("bhd,bchd->bch", q_mean, frame_keys.float()).mean(dim=2) / math.sqrt(q.shape[-1])
    return torch.softmax(logits / max(temperature, 1e-6), dim=-1)


def temporal_diversity(frames: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """1 - (the largest mass-weighted time similarity to another candidate), at least 0. ``[B, C]``."""
    times = frames.float()
    distance = (times[None, :] - times[:, None]).abs()
    sigma = max(1.0, 0.5 * float(frames.max() - frames.min() + 1))
    similarity = torch.exp(-distance / sigma)
    similarity.fill_diagonal_(0.0)
    redundancy = (similarity[None] * mass[:, None, :]).amax(dim=-1)
    return (1.0 - redundancy).clamp_min(0.0)


def grab_scores(q: torch.Tensor, frame_keys: torch.Tensor, frames: torch.Tensor, alpha: float,
                temperature: float) -> torch.Tensor:
    """GRAB's score of every candidate, averaged over the batch: mass + alpha * diversity. ``[C]`` float32."""
    mass = attention_mass(q, frame_keys, temperature)
    return (mass + alpha * temporal_diversity(frames.to(mass.device), mass)).mean(dim=0)


def grab_keep(scores: torch.Tensor, memory_size: int) -> list[int]:
    """Indices of the kept candidates in candidate order: the ``memory_size`` best (all when no more)."""
    if scores.numel() <= memory_size:
        return list(range(scores.numel()))
    return sorted(torch.topk(scores, memory_size).indices.tolist())


# ---- TAME -------------------------------------------------------------------------------------------------

def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std (floored) per (head, channel) over batch and tokens of ``x`` ``[B, N, H, d]``."""
    x32 = x.float()
    return x32.mean(dim=(0, 1)), x32.std(dim=(0, 1), unbiased=False).clamp_min(STD_FLOOR)


def tame(x: torch.Tensor, trusted: tuple[torch.Tensor, torch.Tensor], tau: float) -> torch.Tensor:
    """Blend ``x`` towards the trusted statistics: (1 - tau) x + tau AdaIN(x; trusted), in float32."""
    mean_x, std_x = channel_stats(x)
    mean_t, std_t = trusted
    x32 = x.float()
    aligned = std_t * ((x32 - mean_x) / std_x) + mean_t
    return ((1.0 - tau) * x32 + tau * aligned).to(x.dtype)


# ---- one layer --------------------------------------------------------------------------------------------

class TetherCacheLayer(FrameBuffer):
    """One layer's cache: K budget slots ``[sink | memory | recent]`` plus F spare slots for pending frames."""

    def __init__(self, config: TetherCacheConfig):
        # F spare slots behind the budget hold the pending frames: 3 (the students' blocks) until the first
        # call says otherwise (it sizes the buffer before allocating it)
        super().__init__(config.budget_size + SPARE_FRAMES)
        self.config = config
        self.frame_src = torch.full((self.buffer_frames,), -1, dtype=torch.long)  # video frame of each slot
        self.filled = False  # the budget was full at a context pass (memory seeded)
        self.memory_used = 0  # memory slots holding a member
        self.pending = 0  # frames waiting in the spare slots (from slot budget_size on) for the next admission
        self.last_admitted = 0  # pending frames admitted at the last admission
        self.last_scores: torch.Tensor | None = None  # GRAB scores of the last admission (diagnostics, tests)

    def memory_frames(self) -> list[int]:
        s = self.config.sink_size
        return self.frame_src[s:s + self.memory_used].tolist()

    def _frames(self, tensor: torch.Tensor, first: int, count: int) -> torch.Tensor:
        p = self.frame_tokens
        return tensor[:, first * p:(first + count) * p]

    def _copy(self, dst: int, src: int, count: int) -> None:
        """Move ``count`` slots from ``src`` to ``dst`` (keys, values and frame indices)."""
        for buf in (self.k, self.v):
            self._frames(buf, dst, count).copy_(self._frames(buf, src, count).clone())
        self.frame_src[dst:dst + count] = self.frame_src[src:src + count].clone()

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        cfg, f = self.config, call.num_frames
        budget, sink, recent = cfg.budget_size, cfg.sink_size, cfg.recent_size
        if self.k is None:
            self.buffer_frames = budget + f
            self.frame_src = torch.full((self.buffer_frames,), -1, dtype=torch.long)
            self.allocate(k, call.grid)
        if call.end_frame > self.global_end:  # the first call of a block
            if self.local_end + f <= budget:  # warm-up: append
                end = self.local_end + f
            else:  # set the oldest F recent frames aside, move the rest of recent to its front
                if f > recent or self.local_end != budget:
                    raise CacheLengthError(f"a {f}-frame block does not fit TetherCache's recent window of "
                                           f"{recent} frames (budget {budget}, filled to {self.local_end})")
                first_recent = budget - recent
                self._copy(budget, first_recent, f)
                self.pending = f
                if recent > f:
                    self._copy(first_recent, first_recent + f, recent - f)
                end = budget
            self.local_end, self.global_end = end, call.end_frame
        end = self.local_end
        self._frames(self.k, end - f, f).copy_(k)
        self._frames(self.v, end - f, f).copy_(v)
        self.frame_src[end - f:end] = torch.arange(call.start_frame, call.end_frame)
        if call.context_pass:
            if not self.filled and end == budget:
                self.filled = True
                self.memory_used = cfg.memory_size
            if self.pending and self.filled and cfg.memory_size > 0:
                self._admit(q)
            self.pending = 0
        if cfg.rope == "unified":
            k_time = unified_slot_times(end, sink, self.global_end - 1, cfg.rope_frames)
        else:
            k_time = torch.arange(end)
        return self.window(k_time[end - f:end].clone(), k_time)

    def _admit(self, q: torch.Tensor) -> None:
        """GRAB over the memory members and the pending frames, TAME on the admitted ones."""
        cfg, p = self.config, self.frame_tokens
        sink, used, pending = cfg.sink_size, self.memory_used, self.pending
        b, _, h, d = self.k.shape
        spare = cfg.budget_size  # the first spare slot
        # mean key of every candidate frame: the members (slots sink..sink+used) then the pending frames
        members = self._frames(self.k, sink, used).reshape(b, used, p, h, d)
        waiting = self._frames(self.k, spare, pending).reshape(b, pending, p, h, d)
        frame_keys = torch.cat([members.mean(dim=2, dtype=torch.float32), waiting.mean(dim=2, dtype=torch.float32)],
                               dim=1)
        frames = torch.cat([self.frame_src[sink:sink + used], self.frame_src[spare:spare + pending]])
        if frames.numel() > cfg.memory_size:
            scores = grab_scores(q, frame_keys, frames, cfg.alpha, cfg.score_temperature)
            keep = grab_keep(scores, cfg.memory_size)
            self.last_scores = scores
        else:
            keep = list(range(frames.numel()))
            self.last_scores = None
        trusted = None
        if cfg.tau > 0 and sink + used > 0:  # the sink and the memory before this admission
            trusted = (channel_stats(self._frames(self.k, 0, sink + used)),
                       channel_stats(self._frames(self.v, 0, sink + used)))
        slot = sink
        for index in keep:  # ascending: a kept member only ever moves towards the front
            if index < used:
                if sink + index != slot:
                    self._copy(slot, sink + index, 1)
            else:
                src = spare + index - used
                for buf, stats in zip((self.k, self.v), trusted or (None, None), strict=True):
                    frame = self._frames(buf, src, 1)
                    self._frames(buf, slot, 1).copy_(tame(frame, stats, cfg.tau) if stats is not None else frame)
                self.frame_src[slot] = self.frame_src[src]
            slot += 1
        kept = slot - sink
        if kept < cfg.memory_size:  # fewer members than slots: the rest are empty
            self._frames(self.k, slot, cfg.memory_size - kept).zero_()
            self._frames(self.v, slot, cfg.memory_size - kept).zero_()
            self.frame_src[slot:sink + cfg.memory_size] = -1
        self.memory_used = kept
        self.last_admitted = sum(1 for index in keep if index >= used)
