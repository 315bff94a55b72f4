"""Drift-gated phase compression: which history tokens fill the compressed region.

Once per block (on the rolling call), every layer scores the pre-RoPE keys of its last 21 clean frames
against a *calibrated query* and keeps the top 3 x 1560 tokens, in time order, in the compressed slots.

Calibration (``PhaseCalibration``): per head and complex channel ([H, d/2]) the mean query ``qbar`` and the
mean query modulus ``abar``, pooled over every token of the clean passes of the scene's first 21 frames.

Score of history token j (official ``_compute_pc_scores``), with ``z = qbar * conj(K_j)`` per head/channel:

    S_j = mean_h mean_o  sum_f |qbar||K| cos(arg z + omega_f * Delta_{j,o} * [f temporal])
          + g * mean_h sum_f (abar - |qbar|) |K|,        g = exp(-lambda (1 - cos(qrec, qbar)))

where Delta_{j,o} = (age of the token's frame) + o for the offsets o in {1, 2, 4, 8, 16}, omega_f the
temporal RoPE frequencies (spatial channels are not rotated) and ``qrec`` the mean of the current block's
noisy (t = 1000) queries. The last 3 history frames (the recent region) are excluded; tokens already chosen
``reuse_cap`` times are not candidates.

Because |qbar||K| cos(arg z + theta) = Re z cos(theta) - Im z sin(theta), the score separates into a few
numbers per token that do not change while the token ages (``TokenSummary``: the head-mean of Re z and
Im z on the 22 temporal channels, of Re z on the spatial ones, and of the amplitude term) and a per-block
table of mean_o cos / sin of omega_f (age + o). So history keys need not stay on the GPU to be scored: 46
floats per token are kept instead of the 1536 key values. Same value as the official formula up to float32
rounding (the parity tests compare both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.rope import split_channels
from .devices import gather_to_device, to_device
from .kv_storage import KVFormat


def geometric_offsets(budget_frames: int) -> tuple[int, ...]:
    """Powers of two up to the cache budget in frames: (1, 2, 4, 8, 16) for 21 frames."""
    out, value = [], 1
    while value <= budget_frames:
        out.append(value)
        value *= 2
    return tuple(out) or (1,)


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` real (adjacent pairs) -> ``[..., d/2]`` complex, computed in float32."""
    x = x.to(torch.float32)
    return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())


def temporal_omega(head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """``omega`` of the temporal complex channels, float32 ``[ct]`` (= the RoPE frequencies 10000^(-i/ct))."""
    ct = split_channels(head_dim)[0]
    idx = torch.arange(ct, dtype=torch.float32, device=device)
    return 1.0 / torch.pow(10000.0, idx / float(ct))


class PhaseCalibration:
    """Mean query per head and complex channel, pooled over the clean passes of the scene's first frames."""

    def __init__(self, heads: int, head_dim: int, device: torch.device):
        shape = (heads, head_dim // 2)
        self.sum = torch.zeros(shape, dtype=torch.complex64, device=device)
        self.abs_sum = torch.zeros(shape, dtype=torch.float32, device=device)
        self.count = 0.0
        self.mean: torch.Tensor | None = None  # complex64 [H, d/2]
        self.abs_mean: torch.Tensor | None = None  # float32 [H, d/2]

    @property
    def ready(self) -> bool:
        return self.mean is not None

    def add(self, q: torch.Tensor) -> None:
        """Accumulate the pre-RoPE queries ``[B, L, H, d]`` of one clean pass."""
        qc = to_complex(q)
        self.sum += qc.sum(dim=(0, 1)).to(torch.complex64)
        self.abs_sum += qc.abs().sum(dim=(0, 1)).to(torch.float32)
        self.count += float(q.shape[0] * q.shape[1])

    def finish(self) -> None:
        denom = torch.tensor(max(self.count, 1.0), dtype=torch.float32, device=self.sum.device)
        self.mean = self.sum / denom
        self.abs_mean = self.abs_sum / denom

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.sum, self.abs_sum, self.mean, self.abs_mean)
                   if t is not None)


def drift_gate(q_recent: torch.Tensor, calibration: PhaseCalibration, lam: float) -> torch.Tensor:
    """``g = exp(-lambda (1 - cos))`` between the current block's mean query and ``qbar`` (a 0-dim tensor)."""
    recent = to_complex(q_recent).mean(dim=(0, 1)).to(torch.complex64)
    similarity = torch.nn.functional.cosine_similarity(
        torch.view_as_real(recent).flatten(), torch.view_as_real(calibration.mean).flatten(), dim=0, eps=1e-6,
    ).clamp(-1.0, 1.0)
    return torch.exp(-lam * (1.0 - similarity))


@dataclass(frozen=True)
class TokenSummary:
    """Per-token numbers from which the score at any age follows (46 floats per token at head dim 128)."""

    re_temporal: torch.Tensor  # [N, ct] head-mean Re z on the temporal channels
    im_temporal: torch.Tensor  # [N, ct] head-mean Im z on the temporal channels
    spatial: torch.Tensor  # [N] head-mean of sum_f Re z over the spatial channels
    amplitude: torch.Tensor  # [N] head-mean of sum_f (abar - |qbar|) |K|

    @staticmethod
    def width(head_dim: int) -> int:
        return 2 * split_channels(head_dim)[0] + 2

    def pack(self) -> torch.Tensor:
        return torch.cat([self.re_temporal, self.im_temporal, self.spatial[:, None], self.amplitude[:, None]], 1)

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> TokenSummary:
        ct = (packed.shape[-1] - 2) // 2
        return cls(packed[..., :ct], packed[..., ct:2 * ct], packed[..., 2 * ct], packed[..., 2 * ct + 1])


def summarize(keys: torch.Tensor, calibration: PhaseCalibration, amplitude_compensation: bool) -> torch.Tensor:
    """Packed ``TokenSummary`` ``[N, 46]`` float32 of pre-RoPE keys ``[N, H, d]``."""
    kc = to_complex(keys)  # [N, H, d/2]
    z = calibration.mean.unsqueeze(0) * torch.conj(kc)
    ct = split_channels(keys.shape[-1])[0]
    re, im = z.real, z.imag
    if amplitude_compensation:
        extra = ((calibration.abs_mean - calibration.mean.abs()).unsqueeze(0) * kc.abs()).sum(-1).mean(-1)
    else:
        extra = torch.zeros(keys.shape[0], dtype=torch.float32, device=keys.device)
    return TokenSummary(re[..., :ct].mean(1), im[..., :ct].mean(1), re[..., ct:].sum(-1).mean(-1), extra).pack()


def age_tables(ages: torch.Tensor, omega: torch.Tensor, offsets: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_o cos(omega (age + o))`` and ``mean_o sin(...)`` per distinct age, float32 ``[A, ct]``."""
    delta = ages.to(torch.float32)[:, None] + torch.tensor(offsets, dtype=torch.float32, device=ages.device)
    phase = (delta[:, :, None] * omega[None, None, :]).to(torch.float64)  # [A, O, ct], float32 product as official
    return torch.cos(phase).mean(1).to(torch.float32), torch.sin(phase).mean(1).to(torch.float32)


def score_tokens(summary: torch.Tensor, ages: torch.Tensor, gate: torch.Tensor | float, omega: torch.Tensor,
                 offsets: tuple[int, ...]) -> torch.Tensor:
    """Scores ``[N]`` of tokens with packed summaries ``[N, 46]`` whose frames are ``ages [N]`` frames old."""
    s = TokenSummary.unpack(summary)
    distinct, inverse = torch.unique(ages, return_inverse=True)
    cos_t, sin_t = age_tables(distinct, omega, offsets)
    temporal = (s.re_temporal * cos_t[inverse]).sum(-1) - (s.im_temporal * sin_t[inverse]).sum(-1)
    return temporal + s.spatial + gate * s.amplitude


def select_tokens(scores: torch.Tensor, counts: torch.Tensor | None, budget: int, reuse_cap: int) -> torch.Tensor:
    """Top-``budget`` token indices among those chosen fewer than ``reuse_cap`` times, ascending (time order)."""
    candidates = torch.arange(scores.numel(), device=scores.device)
    if counts is not None and reuse_cap > 0:
        valid = counts < reuse_cap
        scores, candidates = scores[valid], candidates[valid]
    k = min(budget, candidates.numel())
    if k <= 0:
        return candidates[:0]
    _, top = torch.topk(scores, k=k, dim=0)
    return torch.sort(candidates[top])[0]


class CandidateHistory:
    """The last ``capacity`` clean frames of a layer: the compression candidates (the official "history").

    Keys and values live on the storage device (pinned CPU memory when the model runs on a GPU); what
    scoring needs stays on the compute device: the packed ``TokenSummary`` of every token (once the
    calibration is ready) and how often each token was chosen. Frame metadata is a ring of ``capacity``
    slots, oldest first.

    The newest ``deferred`` frames are excluded from the selection (the recent region) and are still in the
    layer's working cache, so the storage holds only the ``capacity - deferred`` older frames: a frame's keys
    and values are stored when newer frames push it out of the deferred span. Until then they are read from
    the cache: ``append``, ``summarize_all`` and ``take`` get them as ``recent`` (the ``pending_frames()``,
    ``[1, n*P, H, d]`` in the storage format). Storage slot of absolute frame ``a``: ``a mod stored_capacity``
    (a scene's frames are consecutive).
    """

    def __init__(self, capacity: int, deferred: int, frame_tokens: int, heads: int, head_dim: int, kv: KVFormat,
                 device: torch.device, storage: torch.device):
        if not 0 <= deferred < capacity:
            raise ValueError(f"a history of {capacity} frames cannot defer {deferred}")
        self.capacity, self.deferred, self.frame_tokens, self.kv = capacity, deferred, frame_tokens, kv
        self.device, self.storage = device, storage
        self.stored_capacity = capacity - deferred
        pin = storage.type == "cpu" and device.type == "cuda"
        shape = (self.stored_capacity, frame_tokens, heads, head_dim)
        self.k = kv.zeros(shape, storage, pin)
        self.v = kv.zeros(shape, storage, pin)
        self.summary = torch.zeros(capacity, frame_tokens, TokenSummary.width(head_dim), device=device)
        self.summarized = [False] * capacity
        self.counts = torch.zeros(capacity, frame_tokens, dtype=torch.long, device=device)
        self.frames = [-1] * capacity  # absolute latent frame held by each slot
        self.start = 0
        self.size = 0
        self.pending = 0  # newest frames whose keys and values are not stored (still in the working cache)

    def clear(self) -> None:
        self.start, self.size, self.pending = 0, 0, 0
        self.summarized = [False] * self.capacity
        self.frames = [-1] * self.capacity

    def slots(self) -> list[int]:
        """Physical frame slots in time order, oldest first."""
        return [(self.start + i) % self.capacity for i in range(self.size)]

    def pending_frames(self) -> range:
        """Absolute frames whose keys and values the caller passes as ``recent`` (the newest ``pending``)."""
        newest = self.frames[(self.start + self.size - 1) % self.capacity] if self.size else 0
        return range(newest + 1 - self.pending, newest + 1)

    def _frame(self, slot: int, recent: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Stored-format keys ``[P, H, d]`` of the frame in metadata ``slot`` (storage device or ``recent``)."""
        frame, pending = self.frames[slot], self.pending_frames()
        if frame in pending:
            p = self.frame_tokens
            i = frame - pending.start
            return recent[0][0, i * p:(i + 1) * p]
        return self.k[frame % self.stored_capacity]

    def append(self, k: torch.Tensor, v: torch.Tensor, first_frame: int, calibration: PhaseCalibration,
               amplitude_compensation: bool, recent: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Add one block's clean frames (``[1, F*P, H, d]``, in the storage format, following the newest frame),
        dropping the oldest beyond the capacity; ``recent`` holds the ``pending_frames()``. Summaries are taken
        from the stored-format keys, the ones a chosen token brings back."""
        p = self.frame_tokens
        arriving = [(f, (recent[0][:, i * p:(i + 1) * p], recent[1][:, i * p:(i + 1) * p]))
                    for i, f in enumerate(self.pending_frames())] if self.pending else []
        for i in range(k.shape[1] // p):
            frame_k = k[0, i * p:(i + 1) * p]
            if self.size < self.capacity:
                slot = (self.start + self.size) % self.capacity
                self.size += 1
            else:
                slot = self.start
                self.start = (self.start + 1) % self.capacity
            self.frames[slot] = first_frame + i
            self.counts[slot].zero_()
            self.summarized[slot] = calibration.ready
            if calibration.ready:
                self.summary[slot] = summarize(self.kv.decode(frame_k), calibration, amplitude_compensation)
            arriving.append((first_frame + i, (k[:, i * p:(i + 1) * p], v[:, i * p:(i + 1) * p])))
        self.pending = min(self.deferred, self.size)
        keep = len(arriving) - self.pending  # the older ones leave the deferred span: stored now
        for frame, (frame_k, frame_v) in arriving[:max(0, keep)]:
            self.k[frame % self.stored_capacity].copy_(frame_k[0], non_blocking=True)
            self.v[frame % self.stored_capacity].copy_(frame_v[0], non_blocking=True)

    def summarize_all(self, calibration: PhaseCalibration, amplitude_compensation: bool,
                      recent: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Summaries of the frames stored before the calibration was ready (keys streamed frame by frame);
        ``recent`` holds the ``pending_frames()``."""
        for slot in self.slots():
            if not self.summarized[slot]:
                keys = self.kv.decode(to_device(self._frame(slot, recent), self.device))
                self.summary[slot] = summarize(keys, calibration, amplitude_compensation)
                self.summarized[slot] = True

    def scores(self, gate: torch.Tensor | float, omega: torch.Tensor, offsets: tuple[int, ...],
               excluded_recent: int) -> torch.Tensor:
        """Scores of every history token in time order ``[size * P]``; the newest frames get -inf."""
        slots = self.slots()
        index = torch.tensor(slots, device=self.device)
        newest = self.frames[slots[-1]]
        ages = torch.tensor([newest + 1 - self.frames[s] for s in slots], device=self.device)
        p = self.frame_tokens
        scores = score_tokens(self.summary[index].reshape(-1, self.summary.shape[-1]),
                              ages.repeat_interleave(p), gate, omega, offsets)
        recent = min(excluded_recent, self.size) * p
        if recent:
            scores[scores.numel() - recent:] = -float("inf")
        return scores

    def take(self, indices: torch.Tensor, recent: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, n, H, d]`` (storage format) of time-ordered token indices, counted as chosen once
        more; ``recent`` holds the ``pending_frames()`` (chosen only when the older tokens run out)."""
        p = self.frame_tokens
        slots = self.slots()
        self.counts.view(-1)[torch.tensor(slots, device=indices.device)[indices // p] * p + indices % p] += 1
        stored = (self.size - self.pending) * p
        older, newer = indices[indices < stored], indices[indices >= stored] - stored
        frames = torch.tensor([self.frames[s] % self.stored_capacity for s in slots[:self.size - self.pending]],
                              dtype=torch.long, device=older.device)
        physical = frames[older // p] * p + older % p
        parts = []
        for source, tail in ((self.k, 0), (self.v, 1)):
            part = gather_to_device(source.view(-1, *source.shape[2:]), physical, self.device)
            if newer.numel():
                part = torch.cat([part, recent[tail][0].index_select(0, newer.to(recent[tail].device))])
            parts.append(part.unsqueeze(0))
        return parts[0], parts[1]

    def chosen_counts(self) -> torch.Tensor:
        """How often each token (time order) was chosen, ``[size * P]``."""
        return self.counts[torch.tensor(self.slots(), device=self.device)].reshape(-1)

    @property
    def storage_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @property
    def device_bytes(self) -> int:
        return self.summary.numel() * 4 + self.counts.numel() * self.counts.element_size()
