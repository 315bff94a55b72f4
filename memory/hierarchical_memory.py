"""Hierarchical temporal memory: one layer's Echo-Forcing cache (SPEC §3.1-§3.5, §3.13).

A fixed budget of 21 frame slots holding pre-RoPE keys and values, laid out once full as

    slots 0..11  anchors     rolling replay of the scene's first 12 clean frames   (memory.rolling_anchors)
    slots 12..14 compressed  3 x 1560 history tokens chosen by phase scoring       (memory.phase_compression)
    slots 15..17 recent      the previous block
    slots 18..20 current     the block being denoised

and, at a scene switch, 1-3 slots of *old memory* in front of the new scene (memory.transitions), faded by
per-token weights (memory.decay) and dropped after a few blocks. Positions are relative (slot order,
memory.relative_rope).

Per forward call (official ``CausalWanSelfAttention.forward``), given the block's pre-RoPE q/k/v:
1. on the clean context pass (t = 0): feed the query calibration (first 21 slot-time frames of the scene)
   and append the clean keys/values to the candidate history;
2. on the first call of a block that does not fit: shift the anchors left by one block, insert the next
   anchor group, shift the previous block into the recent region, write the new block, and fill the
   compressed region; otherwise write the block at the append / overwrite position;
3. mirror the slots of the scene's first frames into the anchor pool;
4. answer the window ``slots [0, end)`` with slot positions, query positions and decay weights.

What is kept, against the official code (SPEC §5.1): the 21-frame working cache on the compute device;
the anchor pool (``pool + 3`` frames, not 21) and the candidate history (21 frames) on the storage device
(pinned CPU memory under a GPU) with only 46 floats per history token on the device for scoring; no
``k_raw``, no 12-frame recall-candidate buffer (only the 3 sampled frames, on the storage device), no
old-memory or select staging buffers on the device.
"""

from __future__ import annotations

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import EchoMemoryConfig, OldMemorySource
from .devices import to_storage
from .phase_compression import (
    CandidateHistory,
    PhaseCalibration,
    drift_gate,
    geometric_offsets,
    select_tokens,
    temporal_omega,
)
from .relative_rope import key_positions, query_positions
from .rolling_anchors import AnchorPool, anchor_group


class EchoLayerMemory:
    """One layer's hierarchical temporal memory; implements ``models.seam.LayerMemory``."""

    def __init__(self, config: EchoMemoryConfig, storage: torch.device | str | None = None):
        self.config = config
        self._storage = torch.device(storage) if storage is not None else None
        self.allocated = False
        # positions in frames (slots) of the working cache
        self.local_end = 0
        self.global_end = 0
        # scene timing (set by memory.transitions at a switch)
        self.scene_start = 0
        self.timing_offset = 0
        self.jump: int | None = None
        # scene collection (set by the coordinator around the context pass)
        self.collect = False
        self.q_sum: torch.Tensor | None = None
        self.q_count = 0.0
        self.recall_frames: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recorded_frames = 0
        # decay / eviction of old memory (memory.decay)
        self.decay_active = False
        self.decay_start = 0
        self.decay_count = 0
        self.weights_trivial = True
        """No weight differs from 1 (attention then skips the weighting); kept by memory.decay, no device read."""
        self.evict_steps = 0
        self.evict_start = 0
        self.evict_count = 0

    # ---- allocation ------------------------------------------------------------------------------------------

    def allocate(self, k: torch.Tensor, grid: tuple[int, int]) -> None:
        """Allocate every buffer for keys shaped like ``k`` ``[1, *, H, d]`` and a ``grid`` of tokens per frame."""
        cfg = self.config
        if k.shape[0] != 1:
            raise ValueError(f"the Echo-Forcing memory generates one video at a time (batch 1), got batch {k.shape[0]}")
        _, _, heads, head_dim = k.shape
        frame_tokens = grid[0] * grid[1]
        self.grid = tuple(grid)
        self.device, self.dtype = k.device, k.dtype
        self.storage = self._storage or (torch.device("cpu") if k.device.type == "cuda" else k.device)
        self.frame_tokens, self.heads, self.head_dim = frame_tokens, heads, head_dim
        slots = cfg.budget_frames * frame_tokens
        self.k = torch.zeros(1, slots, heads, head_dim, dtype=k.dtype, device=k.device)
        self.v = torch.zeros_like(self.k)
        self.weights = torch.ones(slots, dtype=torch.float32, device=k.device)
        self.decay_mask = torch.zeros(slots, dtype=torch.bool, device=k.device)
        self.decay_rates = torch.ones(slots, dtype=torch.float32, device=k.device)
        args = (frame_tokens, heads, head_dim, k.dtype, k.device, self.storage)
        self.pool = AnchorPool(cfg.anchor_pool_frames + cfg.old_memory_frames_max, *args)
        self.history = CandidateHistory(cfg.budget_frames, *args)
        self.calibration = PhaseCalibration(heads, head_dim, k.device)
        self.omega = temporal_omega(head_dim, k.device)
        self.offsets = geometric_offsets(cfg.budget_frames)
        self.q_sum = torch.zeros(heads, head_dim, dtype=torch.float32, device=k.device)
        self.allocated = True

    # ---- the per-call update -------------------------------------------------------------------------------

    def slot_time(self, call: BlockCall) -> int:
        """The block's first frame in scene-local slot time (official "PC frame index")."""
        return call.start_frame - self.scene_start + self.timing_offset

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: BlockCall) -> AttentionWindow:
        cfg = self.config
        p, f = call.frame_tokens, call.num_frames
        if not self.allocated:
            self.allocate(k, call.grid)
        slot_time = self.slot_time(call)
        slot_end = slot_time + f

        if self.collect:
            self._collect(q, k, v, p)
        if call.context_pass and cfg.compression:
            if not self.calibration.ready and slot_end <= cfg.budget_frames:
                self.calibration.add(q)
                if slot_end >= cfg.budget_frames:
                    self.calibration.finish()
                    self.history.summarize_all(self.calibration, cfg.amplitude_compensation)
            self.history.append(k, v, call.start_frame, self.calibration, cfg.amplitude_compensation)

        new_frames = call.end_frame - self.global_end
        if new_frames > 0 and self.local_end + f > cfg.budget_frames:
            end = self._roll(q, k, v, new_frames, slot_time, p, f)
        else:
            end = self.local_end + new_frames
            self._write(end - f, k, v)
        if slot_end <= cfg.budget_frames and call.context_pass:
            self.pool.write(end - f, k, v)
        self.local_end, self.global_end = end, call.end_frame

        weights = None if self.weights_trivial else self.weights[:end * p]
        return AttentionWindow(
            k=self.k[:, :end * p], v=self.v[:, :end * p],
            k_time=key_positions(end, cfg.budget_frames, self.jump, cfg.transition_frames),
            q_time=query_positions(slot_time, f, cfg.budget_frames, self.jump, cfg.transition_frames),
            weights=weights,
            # weighted tokens only ever move towards the front (rolls and drops shift slots left, writes reset
            # weights to 1), so the end of the decay span set at the switch bounds them
            weighted_tokens=None if weights is None else self.decay_start + self.decay_count,
        )

    def _slots(self, first: int, count: int) -> slice:
        return slice(first * self.frame_tokens, (first + count) * self.frame_tokens)

    def _write(self, first_slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        span = slice(first_slot * self.frame_tokens, first_slot * self.frame_tokens + k.shape[1])
        self.k[:, span] = k
        self.v[:, span] = v
        self._reset_weights(span)

    def _reset_weights(self, span: slice) -> None:
        self.weights[span] = 1.0
        self.decay_mask[span] = False
        self.decay_rates[span] = 1.0

    def _move(self, src_first: int, dst_first: int, count: int) -> None:
        """Move ``count`` slots (keys, values, weights, decay state) from ``src_first`` to ``dst_first``."""
        if count <= 0:
            return
        src, dst = self._slots(src_first, count), self._slots(dst_first, count)
        for t in (self.k, self.v):
            t[:, dst] = t[:, src].clone()
        for t in (self.weights, self.decay_mask, self.decay_rates):
            t[dst] = t[src].clone()

    def _roll(self, q, k, v, new_frames: int, slot_time: int, p: int, f: int) -> int:
        """The first call of a block that does not fit (SPEC §3.3 step 5)."""
        cfg = self.config
        evicted = f + self.local_end - cfg.budget_frames
        end = self.local_end + new_frames - evicted
        self._move(evicted, 0, max(0, cfg.anchor_frames - evicted))
        group = anchor_group(slot_time, cfg.anchor_pool_frames, cfg.budget_frames, f, cfg.anchor_order)
        anchor_blocks = cfg.anchor_frames // f
        if group is not None and anchor_blocks > 0:
            group_k, group_v = self.pool.group(group)
            self._write((anchor_blocks - 1) * f, group_k, group_v)
        tail = cfg.anchor_frames + cfg.compressed_frames
        self._move(tail + f, tail, cfg.recent_frames)
        self._write(end - f, k, v)
        if cfg.compressed_frames and cfg.compression and self.calibration.ready and self.history.size:
            self._compress(q, p)
        return end

    def _compress(self, q: torch.Tensor, p: int) -> None:
        """Fill the compressed region with the best-scoring history tokens, in time order (SPEC §3.4)."""
        cfg = self.config
        gate = 1.0
        if cfg.amplitude_compensation and cfg.drift_gate:
            gate = drift_gate(q, self.calibration, cfg.drift_gate_lambda)
        scores = self.history.scores(gate, self.omega, self.offsets, cfg.recent_frames)
        counts = self.history.chosen_counts() if cfg.reuse_cap > 0 else None
        chosen = select_tokens(scores, counts, cfg.compressed_frames * p, cfg.reuse_cap)
        if chosen.numel():
            k, v = self.history.take(chosen)
            self._write(cfg.anchor_frames, k, v)

    # ---- scene collection for the Scene Recall Frame (SPEC §3.6) -------------------------------------------

    def _collect(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int) -> None:
        cfg = self.config
        self.q_sum += q.detach().to(torch.float32).sum(dim=(0, 1))
        self.q_count += float(q.shape[0] * q.shape[1])
        for i in range(k.shape[1] // p):
            index = self.recorded_frames
            if index >= cfg.recall_storage_frames:
                break
            if index < cfg.recall_source_frames and index % cfg.recall_stride == 0:
                frame = self._slots(i, 1)
                self.recall_frames.append((to_storage(k[0, frame], self.storage),
                                           to_storage(v[0, frame], self.storage)))
            self.recorded_frames += 1

    def clear_scene_collection(self) -> None:
        if self.q_sum is not None:
            self.q_sum.zero_()
        self.q_count = 0.0
        self.recall_frames = []
        self.recorded_frames = 0
        self.collect = False

    # ---- reads used by the scene-level logic -------------------------------------------------------------------

    def block_frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``[P, H, d]`` of frame ``index`` of the block just written (after its context pass)."""
        first = self.local_end - self.config.frames_per_block + index
        span = self._slots(first, 1)
        return self.k[0, span], self.v[0, span]

    def drop_slots(self, first: int, count: int) -> int:
        """Delete ``count`` slots at ``first`` (official ``_drop_kv_span``): later slots, their weights and the
        anchor-pool mirror move left. Returns the number of frames dropped."""
        end = self.local_end
        count = max(0, min(count, end - first))
        if count == 0:
            return 0
        self._move(first + count, first, end - first - count)
        self.pool.drop(first, count, end)
        self._reset_weights(self._slots(end - count, count))
        self.local_end = end - count
        return count

    # ---- shot boundaries (memory.snapshot) ------------------------------------------------------------------

    _REBUILT = ("k", "v", "weights", "decay_mask", "decay_rates", "pool", "history", "calibration", "omega",
                "offsets", "q_sum", "recall_frames")
    """Fields ``allocate`` makes anew; at a shot boundary only the frames below are read from them."""

    def boundary_slots(self) -> list[int]:
        """The slots ``memory.transitions.enter_scene`` (and the RESINK source) can read at a shot's first
        block: slot 0 when a mode re-sinks it, and the last frames a smooth transition carries."""
        cfg = self.config
        recent = min(max(m.old_recent_frames for m in cfg.modes.values()), self.local_end)
        slots = list(range(self.local_end - recent, self.local_end))
        if self.local_end and any(m.old_memory_source is OldMemorySource.RESINK for m in cfg.modes.values()):
            slots = sorted({0, *slots})
        return slots

    def snapshot_fields(self) -> dict:
        """What a shot boundary needs: the plain fields plus the frames of ``boundary_slots`` (2 of 21 with
        the defaults); the rest of the cache, the anchor pool, the history and the calibration are reset by
        ``enter_scene`` before anything reads them. Only valid between two shots."""
        fields = {k: v for k, v in vars(self).items() if k not in self._REBUILT}
        if self.allocated:
            fields["boundary_frames"] = {slot: (self.k[:, self._slots(slot, 1)], self.v[:, self._slots(slot, 1)])
                                         for slot in self.boundary_slots()}
        return fields

    def restore_fields(self, fields: dict) -> None:
        frames = fields.pop("boundary_frames", None)
        self.__dict__.update(fields)
        if self.allocated:
            like = torch.empty(1, 0, self.heads, self.head_dim, dtype=self.dtype, device=self.device)
            self.allocate(like, self.grid)
            for slot, (k, v) in frames.items():
                self.k[:, self._slots(slot, 1)] = k
                self.v[:, self._slots(slot, 1)] = v
            self.recall_frames = []

    # ---- memory accounting ----------------------------------------------------------------------------------

    @property
    def device_bytes(self) -> int:
        """Persistent bytes on the compute device."""
        if not self.allocated:
            return 0
        tensors = (self.k, self.v, self.weights, self.decay_mask, self.decay_rates, self.q_sum)
        return (sum(t.numel() * t.element_size() for t in tensors) + self.history.device_bytes
                + self.calibration.nbytes)

    @property
    def storage_bytes(self) -> int:
        """Persistent bytes on the storage device (anchor pool, candidate history, recall candidates)."""
        if not self.allocated:
            return 0
        recall = sum(k.numel() * k.element_size() * 2 for k, _ in self.recall_frames)
        return self.pool.storage_bytes + self.history.storage_bytes + recall
