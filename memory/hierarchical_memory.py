"""Hierarchical temporal memory: one layer's Echo-Forcing cache.

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

Who changes what: the layer's cache slots, fill pointers and scene timing change only through its own
methods: ``update`` (every call), ``restart_scene`` (``memory.transitions.enter_scene`` at a switch),
``end_jump`` / ``evict_old`` / ``estimate_decay`` / ``record_clean_passes`` (``memory.echo_memory`` around
blocks). It owns its
helpers, each changed only by its own methods: the decay state (``memory.decay.OldMemoryDecay``, kept with
its tokens by every slot write, move and drop), the scene recorder (``memory.recall_frames.SceneRecorder``),
the anchor pool, the candidate history and the query calibration (``memory.rolling_anchors``,
``memory.phase_compression``).

What is kept, against the official code (docs/MEMORY.md): the 21-frame working cache on the compute device;
the anchor pool (``pool + 3`` frames, not 21) and the candidate history's 18 selectable frames (its 3 newest
are read from the recent region) on the storage device (pinned CPU memory under a GPU) with only 46 floats
per history token on the device for scoring; no
``k_raw``, no 12-frame recall-candidate buffer (the 3 sampled frames are read from the anchor pool), no
old-memory or select staging buffers on the device.
"""

from __future__ import annotations

import torch

from ..models.seam import AttentionWindow, BlockCall
from .config import DecayConfig, EchoMemoryConfig, OldMemorySource
from .decay import OldMemoryDecay
from .devices import to_device
from .kv_storage import COMPUTE, KVFormat
from .phase_compression import (
    CandidateHistory,
    PhaseCalibration,
    drift_gate,
    geometric_offsets,
    select_tokens,
    temporal_omega,
)
from .recall_frames import SceneRecorder
from .relative_rope import key_positions, query_positions
from .rolling_anchors import AnchorPool, anchor_group


class EchoLayerMemory:
    """One layer's hierarchical temporal memory; implements ``models.seam.LayerMemory``."""

    def __init__(self, config: EchoMemoryConfig, storage: torch.device | str | None = None, kv_storage: str = COMPUTE):
        self.config = config
        self._storage = torch.device(storage) if storage is not None else None
        self.kv_storage = kv_storage
        """How keys and values are kept (``memory.kv_storage``): the working cache, anchor pool, candidate
        history, recall candidates and shot-boundary frames all hold them in this format."""
        self.allocated = False
        # positions in frames (slots) of the working cache
        self.local_end = 0
        self.global_end = 0
        self.old_slots = 0  # slots at the front holding old memory carried from the previous scene
        # scene timing (set by restart_scene at a switch)
        self.scene_start = 0
        self.timing_offset = 0
        self.jump: int | None = None
        # owned helpers, made by allocate
        self.decay: OldMemoryDecay | None = None
        self.recorder: SceneRecorder | None = None
        self.recording = False  # the clean passes are recorded for the Scene Recall Frame (record_clean_passes)

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
        self.kv = KVFormat(self.kv_storage, k.dtype)
        self.k = self.kv.zeros((1, slots, heads, head_dim), k.device)
        self.v = self.kv.zeros((1, slots, heads, head_dim), k.device)
        self.decay = OldMemoryDecay(slots, k.device)
        args = (frame_tokens, heads, head_dim, self.kv, k.device, self.storage)
        self.pool = AnchorPool(cfg.anchor_pool_frames + cfg.old_memory_frames_max, *args)
        self.history = CandidateHistory(cfg.budget_frames, cfg.recent_frames, *args)
        self.calibration = PhaseCalibration(heads, head_dim, k.device)
        self.omega = temporal_omega(head_dim, k.device)
        self.offsets = geometric_offsets(cfg.budget_frames)
        self.recorder = SceneRecorder(cfg, heads, head_dim, self.kv, k.device, self.storage)
        if self.recording:  # the video's first call was a clean pass (a start latent)
            self.recorder.start()
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
        k, v = self.kv.encode(k), self.kv.encode(v)  # what every buffer keeps from here on

        if self.recorder.active:
            self.recorder.record(q, k, v, p)
        if call.context_pass and cfg.compression:
            recent = self._history_recent(self.local_end, self.global_end)
            if not self.calibration.ready and slot_end <= cfg.budget_frames:
                self.calibration.add(q)
                if slot_end >= cfg.budget_frames:
                    self.calibration.finish()
                    self.history.summarize_all(self.calibration, cfg.amplitude_compensation, recent)
            self.history.append(k, v, call.start_frame, self.calibration, cfg.amplitude_compensation, recent)

        new_frames = call.end_frame - self.global_end
        if new_frames > 0 and self.local_end + f > cfg.budget_frames:
            end = self._roll(q, k, v, new_frames, slot_time, p, f, call.end_frame)
        else:
            end = self.local_end + new_frames
            self._write(end - f, k, v)
        if slot_end <= cfg.budget_frames and call.context_pass:
            self.pool.write(end - f, k, v)
        self.local_end, self.global_end = end, call.end_frame

        weights, weighted_tokens = self.decay.window(end * p)
        return AttentionWindow(
            k=self.kv.decode(self.k[:, :end * p]), v=self.kv.decode(self.v[:, :end * p]),
            k_time=key_positions(end, cfg.budget_frames, self.jump, cfg.transition_frames),
            q_time=query_positions(slot_time, f, cfg.budget_frames, self.jump, cfg.transition_frames),
            weights=weights, weighted_tokens=weighted_tokens,
        )

    # ---- slot operations (the only writers of k, v and the fill pointers) ------------------------------------

    def _slots(self, first: int, count: int) -> slice:
        return slice(first * self.frame_tokens, (first + count) * self.frame_tokens)

    def _write(self, first_slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        span = slice(first_slot * self.frame_tokens, first_slot * self.frame_tokens + k.shape[1])
        self.k[:, span] = k
        self.v[:, span] = v
        self.decay.written(span)

    def _move(self, src_first: int, dst_first: int, count: int) -> None:
        """Move ``count`` slots (keys, values, weights, decay state) from ``src_first`` to ``dst_first``."""
        if count <= 0:
            return
        src, dst = self._slots(src_first, count), self._slots(dst_first, count)
        for t in (self.k, self.v):
            t[:, dst] = t[:, src].clone()
        self.decay.move(src, dst)

    def _history_recent(self, end: int, global_end: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The candidate history's newest frames (not stored by it) from the working cache, whose frames
        ``[..., end)`` are the absolute frames ``[..., global_end)``: the recent region holds them."""
        frames = self.history.pending_frames()
        if not frames:
            return None
        span = self._slots(end - global_end + frames.start, len(frames))
        return self.k[:, span], self.v[:, span]

    def _roll(self, q, k, v, new_frames: int, slot_time: int, p: int, f: int, global_end: int) -> int:
        """The first call of a block that does not fit (the official roll)."""
        cfg = self.config
        evicted = f + self.local_end - cfg.budget_frames
        end = self.local_end + new_frames - evicted
        self._move(evicted, 0, max(0, cfg.anchor_frames - evicted))
        self.old_slots = max(0, self.old_slots - evicted)  # the front slots leave first
        group = anchor_group(slot_time, cfg.anchor_pool_frames, cfg.budget_frames, f, cfg.anchor_order)
        anchor_blocks = cfg.anchor_frames // f
        if group is not None and anchor_blocks > 0:
            group_k, group_v = self.pool.group(group)
            self._write((anchor_blocks - 1) * f, group_k, group_v)
        tail = cfg.anchor_frames + cfg.compressed_frames
        self._move(tail + f, tail, cfg.recent_frames)
        self._write(end - f, k, v)
        if cfg.compressed_frames and cfg.compression and self.calibration.ready and self.history.size:
            self._compress(q, p, end, global_end)
        return end

    def _compress(self, q: torch.Tensor, p: int, end: int, global_end: int) -> None:
        """Fill the compressed region with the best-scoring history tokens, in time order
        (``memory.phase_compression``)."""
        cfg = self.config
        gate = 1.0
        if cfg.amplitude_compensation and cfg.drift_gate:
            gate = drift_gate(q, self.calibration, cfg.drift_gate_lambda)
        scores = self.history.scores(gate, self.omega, self.offsets, cfg.recent_frames)
        counts = self.history.chosen_counts() if cfg.reuse_cap > 0 else None
        chosen = select_tokens(scores, counts, cfg.compressed_frames * p, cfg.reuse_cap)
        if chosen.numel():
            k, v = self.history.take(chosen, self._history_recent(end, global_end))
            self._write(cfg.anchor_frames, k, v)

    def drop_slots(self, first: int, count: int) -> int:
        """Delete ``count`` slots at ``first`` (official ``_drop_kv_span``): later slots, their weights and the
        anchor-pool mirror move left. Returns the number of frames dropped."""
        end = self.local_end
        count = max(0, min(count, end - first))
        if count == 0:
            return 0
        self._move(first + count, first, end - first - count)
        self.pool.drop(first, count, end)
        self.decay.written(self._slots(end - count, count))
        self.local_end = end - count
        self.old_slots -= max(0, min(first + count, self.old_slots) - first)
        return count

    def restart_scene(self, old_frame: tuple[torch.Tensor, torch.Tensor] | None, recent: int, scene_start: int,
                      jump: int) -> int:
        """Start a new scene at absolute frame ``scene_start`` (what ``memory.transitions`` decided): ``old_frame``
        (``[P, H, d]`` keys and values in the compute dtype or the storage format, or None) goes to slot 0 and
        the ``recent`` last frames of the cache after it; nothing else of the old scene stays (history,
        calibration, anchor pool, decay and recording restart). Returns the old slots kept."""
        p = self.frame_tokens
        previous_end = self.local_end
        kept = 0
        if old_frame is not None:
            k, v = old_frame
            self.k[0, :p] = self.kv.stored(to_device(k, self.device))
            self.v[0, :p] = self.kv.stored(to_device(v, self.device))
            kept = 1
        if recent:
            src = slice((previous_end - recent) * p, previous_end * p)
            self.k[:, kept * p:(kept + recent) * p] = self.k[:, src].clone()
            self.v[:, kept * p:(kept + recent) * p] = self.v[:, src].clone()
            kept += recent
        self.local_end = self.old_slots = kept
        self.history.clear()
        self.calibration = PhaseCalibration(self.heads, self.head_dim, self.device)
        self.pool.start_scene(self.k[:, :kept * p], self.v[:, :kept * p])
        self.scene_start, self.timing_offset, self.jump = scene_start, kept, jump
        self.decay.reset()
        self.recorder.clear()
        return kept

    # ---- between blocks (memory.echo_memory) -------------------------------------------------------------------

    def end_jump(self) -> None:
        """From the scene's second block on, positions are contiguous again."""
        self.jump = None

    def estimate_decay(self, decay: DecayConfig, select_k: torch.Tensor | None) -> None:
        """After the context pass of a scene's first block: the decay rates of the old slots (``memory.decay``)."""
        p = self.frame_tokens
        self.decay.estimate_rates(decay, self.block_frame(0)[0], self.kv.decode(self.k[:, :p]), p,
                                  self.config.frames_per_block * p, select_k)

    def evict_old(self) -> int:
        """End of a block: count the old memory's deletion down and delete its slots when due; returns the
        frames deleted."""
        due = self.decay.count_down()
        if due is None:
            return 0
        start, tokens = due
        p = self.frame_tokens
        dropped = self.drop_slots(start // p, -(-tokens // p))
        self.timing_offset = max(0, self.timing_offset - dropped)
        self.decay.finish_eviction()
        return dropped

    # ---- reads used by the scene-level logic -------------------------------------------------------------------

    @property
    def weights(self) -> torch.Tensor:
        """Per-token weights of the working cache (read only; ``memory.decay`` changes them)."""
        return self.decay.weights

    def block_frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``[P, H, d]`` (compute dtype) of frame ``index`` of the block just written (after its
        context pass)."""
        first = self.local_end - self.config.frames_per_block + index
        span = self._slots(first, 1)
        return self.kv.decode(self.k[0, span]), self.kv.decode(self.v[0, span])

    def record_clean_passes(self, on: bool) -> None:
        """Start (or stop) recording the coming clean passes for the scene's recall frame; a layer not allocated
        yet starts its recorder when it is (``memory.echo_memory`` around every clean pass)."""
        self.recording = on
        if self.recorder is not None:
            if on:
                self.recorder.start()
            else:
                self.recorder.stop()

    def recall_frame(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This layer's Scene Recall Frame of the running scene (``memory.recall_frames``), or None."""
        return self.recorder.recall_frame(self.pool)

    def sink_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of slot 0's keys/values ``[P, H, d]``, in the storage format (what a re-sinking transition
        carries)."""
        p = self.frame_tokens
        return self.k[0, :p].clone(), self.v[0, :p].clone()

    def regions(self) -> dict[str, int]:
        """Frames of the working cache in each region: ``old_slots`` (old memory carried from the previous
        scene, at the front), then the scene's frames by slot index: ``anchor_slots`` (slots below
        ``anchor_frames``; the scene's first frames while the cache fills), ``compressed_slots`` (the next
        ``compressed_frames`` slots; plain frames until the first roll fills them with chosen tokens) and
        ``recent_slots`` (the rest: the latest blocks). They add up to ``local_end``."""
        cfg, end, old = self.config, self.local_end, min(self.old_slots, self.local_end)
        tail = cfg.anchor_frames + cfg.compressed_frames
        return {"anchor_slots": max(0, min(end, cfg.anchor_frames) - old),
                "compressed_slots": max(0, min(end, tail) - max(old, cfg.anchor_frames)),
                "recent_slots": max(0, end - max(old, tail)),
                "old_slots": old}

    # ---- shot boundaries (memory.snapshot) ------------------------------------------------------------------

    _REBUILT = ("k", "v", "kv", "decay", "pool", "history", "calibration", "omega", "offsets", "recorder")
    """Fields ``allocate`` makes anew; at a shot boundary only the frames below are read from them."""

    def boundary_slots(self) -> list[int]:
        """The slots ``restart_scene`` (and the RESINK source) can read at a shot's first block: slot 0 when a
        mode re-sinks it, and the last frames a smooth transition carries."""
        cfg = self.config
        recent = min(max(m.old_recent_frames for m in cfg.modes.values()), self.local_end)
        slots = list(range(self.local_end - recent, self.local_end))
        if self.local_end and any(m.old_memory_source is OldMemorySource.RESINK for m in cfg.modes.values()):
            slots = sorted({0, *slots})
        return slots

    def snapshot_fields(self) -> dict:
        """What a shot boundary needs: the plain fields plus the frames of ``boundary_slots`` (2 of 21 with
        the defaults); the rest of the cache, the decay state, the scene recording, the anchor pool, the history
        and the calibration are reset by ``restart_scene`` before anything reads them. Only valid between two
        shots."""
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

    def size_as_full(self) -> None:
        """Count every slot as filled: ``memory.footprint`` sizes the boundary of a full cache this way on meta
        tensors (never on a cache that runs)."""
        self.local_end = self.config.budget_frames

    # ---- memory accounting ----------------------------------------------------------------------------------

    @property
    def device_bytes(self) -> int:
        """Persistent bytes on the compute device."""
        if not self.allocated:
            return 0
        tensors = (self.k, self.v)
        return (sum(t.numel() * t.element_size() for t in tensors) + self.decay.nbytes + self.recorder.device_bytes
                + self.history.device_bytes + self.calibration.nbytes)

    @property
    def storage_bytes(self) -> int:
        """Persistent bytes on the storage device (anchor pool, candidate history, recall candidates)."""
        if not self.allocated:
            return 0
        return self.pool.storage_bytes + self.history.storage_bytes + self.recorder.storage_bytes
