"""Echo-Forcing as a cache policy: the per-layer hierarchical memories plus the scene logic of the official
pipeline (SPEC §3.6-§3.11, §4.3; official ``CausalInferencePipeline.inference`` closures).

Per block (``pipeline.rollout`` calls the hooks): at a scene boundary, choose the carried old frame and the
RoPE jump and switch every layer (``memory.transitions``); during the clean pass of every block, collect
the scene's query statistics and recall candidates (only when some transition carries a recall frame);
after it: at the scene's first block estimate the decay rates and keep its first frame ("select"), at its
last block build its Scene Recall Frame into the scene pool; then decay and evict old memory.

Which old frame a transition carries (official defaults, old-memory source "compress"):
* smooth: the recall frame of the FIRST scene of the current run of smooth transitions (the "smooth
  anchor", reset by every hard cut or recall), else the newest recall frame;
* hard cut: the newest recall frame (the previous scene's);
* recall: the recall frame of the pool entry most similar to the new prompt (``memory.routing``), or the
  scene the user named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from .config import (
    DecayTarget,
    EchoMemoryConfig,
    JumpStrategy,
    MatchMethod,
    MatchScope,
    OldMemorySource,
    Transition,
)
from .decay import apply_decay, estimate_rates, evict_step
from .devices import to_device, to_storage
from .hierarchical_memory import EchoLayerMemory
from .recall_frames import recall_frame
from .routing import TextEncoder, auto_route, best, paper_recall_jump, prompt_features, rank, similarity_jump
from .scene_pool import LayerFrames, PoolEntry, PoolSignature, ScenePool
from .state import BlockReport, MemoryState, SceneInfo
from .transitions import enter_scene

CPU = torch.device("cpu")
"""Where the scene pool keeps its frames (saved with the pool, shared between runs)."""


class SceneMemoryError(ValueError):
    """A scene plan the memory cannot carry out (raised before any model call)."""


@dataclass(frozen=True)
class EchoMemory:
    """The Echo-Forcing cache policy: a config plus how to reach the text encoder and a pool to start from."""

    config: EchoMemoryConfig = field(default_factory=EchoMemoryConfig)
    encode_text: TextEncoder | None = None
    """Text encoder for 'Similar' recall matching (umT5 in ComfyUI); not needed with IDF matching."""
    pool: ScenePool | None = None
    """Scenes of earlier jobs that recalls may bring back."""
    storage: str | None = None
    """Where anchor pool and candidate history live: default CPU under a GPU, else the compute device."""

    def check_length(self, num_frames: int, frames_per_block: int) -> None:
        if frames_per_block != self.config.frames_per_block:
            raise SceneMemoryError(f"the Echo-Forcing memory needs {self.config.frames_per_block}-frame blocks, "
                                   f"got {frames_per_block}")

    def create(self, num_layers: int, scenes: Sequence[SceneInfo] | None = None) -> EchoMemoryState:
        return EchoMemoryState(self, num_layers, list(scenes or []))

    def check_scenes(self, scenes: Sequence[SceneInfo]) -> None:
        """Refuse a scene plan this memory cannot carry out (transitions, recall targets, a missing text
        encoder) before any model is loaded; the same checks run again when the rollout creates its state."""
        EchoMemoryState(self, 0, list(scenes), compute_features=False)


def layer_recall_frame(layer: EchoLayerMemory) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One layer's Scene Recall Frame of the running scene: fused on the compute device from the recorded
    candidates, returned in the layer's dtype on the CPU (where the scene pool keeps its frames)."""
    cfg = layer.config
    candidates = [(to_device(k, layer.device), to_device(v, layer.device)) for k, v in layer.recall_frames]
    made = recall_frame(candidates, layer.q_sum, layer.q_count, cfg.recall_fusion, cfg.recall_base_frame_weight)
    if made is None:
        return None
    return to_storage(made[0].to(layer.dtype), CPU), to_storage(made[1].to(layer.dtype), CPU)


class EchoMemoryState(MemoryState):
    def __init__(self, policy: EchoMemory, num_layers: int, scenes: list[SceneInfo], compute_features: bool = True):
        cfg = policy.config
        super().__init__([EchoLayerMemory(cfg, policy.storage) for _ in range(num_layers)])
        self.policy, self.config = policy, cfg
        self.scenes = scenes or [SceneInfo(prompt="", num_blocks=0)]
        self.entries = [s.entry for s in self.scenes]
        self.base_pool = policy.pool or ScenePool(max_size=cfg.pool_size)
        self._validate()
        # What each scene records for later switches follows from the config alone, not from the
        # transitions this script happens to use: the shots of a video then leave the same memory whatever
        # comes after them, so a later job can append shots (or change later ones) and reuse them.
        modes = list(cfg.modes.values())
        self.needs_recall_frames = any(m.use_old_memory and m.old_memory_source is OldMemorySource.COMPRESS
                                       for m in modes)
        self.keep_select = any(m.old_memory_source is OldMemorySource.SELECT or m.decay.target is
                               DecayTarget.OLD_RECENT for m in modes)
        self._scoped_features: dict[int, list] = {}
        self.features = self._features(compute_features)
        self.pool_entries: list[PoolEntry] = list(self.base_pool.entries)
        self.signature: PoolSignature | None = None  # this run's, from the layers at the first registration
        self.scene_select: LayerFrames | None = None  # first frame of the latest scene (per layer)
        self.smooth_select: LayerFrames | None = None
        self.smooth_recall: LayerFrames | None = None
        self.pending_smooth_select = True
        self.pending_smooth_recall = True
        self.scene_modes: list[Transition | None] = [None] * len(self.scenes)

    # ---- validation before any model call -------------------------------------------------------------------

    def _validate(self) -> None:
        for i, (scene, mode) in enumerate(zip(self.scenes, self.entries, strict=True)):
            if i == 0:
                continue
            if mode is None:
                raise SceneMemoryError(f"scene {i + 1} has no transition; choose smooth, hard cut, recall or auto")
            if mode is Transition.RECALL and not self.config.mode(mode).use_old_memory:
                continue
            if mode is Transition.RECALL:
                earlier = i - (1 if self.config.exclude_previous_scene else 0)
                if earlier <= 0 and not self.base_pool.recallable():
                    raise SceneMemoryError(
                        f"scene {i + 1} is a recall but there is no earlier scene to recall"
                        + (" other than the previous one" if self.config.exclude_previous_scene and i else "")
                        + "; make it a smooth transition or a hard cut, or load a scene pool")
            target = scene.recall_target
            if target is None:
                continue
            if mode not in (Transition.RECALL, Transition.AUTO):
                raise SceneMemoryError(f"scene {i + 1} names a recall target but is entered by {mode.value}")
            if isinstance(target, int):
                if not 0 <= target < i:
                    raise SceneMemoryError(f"scene {i + 1} recalls scene {target + 1}, which does not come before "
                                           f"it; name one of scenes 1..{i}")
            elif self._label_scene(target, i) is None and self.base_pool.find(target) is None:
                known = [s.label for s in self.scenes[:i] if s.label] + [e.label for e in self.base_pool.entries]
                raise SceneMemoryError(f"scene {i + 1} recalls {target!r}, which is neither an earlier scene's label "
                                       f"nor in the scene pool; known: {', '.join(known) or 'none'}")

    def _label_scene(self, label: str, before: int) -> int | None:
        for j in range(before - 1, -1, -1):
            if (self.scenes[j].label or "").lower() == label.lower():
                return j
        return None

    def _features(self, compute: bool = True) -> list[torch.Tensor]:
        """Routing features of the whole video's scenes, then of loaded pool entries (one document set; the
        official scope). Empty when no scene routes; with the "so-far" scope computed per switch instead."""
        self.routes = any(m in (Transition.RECALL, Transition.AUTO) for m in self.entries)
        if not self.routes:
            return []
        if self.config.match_method is MatchMethod.SIMILAR and self.policy.encode_text is None:
            raise SceneMemoryError("'Similar' recall matching needs a text encoder; connect one or choose IDF "
                                   "matching")
        if self.config.match_scope is MatchScope.SO_FAR or not compute:
            return []
        return self._document_features(len(self.scenes))

    def _document_features(self, scenes: int) -> list[torch.Tensor]:
        prompts = [s.prompt for s in self.scenes[:scenes]] + [e.prompt for e in self.base_pool.entries]
        try:
            return prompt_features(prompts, self.config.match_method, self.policy.encode_text)
        except ValueError as err:
            raise SceneMemoryError(str(err)) from None

    def features_at(self, scene: int) -> list[torch.Tensor | None]:
        """The routing features a decision at scene ``scene`` sees, indexed like the whole video's (this
        video's scenes, then the loaded pool's entries); with the "so-far" scope, computed over the scenes
        up to ``scene`` and the pool (later scenes are None). Empty when no scene routes."""
        if not self.routes:
            return []
        if self.config.match_scope is MatchScope.VIDEO:
            return self.features
        cached = self._scoped_features.get(scene)
        if cached is None:
            made = self._document_features(scene + 1)
            cached = made[:scene + 1] + [None] * (len(self.scenes) - scene - 1) + made[scene + 1:]
            self._scoped_features = {scene: cached}
        return cached

    # ---- hooks ----------------------------------------------------------------------------------------------

    def start_scene(self, scene: int, start_frame: int) -> dict:
        mode = self.entries[scene]
        route_jump = None
        target = self.scenes[scene].recall_target
        if mode == Transition.AUTO:
            route = auto_route(scene, self.features_at(scene)[:len(self.scenes)])
            mode, route_jump = route.mode, route.jump
            if target is None and route.target is not None:
                target = route.target
        cfg = self.config.mode(mode)
        frames, similarity, candidates, recalled = self._old_frames(mode, cfg, scene, target)
        if route_jump is not None:
            jump = route_jump
        elif cfg.rope_jump.strategy is JumpStrategy.SIMILARITY:
            jump = similarity_jump(0.0 if similarity is None else similarity, candidates,
                                   cfg.rope_jump.min_value, cfg.rope_jump.max_value)
        elif cfg.rope_jump.strategy is JumpStrategy.PAPER:
            jump = (paper_recall_jump(scene, recalled.scene) if recalled is not None and recalled.scene is not None
                    and not recalled.source else {Transition.SMOOTH: 0}.get(mode, 45))
        else:
            jump = cfg.rope_jump.value
        old_slots = 0
        for i, layer in enumerate(self.layers):
            old_slots = enter_scene(layer, mode, cfg, frames[i] if frames is not None else None, jump, start_frame)
        if mode is not Transition.SMOOTH:
            self.smooth_select = self.smooth_recall = None
            self.pending_smooth_select = self.pending_smooth_recall = True
        self.scene_modes[scene] = mode
        report = {"scene": scene, "mode": mode.value, "jump": jump, "old_slots": old_slots}
        if recalled is not None:
            report["recalled"] = recalled.label
            report["similarity"] = similarity
            report["candidates"] = [{"label": self._candidate_label(c.key), "similarity": c.similarity}
                                    for c in candidates]
        return report

    def begin_block(self, first_in_scene: bool) -> None:
        if not first_in_scene:
            for layer in self.layers:
                layer.jump = None

    def before_context_pass(self) -> None:
        if self.needs_recall_frames:
            for layer in self.layers:
                layer.collect = True

    def end_block(self, scene: int, first_in_scene: bool, last_in_scene: bool) -> BlockReport:
        if first_in_scene:
            mode = self.scene_modes[scene]
            if mode is not None:  # the previous scene's select is still the latest one here
                decay = self.config.mode(mode).decay
                for i, layer in enumerate(self.layers):
                    estimate_rates(layer, decay, self.scene_select[i][0] if self.scene_select else None)
            if self.keep_select or not self.needs_recall_frames:
                self.scene_select = tuple((to_storage(k, CPU), to_storage(v, CPU))
                                          for k, v in (layer.block_frame(0) for layer in self.layers))
                if self.pending_smooth_select:
                    self.smooth_select, self.pending_smooth_select = self.scene_select, False
            self._register(scene, select=self.scene_select if self.keep_select else None)
        if last_in_scene and self.needs_recall_frames:
            self._register_recall(scene)
        weights = self._old_weights()
        for layer in self.layers:
            layer.collect = False
            apply_decay(layer)
        dropped = max(evict_step(layer) for layer in self.layers)
        notes = {"old_weights": weights} if weights else {}
        if dropped:
            notes["old_slots_dropped"] = dropped
        return BlockReport(slots=self.layers[0].local_end, notes=notes)

    def result_pool(self) -> ScenePool:
        return self.base_pool.with_entries(self.pool_entries, self.signature)

    # ---- shot boundaries ------------------------------------------------------------------------------------

    _BOUNDARY = ("pool_entries", "signature", "scene_select", "smooth_select", "smooth_recall",
                 "pending_smooth_select", "pending_smooth_recall", "scene_modes")

    def boundary_fields(self) -> dict:
        return {name: getattr(self, name) for name in self._BOUNDARY}

    def resume_fields(self, fields: dict) -> None:
        """Take over what the shots so far decided. Their routing features are this plan's: features are
        computed over all prompts of a video (official), so a pool entry of an earlier shot gets the value a
        run of the whole new script would have given it."""
        for name in self._BOUNDARY:
            setattr(self, name, fields[name])
        done = fields["scene_modes"]  # modes of the shots so far; None after them
        self.scene_modes = [done[i] if i < len(done) else None for i in range(len(self.scenes))]
        self.pool_entries = [e if e.source or e.scene is None else
                             replace(e, feature=self.features_at(e.scene)[e.scene] if self.routes else None)
                             for e in self.pool_entries]

    # ---- scene pool -----------------------------------------------------------------------------------------

    def _pool_index(self, scene: int) -> int | None:
        for i, entry in enumerate(self.pool_entries):
            if entry.scene == scene and not entry.source:
                return i
        return None

    def _register(self, scene: int, select: LayerFrames | None = None, recall: LayerFrames | None = None) -> None:
        info = self.scenes[scene]
        index = self._pool_index(scene)
        if index is None:
            feature = self.features_at(scene)[scene] if self.routes else None
            entry = PoolEntry(info.label or f"scene {scene + 1}", info.prompt, recall, select, feature, scene)
            self.pool_entries.append(entry)
            self.pool_entries = self.pool_entries[-self.config.pool_size:]
        else:
            old = self.pool_entries[index]
            self.pool_entries[index] = PoolEntry(old.label, old.prompt, recall or old.recall, select or old.select,
                                                 old.feature, old.scene, old.source)
        if self.signature is None:
            layer = self.layers[0]
            self.signature = PoolSignature.of(len(self.layers), layer.heads, layer.head_dim, layer.dtype, layer.grid)
            if self.base_pool.signature is not None:  # a loaded pool, checked after the first block, before any recall
                self.base_pool.signature.require(self.signature, "the scene pool")

    def _register_recall(self, scene: int) -> None:
        frames = []
        for layer in self.layers:
            made = layer_recall_frame(layer)
            if made is None:
                raise SceneMemoryError(f"scene {scene + 1} recorded nothing to build its recall frame from")
            frames.append(made)
        recall = tuple(frames)
        self._register(scene, recall=recall)
        if self.pending_smooth_recall:
            self.smooth_recall, self.pending_smooth_recall = recall, False

    def _candidate_label(self, key: int) -> str:
        return self._recall_candidates()[key].label

    def _recall_candidates(self) -> list[PoolEntry]:
        return [e for e in self.pool_entries if e.recall is not None]

    # ---- old memory of a switch -----------------------------------------------------------------------------

    def _old_frames(self, mode: Transition, cfg, scene: int, target) -> tuple:
        """(per-layer old frame or None, similarity, ranked candidates, recalled entry)."""
        if not cfg.use_old_memory:
            return None, None, [], None
        source = cfg.old_memory_source
        if mode is Transition.RECALL:
            return self._recall(scene, source, target)
        if source is OldMemorySource.RESINK:
            return self._resink(), None, [], None
        if mode is Transition.SMOOTH:
            if source is OldMemorySource.COMPRESS:
                frames = self.smooth_recall or self._newest_recall() or self.smooth_select or self.scene_select
            else:
                frames = self.smooth_select or self.scene_select
        elif source is OldMemorySource.SELECT:
            frames = self.scene_select
        else:
            frames = self._newest_recall()
            if frames is None:
                raise SceneMemoryError(f"scene {scene + 1}: no recall frame of an earlier scene to carry")
        return frames, None, [], None

    def _newest_recall(self) -> LayerFrames | None:
        candidates = self._recall_candidates()
        return candidates[-1].recall if candidates else None

    def _resink(self) -> LayerFrames:
        out = []
        for layer in self.layers:
            p = layer.frame_tokens
            out.append((layer.k[0, :p].clone(), layer.v[0, :p].clone()))
        return tuple(out)

    def _recall(self, scene: int, source: OldMemorySource, target) -> tuple:
        kind = "select" if source is OldMemorySource.SELECT else "recall"
        pool = [e for e in self.pool_entries if getattr(e, kind) is not None]
        if self.config.exclude_previous_scene:
            pool = [e for e in pool if not (e.scene == scene - 1 and not e.source)]
        if not pool:
            raise SceneMemoryError(f"scene {scene + 1} is a recall but the scene pool holds no earlier scene")
        known = self.features_at(scene)
        candidates = rank(known[scene], [self._entry_feature(e, known) for e in pool])
        chosen = best(candidates)
        if target is not None:
            wanted = self._resolve_target(target, scene)
            matches = [c for c in candidates if pool[c.key] is wanted]
            if not matches:
                raise SceneMemoryError(f"scene {scene + 1}: the recall target {target!r} has no "
                                       f"{kind} frame in the pool")
            chosen = matches[0]
        entry = pool[chosen.key]
        return getattr(entry, kind), chosen.similarity, candidates, entry

    def _entry_feature(self, entry: PoolEntry, known: list[torch.Tensor | None]) -> torch.Tensor:
        if not entry.source and entry.scene is not None:
            return known[entry.scene]
        return known[len(self.scenes) + self.base_pool.entries.index(entry)]

    def _resolve_target(self, target, scene: int) -> PoolEntry | None:
        if isinstance(target, int):
            index = self._pool_index(target)
            return self.pool_entries[index] if index is not None else None
        local = self._label_scene(target, scene)
        if local is not None:
            index = self._pool_index(local)
            return self.pool_entries[index] if index is not None else None
        return self.base_pool.find(target)

    def _old_weights(self) -> list[float] | None:
        """Min and max decay weight of the old slots seen by this block (layer 0), if any."""
        layer = self.layers[0]
        if not layer.decay_active or layer.decay_count <= 0:
            return None
        span = layer.weights[layer.decay_start:layer.decay_start + layer.decay_count]
        return [round(float(span.min()), 6), round(float(span.max()), 6)]


