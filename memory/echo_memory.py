"""Echo-Forcing as a cache policy: the per-layer hierarchical memories plus the scene logic of the official
pipeline (official ``CausalInferencePipeline.inference`` closures).

Per block (``pipeline.rollout`` calls the hooks): at a scene boundary, choose the carried old frame and the
RoPE jump and switch every layer (``memory.transitions``); during the clean pass of every block, record the
scene's query statistics and which frames are its recall candidates (only when some transition carries a
recall frame); after
it: at the scene's first block estimate the decay rates and keep its first frame ("select"), at its last
block build its Scene Recall Frame into the scene pool; then decay and evict old memory.

``EchoMemoryState`` only coordinates; each part of the scene-level state has its owner, which alone changes
it: the plan's routing features (``memory.routing.SceneFeatures``), the scene pool while the video runs
and where recall targets point (``memory.scene_pool.SceneRegistry``), the frames later switches may carry
(``memory.transitions.CarriedFrames``), and per layer everything else (``memory.hierarchical_memory``).
The state itself keeps only the mode each scene was entered by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import EchoMemoryConfig, JumpStrategy, ModeConfig, OldMemorySource, SceneMemoryError, Transition
from .devices import to_storage
from .hierarchical_memory import EchoLayerMemory
from .kv_storage import COMPUTE, check_kv_storage
from .routing import Candidate, SceneFeatures, TextEncoder, auto_route, paper_recall_jump, similarity_jump
from .scene_pool import POOL_DEVICE, LayerFrames, PoolEntry, PoolSignature, ScenePool, SceneRegistry
from .state import BlockReport, MemoryState, SceneInfo
from .transitions import CarriedFrames, check_entry, enter_scene


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
    kv_storage: str = COMPUTE
    """How keys and values are kept (``memory.kv_storage``): ``compute`` or ``fp8_e4m3``."""

    def __post_init__(self) -> None:
        check_kv_storage(self.kv_storage, allow_auto=False)

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


@dataclass(frozen=True)
class _Switch:
    """What a switch carries: per-layer old frames (or None), and for a recall the entry, its similarity and
    every candidate ranked."""

    frames: LayerFrames | None
    similarity: float | None = None
    candidates: tuple[Candidate, ...] = ()
    recalled: PoolEntry | None = None


class EchoMemoryState(MemoryState):
    """One video's Echo-Forcing memory: a hierarchical memory per layer, and the scene hooks that coordinate
    them with the routing features, the scene registry and the carried frames."""

    snapshot_layout = 2
    """Layout 2: each layer keeps its decay state and scene recording in helper objects (layout 1, before,
    kept them as the layer's own fields)."""

    def __init__(self, policy: EchoMemory, num_layers: int, scenes: list[SceneInfo], compute_features: bool = True):
        cfg = policy.config
        super().__init__([EchoLayerMemory(cfg, policy.storage, policy.kv_storage) for _ in range(num_layers)])
        self.config = cfg
        self.scenes = scenes or [SceneInfo(prompt="", num_blocks=0)]
        base = policy.pool or ScenePool(max_size=cfg.pool_size)
        self.registry = SceneRegistry(self.scenes, base, cfg.pool_size)
        for i in range(1, len(self.scenes)):
            check_entry(self.scenes[i], i)
            self.registry.check_recall(i, cfg)
        self.features = SceneFeatures([s.prompt for s in self.scenes], [s.entry for s in self.scenes],
                                      [e.prompt for e in base.entries], cfg, policy.encode_text, compute_features)
        self.carried = CarriedFrames(cfg)
        self.scene_modes: list[Transition | None] = [None] * len(self.scenes)

    # ---- hooks ----------------------------------------------------------------------------------------------

    def start_scene(self, scene: int, start_frame: int) -> dict:
        mode, target = self.scenes[scene].entry, self.scenes[scene].recall_target
        route = None
        if mode is Transition.AUTO:
            route = auto_route(scene, self.features.at(scene)[:len(self.scenes)])
            mode = route.mode
            if target is None and route.target is not None:
                target = route.target
        cfg = self.config.mode(mode)
        switch = self._old_frames(mode, cfg, scene, target)
        jump = route.jump if route is not None else self._jump(scene, mode, cfg, switch)
        old_slots = 0
        for i, layer in enumerate(self.layers):
            old_slots = enter_scene(layer, mode, cfg, switch.frames[i] if switch.frames is not None else None, jump,
                                    start_frame)
        self.carried.entered(mode)
        self.scene_modes[scene] = mode
        report = {"scene": scene, "mode": mode.value, "jump": jump, "old_slots": old_slots}
        if switch.recalled is not None:
            labels = self.registry.recall_entries()
            report["recalled"] = switch.recalled.label
            report["similarity"] = switch.similarity
            report["candidates"] = [{"label": labels[c.key].label, "similarity": c.similarity}
                                    for c in switch.candidates]
        return report

    def begin_block(self, first_in_scene: bool) -> None:
        if not first_in_scene:
            for layer in self.layers:
                layer.end_jump()

    def before_context_pass(self) -> None:
        if self.carried.needs_recall_frames:
            for layer in self.layers:
                layer.record_clean_passes(True)

    def end_block(self, scene: int, first_in_scene: bool, last_in_scene: bool) -> BlockReport:
        if first_in_scene:
            self._first_block_done(scene)
        if last_in_scene and self.carried.needs_recall_frames:
            self._register_recall(scene)
        weights = self.layers[0].decay.old_weight_range()
        for layer in self.layers:
            layer.record_clean_passes(False)
            layer.decay.apply()
        dropped = max(layer.evict_old() for layer in self.layers)
        notes = {"old_weights": weights} if weights else {}
        if dropped:
            notes["old_slots_dropped"] = dropped
        notes.update(self.layers[0].regions())
        return BlockReport(slots=self.layers[0].local_end, notes=notes)

    def result_pool(self) -> ScenePool:
        return self.registry.result()

    # ---- shot boundaries ------------------------------------------------------------------------------------

    def boundary_fields(self) -> dict:
        return {"pool_entries": self.registry.entries, "signature": self.registry.signature,
                **self.carried.fields(), "scene_modes": self.scene_modes}

    def resume_fields(self, fields: dict) -> None:
        """Take over what the shots so far decided. Their routing features are this plan's: features are
        computed over all prompts of a video (official), so a pool entry of an earlier shot gets the value a
        run of the whole new script would have given it."""
        self.carried.resume(fields)
        done = fields["scene_modes"]  # modes of the shots so far; None after them
        self.scene_modes = [done[i] if i < len(done) else None for i in range(len(self.scenes))]
        self.registry.resume(fields["pool_entries"], fields["signature"], self.features.of)

    # ---- the scene's blocks ---------------------------------------------------------------------------------

    def _first_block_done(self, scene: int) -> None:
        """After a scene's first block: the decay rates of its old slots, its first frame, its pool entry."""
        mode, carried = self.scene_modes[scene], self.carried
        if mode is not None:  # the previous scene's select is still the latest one here
            decay, select = self.config.mode(mode).decay, carried.scene_select
            for i, layer in enumerate(self.layers):
                layer.estimate_decay(decay, select[i][0] if select else None)
        if carried.records_select:
            carried.note_select(tuple((to_storage(k, POOL_DEVICE), to_storage(v, POOL_DEVICE))
                                      for k, v in (layer.block_frame(0) for layer in self.layers)))
        self._register(scene, select=carried.scene_select if carried.keep_select else None)

    def _register(self, scene: int, select: LayerFrames | None = None, recall: LayerFrames | None = None) -> None:
        self.registry.register(scene, lambda: self.features.of(scene), select, recall)
        layer = self.layers[0]
        self.registry.require_signature(PoolSignature.of(len(self.layers), layer.heads, layer.head_dim, layer.dtype,
                                                         layer.grid))

    def _register_recall(self, scene: int) -> None:
        frames = []
        for layer in self.layers:
            made = layer.recall_frame()
            if made is None:
                raise SceneMemoryError(f"scene {scene + 1} recorded nothing to build its recall frame from")
            frames.append(made)
        recall = tuple(frames)
        self._register(scene, recall=recall)
        self.carried.note_recall(recall)

    # ---- what a switch carries ------------------------------------------------------------------------------

    def _old_frames(self, mode: Transition, cfg: ModeConfig, scene: int, target) -> _Switch:
        if not cfg.use_old_memory:
            return _Switch(None)
        source = cfg.old_memory_source
        if mode is Transition.RECALL:
            kind = "select" if source is OldMemorySource.SELECT else "recall"
            entry, chosen, candidates = self.registry.choose(scene, kind, target, self.features.at(scene),
                                                             self.config.exclude_previous_scene)
            return _Switch(getattr(entry, kind), chosen.similarity, tuple(candidates), entry)
        if source is OldMemorySource.RESINK:
            return _Switch(tuple(layer.sink_frame() for layer in self.layers))
        return _Switch(self.carried.frames_for(mode, source, self.registry.newest_recall(), scene))

    @staticmethod
    def _jump(scene: int, mode: Transition, cfg: ModeConfig, switch: _Switch) -> int:
        """The RoPE jump of the scene's first block (a router's own jump aside)."""
        strategy = cfg.rope_jump.strategy
        if strategy is JumpStrategy.SIMILARITY:
            return similarity_jump(0.0 if switch.similarity is None else switch.similarity, switch.candidates,
                                   cfg.rope_jump.min_value, cfg.rope_jump.max_value)
        if strategy is JumpStrategy.PAPER:
            recalled = switch.recalled
            if recalled is not None and recalled.scene is not None and not recalled.source:
                return paper_recall_jump(scene, recalled.scene)
            return {Transition.SMOOTH: 0}.get(mode, 45)
        return cfg.rope_jump.value
