"""Deep Forcing's KV cache: Deep Sink + Participative Compression ("Deep-Forcing S12+C9"), behind the seam.

What it is: Deep Forcing (paper "Deep Forcing: Training-Free Long Video Generation with Deep Sink and
Participative Compression"; official code release ea9961aa, docs/BASELINES.md §0) extends the Self-Forcing
student's 21-frame cache without training: a deep sink of ``sink_frames`` frames re-aligned in time, and a
token-level compression that keeps the cached tokens the recent queries attend to most. Reference:
docs/BASELINES.md §4 (this preset is the "S12+C9" reading of §4.7: S 12, budget 21, recent 4).

Layout (per layer): a buffer of 21 frames (tokens, really). While it fits, blocks append as in Self-Forcing.
On the first call of a block that does not fit (filled + 3 > 21), Participative Compression (§4.2) runs over
A = the filled buffer followed by the new block's (timestep-1000) keys:
* protected: the first ``sink_frames`` frames (sink) and the last ``recent_frames`` frames' tokens of A
  (recent_frames - 3 previous frames + the new block);
* candidates: everything between (earlier top-C tokens + frames that left the recent part); eligible are the
  candidates selected fewer than ``reuse_cap`` times;
* score of token j = <sum of the query window, k_j> over all heads and channels / (heads * sqrt(head_dim))
  ("sum"; "max" takes the max over window queries of each query's dot product), rotated queries and keys,
  computed in the cache dtype, cast to float32. The query window keeps the rotated queries of the last
  ``recent_frames`` frames' worth of tokens across calls (at a block's first call: the tail of the previous
  context pass + this call's queries; §4.1);
* kept = sink, then the C = (N_keep - sink - recent) * P best eligible tokens in their current order, then the
  recent tokens; N_keep = budget_frames. Kept tokens' selection counters go up by one; new tokens start at 0.
  With budget 21 every block from s = 21 on compresses, with budget 16 every second one.

Positions: queries, the current block and the recent frames sit at their ABSOLUTE frame index. Top-C tokens
keep their ORIGINAL temporal AND spatial rotation (the token was rotated once, at its own frame and its own
row/column, and is never rotated again; §4.3: the code's "top-C compensation" acts on an empty range). The
sink is re-aligned at every compression so that sink frame i sits at s - N_keep + i (S12/B21: s-21 .. s-10),
then stays there until the next compression. Because tokens of one "frame slot" come from many frames and
positions, keys are stored ROTATED (rotated with ``models.rope.Rope3D`` at their absolute positions when
written) and the window is returned with ``keys_rotated=True``. The sink is re-aligned in place: its
temporal channels are rotated by the position delta in float64 and cast back, as the Deep Forcing code does.
That keeps the cache at 21 frames (a pre-RoPE copy of the sink would cost 12 more frames per layer) and
follows the original's arithmetic, including its accumulated rounding in low precision (§4.3, §9.3).

Prompt switches: none in the code (§4.6); here a switch only changes the text (§7.2).

Where this is an interpretation or differs from the Deep Forcing code:
* When fewer than C candidates are eligible (possible only when many kept tokens reach ``reuse_cap`` at the
  same compression, i.e. more than the new candidates of one block), the shortfall is filled with the
  best-scoring ineligible candidates so the buffer stays a whole number of frames; §4 does not describe this
  case.
* Selection is done per batch element (the code runs batch 1).
* The rest of the buffer is not zeroed after packing (it is never attended: the window is the filled part).
* RoPE positions have no upper limit (the code's table has 1024 rows; §7.8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.rope import Rope3D, split_channels
from ..models.seam import AttentionWindow, BlockCall
from .config import ConfigError, check_int
from .frame_cache import SELF_FORCING_FRAMES, CacheLengthError, FrameBuffer, tensor_bytes
from .state import MemoryState, SceneInfo

FUSIONS = ("sum", "max")


@dataclass(frozen=True)
class DeepForcingCacheConfig:
    """Deep Sink + Participative Compression over Self-Forcing's 21-frame buffer."""

    sink_frames: int = 12
    budget_frames: int = 21
    """Frames kept after a compression (N_keep), at most the 21-frame buffer."""
    recent_frames: int = 4
    """Frames of protected recent keys AND of the query window used for scoring."""
    reuse_cap: int = 7
    """A token selected this many times is no longer eligible."""
    fusion: str = "sum"
    """How the window queries are combined into a score: "sum" (sum of queries) or "max" (max over queries)."""

    buffer_frames = SELF_FORCING_FRAMES

    def __post_init__(self):
        check_int("budget_frames", self.budget_frames, 1, self.buffer_frames,
                   f" (frames kept after a compression, at most the {self.buffer_frames}-frame buffer)")
        check_int("recent_frames", self.recent_frames, 1, self.budget_frames,
                   f" (the recent part must fit budget_frames={self.budget_frames})")
        check_int("sink_frames", self.sink_frames, 0, self.budget_frames - self.recent_frames,
                   f" (sink_frames + recent_frames must fit budget_frames={self.budget_frames})")
        check_int("reuse_cap", self.reuse_cap, 1, None)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")

    @property
    def topc_frames(self) -> int:
        """Frames' worth of tokens kept by the selection (C / P)."""
        return self.budget_frames - self.sink_frames - self.recent_frames

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Any length fits; the recent part must hold a whole block (then sink + block fit the buffer too)."""
        if self.recent_frames < frames_per_block:
            raise CacheLengthError(f"recent_frames must hold at least one {frames_per_block}-frame block (it "
                                   f"protects the new block), got {self.recent_frames}")

    def create(self, num_layers: int, scenes: list[SceneInfo] | None = None) -> MemoryState:
        """One cache per layer (one RoPE helper shared by all); a prompt switch only changes the text."""
        ropes: dict[int, Rope3D] = {}
        return MemoryState([DeepForcingLayerCache(self, ropes) for _ in range(num_layers)])


def temporal_shift(k: torch.Tensor, delta: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotate the temporal RoPE channels of rotated keys ``[B, L, H, D]`` by ``delta`` positions (float64)."""
    if delta == 0:
        return k
    b, length, heads, d = k.shape
    ct = split_channels(d)[0]
    inv = 1.0 / torch.pow(theta, torch.arange(0, 2 * ct, 2, dtype=torch.float64).div(2 * ct))
    angles = float(delta) * inv
    rot = torch.polar(torch.ones_like(angles), angles).to(k.device)
    xc = torch.view_as_complex(k.to(torch.float64).reshape(b, length, heads, d // 2, 2)).clone()
    xc[..., :ct] *= rot
    return torch.view_as_real(xc).flatten(3).type_as(k)


class DeepForcingLayerCache(FrameBuffer):
    """One layer's Deep Forcing buffer: rotated keys, values, and per token its selection count and position."""

    def __init__(self, config: DeepForcingCacheConfig, ropes: dict[int, Rope3D] | None = None):
        super().__init__(config.buffer_frames)  # keys stored ROTATED
        self.config = config
        self._ropes = ropes if ropes is not None else {}
        self.uses: torch.Tensor | None = None  # [B, 21 * P] times each token was selected
        self.token_time: torch.Tensor | None = None  # [B, 21 * P] temporal position each key is rotated at
        self.q_window: torch.Tensor | None = None  # [B, recent * P, H, D] rotated queries, oldest first
        self.q_filled = 0
        self.sink_offset = 0  # temporal position of sink frame 0
        self.compressions = 0

    def allocate(self, like: torch.Tensor, grid: tuple[int, int]) -> None:
        super().allocate(like, grid)
        b, _, h, d = like.shape
        p = self.frame_tokens
        tokens = self.buffer_frames * p
        self.uses = torch.zeros((b, tokens), dtype=torch.int32, device=like.device)
        self.token_time = torch.zeros((b, tokens), dtype=torch.int32, device=like.device)
        self.q_window = torch.zeros((b, self.config.recent_frames * p, h, d), dtype=like.dtype, device=like.device)

    def snapshot_fields(self) -> dict:
        """All fields but the RoPE tables (a cache of a deterministic function, kept by the fresh state)."""
        return {k: v for k, v in vars(self).items() if k != "_ropes"}

    def _rope(self, head_dim: int) -> Rope3D:
        if head_dim not in self._ropes:
            self._ropes[head_dim] = Rope3D(head_dim)
        return self._ropes[head_dim]

    def _push_queries(self, q: torch.Tensor) -> None:
        width, n = self.q_window.shape[1], q.shape[1]
        if n >= width:
            self.q_window.copy_(q[:, n - width:])
            self.q_filled = width
            return
        keep = min(self.q_filled, width - n)
        self.q_window[:, :keep] = self.q_window[:, self.q_filled - keep:self.q_filled].clone()
        self.q_window[:, keep:keep + n] = q
        self.q_filled = keep + n

    def scores(self, keys: torch.Tensor) -> torch.Tensor:
        """Participative score of every key ``[B, T, H, D]`` (rotated) against the query window, float32 ``[B, T]``."""
        heads, d = keys.shape[2], keys.shape[3]
        queries = self.q_window[:, :self.q_filled]
        if self.config.fusion == "sum":
            raw = torch.einsum("bthd,bhd->bt", keys, queries.sum(dim=1))
        else:
            raw = torch.cat([torch.einsum("bthd,bqhd->bqt", keys, chunk).amax(dim=1, keepdim=True)
                             for chunk in queries.split(1024, dim=1)], dim=1).amax(dim=1)
        return raw.float() / (heads * math.sqrt(d))

    def _compress(self, k_new: torch.Tensor, v_new: torch.Tensor, call: BlockCall) -> None:
        """Participative Compression over the buffer + the new block; leaves ``budget_frames`` frames."""
        cfg, p = self.config, call.frame_tokens
        old = self.local_end * p
        pos_new = torch.arange(call.start_frame, call.end_frame, dtype=torch.int32,
                               device=self.token_time.device).repeat_interleave(p)
        a_k = torch.cat([self.k[:, :old], k_new], dim=1)
        a_v = torch.cat([self.v[:, :old], v_new], dim=1)
        a_uses = torch.cat([self.uses[:, :old], torch.zeros_like(self.uses[:, :k_new.shape[1]])], dim=1)
        a_time = torch.cat([self.token_time[:, :old], pos_new.expand(a_k.shape[0], -1)], dim=1)
        total = a_k.shape[1]
        sink, recent, c = cfg.sink_frames * p, cfg.recent_frames * p, cfg.topc_frames * p
        cand = slice(sink, total - recent)
        score = self.scores(a_k[:, cand])
        eligible = a_uses[:, cand] < cfg.reuse_cap
        # best eligible first, then (only if too few are eligible) the best ineligible ones
        order = torch.argsort(score, dim=1, descending=True, stable=True)
        order = order.gather(1, torch.argsort((~eligible).gather(1, order).to(torch.int8), dim=1, stable=True))
        chosen = order[:, :c].sort(dim=1).values + sink  # current order
        b = a_k.shape[0]
        index = torch.cat([torch.arange(sink, device=a_k.device).expand(b, -1), chosen,
                           torch.arange(total - recent, total, device=a_k.device).expand(b, -1)], dim=1)
        kept = index.shape[1]
        tok = index[:, :, None, None].expand(-1, -1, a_k.shape[2], a_k.shape[3])
        self.k[:, :kept] = a_k.gather(1, tok)
        self.v[:, :kept] = a_v.gather(1, tok)
        uses = a_uses.gather(1, index)
        uses[:, sink:sink + c] += 1
        self.uses[:, :kept] = uses
        self.token_time[:, :kept] = a_time.gather(1, index)
        self.local_end = cfg.budget_frames
        # Deep Sink: re-align sink frame i to s - N_keep + i (temporal channels only)
        target = call.start_frame - cfg.budget_frames
        delta = target - self.sink_offset
        if sink and delta:
            self.k[:, :sink] = temporal_shift(self.k[:, :sink], delta, self._rope(a_k.shape[3]).theta)
            self.token_time[:, :sink] += delta
        self.sink_offset = target
        self.compressions += 1

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        p, f = call.frame_tokens, call.num_frames
        if self.k is None:
            self.allocate(k, call.grid)
        cap = self.config.buffer_frames
        rope = self._rope(k.shape[3])
        positions = torch.arange(call.start_frame, call.end_frame)
        k_rot = rope.apply(k, positions, call.grid)
        self._push_queries(rope.apply(q, positions, call.grid))
        new_frames = call.end_frame - self.global_end
        if new_frames > 0 and self.local_end + f > cap:
            self._compress(k_rot, v, call)
        else:
            end = self.local_end + new_frames  # append (first call) or overwrite (repeat call)
            if end - f < 0 or end > cap:
                raise CacheLengthError(f"block at frames {call.start_frame}..{call.end_frame - 1} does not fit the "
                                       f"{cap}-frame Deep Forcing buffer (filled to {self.local_end})")
            span = slice((end - f) * p, end * p)
            self.k[:, span] = k_rot
            self.v[:, span] = v
            self.uses[:, span] = 0
            self.token_time[:, span] = positions.to(torch.int32).repeat_interleave(p).to(self.token_time.device)
            self.local_end = end
        self.global_end = max(self.global_end, call.end_frame)
        return self.window(positions, None, keys_rotated=True)

    @property
    def device_bytes(self) -> int:
        return tensor_bytes(self.k, self.v, self.uses, self.token_time, self.q_window)

