"""The cache-policy contract (memory/policy.py), checked for every preset in ``memory.presets.PRESETS`` (a new
preset is covered by being listed there).

Each preset's memory is driven with the tiny model (tests/conftest.py) the way ``MemoryState`` documents the
rollout's calls, through a four-shot video (a smooth transition, a hard cut, a recall by label) of 17
blocks, more than twice the 21-frame budget, and checked for: (a) bounded memory, (b) inputs left
unchanged (the q/k/v of every call, the scene list, the starting scene pool), (c) resuming from every shot
boundary (in memory and from the stored form) gives exactly the windows and latents of the uninterrupted
run, (d) the reports' fields, and that the policy is a ``CachePolicy``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from echo_forcing.cli.text_stand_in import stand_in_text_embedding
from echo_forcing.memory import CachePolicy, PresetChoice, Transition
from echo_forcing.memory.presets import PRESETS, make_policy
from echo_forcing.memory.scene_pool import PoolEntry, PoolSignature, ScenePool
from echo_forcing.memory.snapshot import snapshot_from_record, snapshot_record
from echo_forcing.memory.state import BlockReport, MemoryState, SceneInfo
from echo_forcing.models import BlockCall, CausalWan, WanDiT

GRID = (2, 3)  # tokens per latent frame: 32x48 pixels
LATENT = (16, 4, 6)  # channels, height, width of one latent frame
STEPS = (1000.0, 750.0, 500.0, 250.0)
BUDGET_FRAMES = 21
SCENES = (SceneInfo("a lighthouse keeper climbs white stairs at dusk", 7, label="lighthouse"),
          SceneInfo("the keeper waves from the balcony", 3, Transition.SMOOTH),
          SceneInfo("a night market with red lanterns", 3, Transition.HARD_CUT, label="market"),
          SceneInfo("back in the white lighthouse the keeper lights the lamp", 4, Transition.RECALL, "lighthouse"))
FRAMES = 3 * sum(s.num_blocks for s in SCENES)


@pytest.fixture(scope="module")
def model(tiny_state_dict):
    return CausalWan(WanDiT.from_state_dict(tiny_state_dict))


@pytest.fixture(scope="module")
def texts(model, tiny_config):
    embeddings = stand_in_text_embedding([s.prompt for s in SCENES], tiny_config.text_dim)
    return [model.encode_text(embeddings[i:i + 1]) for i in range(len(SCENES))]


def start_pool(config) -> ScenePool:
    """A loaded pool of one scene (what a Scene Recall Pool node hands an Echo-Forcing preset)."""
    g = torch.Generator().manual_seed(5)
    tokens = GRID[0] * GRID[1]
    frames = tuple((torch.randn(tokens, config.num_heads, config.head_dim, generator=g),
                    torch.randn(tokens, config.num_heads, config.head_dim, generator=g))
                   for _ in range(config.num_layers))
    entry = PoolEntry("harbour", "a harbour at dawn", recall=frames, source="earlier")
    signature = PoolSignature.of(config.num_layers, config.num_heads, config.head_dim, torch.float32, GRID)
    return ScenePool((entry,), 64, signature)


SMALLER_BUDGET = {"longlive2": {"local_attn_size": 21}}
"""Presets whose cache is larger than the run's budget of 21 frames get it (the same code; 32 frames would fill
only after half the run, too late to tell growth)."""


def policy_of(name: str, config, pool: ScenePool):
    if PresetChoice(name).is_echo:
        return make_policy(name, pool=pool, encode_text=lambda p: stand_in_text_embedding(p, config.text_dim))
    return make_policy(name, **SMALLER_BUDGET.get(name, {}))


class Checked:
    """A layer memory as the DiT sees it: ``update`` must leave the call's q/k/v as they were; every window
    is kept as a copy (windows are views of the cache)."""

    def __init__(self, layer, windows: list):
        self.layer, self.windows = layer, windows

    def update(self, q, k, v, call):
        before = (q.clone(), k.clone(), v.clone())
        window = self.layer.update(q, k, v, call)
        assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v), strict=True)), f"update changed {call}"
        self.windows.append(dataclasses.replace(window, **{name: getattr(window, name).clone() for name in
                                                           ("k", "v", "k_time", "q_time", "weights")
                                                           if getattr(window, name) is not None}))
        return window


@dataclasses.dataclass
class Trace:
    windows: list = dataclasses.field(default_factory=list)
    switches: dict = dataclasses.field(default_factory=dict)
    blocks: list = dataclasses.field(default_factory=list)  # (report, device bytes, storage bytes) per block
    boundaries: dict = dataclasses.field(default_factory=dict)  # scene -> (snapshot, windows before it)
    clean: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(1, FRAMES, *LATENT))


def drive(model, texts, state: MemoryState, first_scene: int = 0, trace: Trace | None = None) -> Trace:
    """Run the scenes from ``first_scene`` on, calling the hooks in the order ``MemoryState`` documents; a
    snapshot is taken at every shot boundary (right before ``start_scene``)."""
    trace = trace or Trace()
    layers = [Checked(layer, trace.windows) for layer in state.layers]
    block = sum(s.num_blocks for s in SCENES[:first_scene])
    for index in range(first_scene, len(SCENES)):
        start, text = 3 * block, texts[index]
        if index:
            if index != first_scene:
                trace.boundaries[index] = (state.snapshot(), len(trace.windows))
            trace.switches[index] = state.start_scene(index, start)
            n = min(state.recache_frames(index), start)
            if n:
                model(trace.clean[:, start - n:start], torch.zeros(1, n), text, layers,
                      BlockCall(start - n, n, 0.0, True, GRID))
        for b in range(SCENES[index].num_blocks):
            state.begin_block(b == 0)
            x = torch.randn(1, 3, *LATENT, generator=torch.Generator().manual_seed(block))
            for t in STEPS:
                x = x - 0.2 * model(x, torch.full((1, 3), t), text, layers, BlockCall(start, 3, t, False, GRID))
            trace.clean[:, start:start + 3] = x
            state.before_context_pass()
            model(x, torch.zeros(1, 3), text, layers, BlockCall(start, 3, 0.0, True, GRID))
            report = state.end_block(index, b == 0, b == SCENES[index].num_blocks - 1)
            trace.blocks.append((report, state.device_bytes, state.storage_bytes))
            start, block = start + 3, block + 1
    return trace


def same_windows(got: list, want: list) -> bool:
    if len(got) != len(want):
        return False
    for a, b in zip(got, want, strict=True):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if not (torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y):
                return False
    return True


def stored(snapshot):
    """The snapshot as a story file keeps it (plain data and named tensors) and read back."""
    record, tensors = snapshot_record(snapshot)
    return snapshot_from_record(json.loads(json.dumps(record)), dict(tensors))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_keeps_the_policy_contract(name, model, texts, tiny_config):
    pool = start_pool(tiny_config)
    pool_frames = [t.clone() for entry in pool.entries for kv in entry.recall for t in kv]
    policy = policy_of(name, tiny_config, pool)
    assert isinstance(policy, CachePolicy)
    policy.check_length(FRAMES, 3)
    scenes = list(SCENES)
    state = policy.create(tiny_config.num_layers, scenes)
    assert isinstance(state, MemoryState) and len(state.layers) == tiny_config.num_layers
    assert all(callable(layer.update) for layer in state.layers)  # models.seam.LayerMemory
    full = drive(model, texts, state)
    assert_reports(full)
    assert_bounded(full)
    assert_inputs_unchanged(scenes, pool, pool_frames, state)
    assert_resumes_exactly(name, policy, full, model, texts, tiny_config)


def assert_reports(full: Trace) -> None:
    """(d) switch reports name the scene and a Transition value; block reports have int slots and a dict."""
    for index, switch in full.switches.items():
        assert switch["scene"] == index and switch["mode"] in {t.value for t in Transition}, switch
        json.dumps(switch)
    for report, _, _ in full.blocks:
        assert isinstance(report, BlockReport) and isinstance(report.notes, dict)
        assert type(report.slots) is int and report.slots >= 0
        json.dumps(report.notes)


def assert_bounded(full: Trace) -> None:
    """(a) nothing grows once layer 0's cache first holds the most frames it holds in the run."""
    slots = [r.slots for r, _, _ in full.blocks]
    filled = slots.index(max(slots)) + 1
    assert 2 * filled <= len(slots) and FRAMES >= 2 * BUDGET_FRAMES  # the run is long enough to tell
    for column in (1, 2):
        sizes = [b[column] for b in full.blocks]
        assert max(sizes[filled:]) <= max(sizes[:filled]), (column, sizes)


def assert_inputs_unchanged(scenes: list, pool: ScenePool, pool_frames: list, state: MemoryState) -> None:
    """(b) the scene list and the starting pool are as they were (q/k/v: checked on every call by Checked)."""
    assert scenes == list(SCENES) and all(a is b for a, b in zip(scenes, SCENES, strict=True))
    assert len(pool.entries) == 1 and pool.entries[0].label == "harbour"
    assert all(torch.equal(a, b) for a, b in zip(
        [t for entry in pool.entries for kv in entry.recall for t in kv], pool_frames, strict=True))
    result = state.result_pool()
    assert result is None or (result is not pool and isinstance(result, ScenePool))


def assert_resumes_exactly(name: str, policy, full: Trace, model, texts, tiny_config) -> None:
    """(c) resuming at every shot boundary, from the snapshot and from its stored form, repeats the run."""
    assert sorted(full.boundaries) == [1, 2, 3]
    for index, (snapshot, calls) in full.boundaries.items():
        first_block = sum(s.num_blocks for s in SCENES[:index])
        for source in (snapshot, stored(snapshot)):
            fresh = policy.create(tiny_config.num_layers, list(SCENES))
            fresh.resume(source)
            resumed = Trace(clean=full.clean.clone())
            resumed.clean[:, 3 * first_block:] = 0
            drive(model, texts, fresh, index, resumed)
            assert same_windows(resumed.windows, full.windows[calls:]), (name, index)
            assert torch.equal(resumed.clean, full.clean)
            assert resumed.switches == {k: v for k, v in full.switches.items() if k >= index}
            assert [b[0] for b in resumed.blocks] == [b[0] for b in full.blocks[first_block:]]
