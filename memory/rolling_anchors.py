"""Bidirectional rolling anchors: which frames of the scene's anchor pool are replayed.

Once the cache is full, every block shifts the anchor region left by one 3-frame group and inserts a new
group at its end (slots 9..11 of 12). The inserted group comes from the *anchor pool*: the scene's first
``pool`` clean frames (12 in the official code, 18 in the paper).

* ``ping-pong`` (official code): the anchor region is a sliding window over the endless sequence
  ``0..N-1, N-1..0, 0..N-1, ...`` of pool frames, advanced by one group per block; a group on a descending
  leg is inserted in reverse frame order (tokens inside each frame keep their order). Period 2N/3 blocks
  (8 with the official 12-frame pool); tests/test_echo_memory.py holds the table verified on the official code.
* ``paper`` (eq. 1): update r inserts pool frames ``u_r .. u_r+2`` with ``u_r = (3r) mod N``, in reverse
  order on even updates; the start always advances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AnchorOrder
from .devices import gather_to_device
from .kv_storage import KVFormat


@dataclass(frozen=True)
class AnchorGroup:
    """Pool frames ``[left, right)`` to insert; ``reverse`` inserts them last-to-first."""

    left: int
    right: int
    reverse: bool

    def frames(self) -> list[int]:
        order = list(range(self.left, self.right))
        return order[::-1] if self.reverse else order


def anchor_group(pc_frame: int, pool_frames: int, budget_frames: int = 21, block_frames: int = 3,
                 order: AnchorOrder = AnchorOrder.PING_PONG) -> AnchorGroup | None:
    """The group inserted by the block whose first PC frame (scene-local slot time) is ``pc_frame``.

    None while the block does not roll the cache (``pc_frame < budget_frames``).
    """
    if pc_frame < budget_frames:
        return None
    if order is AnchorOrder.PAPER:
        update = (pc_frame - budget_frames) // block_frames
        left = (update * block_frames) % pool_frames
        return AnchorGroup(left, left + block_frames, reverse=update % 2 == 0)
    phase = pc_frame - (budget_frames - pool_frames)
    if (phase // pool_frames) % 2 == 1:
        right = pool_frames - phase % pool_frames
        return AnchorGroup(right - block_frames, right, reverse=True)
    left = phase % pool_frames
    return AnchorGroup(left, left + block_frames, reverse=False)


class AnchorPool:
    """The anchor pool of one layer: a mirror of the first cache slots as they were written (official
    ``k_original``/``v_original``), kept on the storage device (pinned CPU memory under a GPU).

    The official code mirrors all 21 slots; only the first ``pool_frames`` are ever read, and slots move at
    most by the number of old-memory frames dropped after a switch, so ``pool_frames + old_frames_max``
    slots are enough. Frames are kept in the layer's storage format (``memory.kv_storage``), as the cache holds
    them. ``lead`` counts the old-memory frames in front of the scene's first frame, so ``scene_frame`` finds
    a frame of the scene wherever drops have moved it (the Scene Recall Frame's candidates are read there).
    """

    def __init__(self, capacity: int, frame_tokens: int, heads: int, head_dim: int, kv: KVFormat,
                 device: torch.device, storage: torch.device):
        self.capacity, self.frame_tokens, self.device = capacity, frame_tokens, device
        pin = storage.type == "cpu" and device.type == "cuda"
        shape = (capacity, frame_tokens, heads, head_dim)
        self.k = kv.zeros(shape, storage, pin)
        self.v = kv.zeros(shape, storage, pin)
        self.lead = 0

    def clear(self) -> None:
        self.k.zero_()
        self.v.zero_()
        self.lead = 0

    def start_scene(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """A new scene: the pool holds only the old-memory frames ``[1, n*P, H, d]`` put in front of it."""
        self.clear()
        self.write(0, k, v)
        self.lead = k.shape[1] // self.frame_tokens

    def write(self, first_slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Mirror cache frames ``[1, n*P, H, d]`` written at slot ``first_slot`` (slots beyond capacity dropped)."""
        p = self.frame_tokens
        for i in range(k.shape[1] // p):
            slot = first_slot + i
            if 0 <= slot < self.capacity:
                self.k[slot].copy_(k[0, i * p:(i + 1) * p], non_blocking=True)
                self.v[slot].copy_(v[0, i * p:(i + 1) * p], non_blocking=True)

    def drop(self, first_slot: int, count: int, filled: int) -> None:
        """Remove ``count`` slots at ``first_slot`` of a mirror filled up to ``filled`` slots; the rest moves left."""
        end = min(filled, self.capacity)
        keep = max(0, end - (first_slot + count))
        if keep:
            self.k[first_slot:first_slot + keep] = self.k[first_slot + count:first_slot + count + keep].clone()
            self.v[first_slot:first_slot + keep] = self.v[first_slot + count:first_slot + count + keep].clone()
        self.k[first_slot + keep:end].zero_()
        self.v[first_slot + keep:end].zero_()
        self.lead -= max(0, min(first_slot + count, self.lead) - first_slot)

    def scene_frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[P, H, d]`` (storage format, storage device) of the scene's frame ``index``."""
        if not 0 <= index < self.capacity - self.lead:
            raise IndexError(f"frame {index} of the scene is not in an anchor pool of {self.capacity} slots")
        return self.k[self.lead + index], self.v[self.lead + index]

    def group(self, group: AnchorGroup) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, 3*P, H, d]`` of a group, frames in insertion order, on the compute device."""
        order = torch.tensor(group.frames())
        k = gather_to_device(self.k, order, self.device).reshape(1, -1, *self.k.shape[2:])
        v = gather_to_device(self.v, order, self.device).reshape(1, -1, *self.v.shape[2:])
        return k, v

    @property
    def storage_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
