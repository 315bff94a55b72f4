"""The cache-policy contract: what every preset of ``memory.presets`` builds, and the rules its memory keeps.

A **policy** (``CachePolicy``) is an immutable config object with two methods:

* ``check_length(num_frames, frames_per_block)`` refuses, before any work, a video the policy cannot hold
  (``CacheLengthError``, ``SceneMemoryError`` or ``ConfigError``, all ``ValueError``s with a message that
  says what to change);
* ``create(num_layers, scenes)`` returns one video's memory: a ``memory.state.MemoryState`` whose
  ``layers`` are one ``models.seam.LayerMemory`` per DiT layer (``update(q, k, v, call)`` returns the
  ``AttentionWindow`` the layer attends over) plus the scene hooks the rollout calls, in the order
  ``MemoryState`` documents: ``start_scene``, ``recache_frames``, ``begin_block``, ``before_context_pass``,
  ``end_block``, ``result_pool``; ``snapshot`` / ``resume`` (with ``boundary_fields`` /
  ``resume_fields``) at shot boundaries; ``device_bytes`` / ``storage_bytes`` for the memory need.

The **rules** every state keeps (tests/test_policy_contract.py checks each one for every preset):

1. *Bounded memory.* ``device_bytes`` and ``storage_bytes`` follow from the layout, not from the video's
   length: once the cache is full they stop growing, however many blocks and scenes follow.
2. *Inputs stay as they were.* ``update`` never changes the ``q``, ``k``, ``v`` it is handed (the DiT
   uses them after the call), ``create`` never changes the ``SceneInfo`` list, and a pool the policy starts
   from (a frozen ``ScenePool`` that ComfyUI's cache shares) is never changed: ``result_pool`` returns a
   new one.
3. *Resumable at shot boundaries.* A snapshot taken right before ``start_scene(k)``, resumed into a fresh
   state made by the same policy for the same plan, gives exactly (``torch.equal``) the windows, and so the
   video, of the uninterrupted run from there on.
4. *Reports.* ``start_scene`` returns a dict with at least ``"scene"`` (its index) and ``"mode"`` (a
   ``Transition`` value: how the memory entered the scene); ``end_block`` returns a ``BlockReport`` whose
   ``slots`` is an int >= 0 (frames in layer 0's working cache) and whose ``notes`` is a dict of plain
   values; they feed the progress events, the timeline and the run report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .state import MemoryState, SceneInfo


@runtime_checkable
class CachePolicy(Protocol):
    """What ``pipeline.rollout`` needs from a cache policy (see the module docstring for the rules)."""

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        """Raise a ``ValueError`` that says what to change when a ``num_frames``-frame video made of
        ``frames_per_block``-frame blocks cannot be generated with this policy."""
        ...

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> MemoryState:
        """A fresh memory for one video of ``scenes`` (None: one scene) on a ``num_layers``-layer model."""
        ...
