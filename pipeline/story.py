"""Stories: a finished (or stopped) video saved with everything needed to add shots to it later, in another
job or on another machine, without generating its shots again.

A story is the shot boundary after its last shot (``pipeline.shot_boundary``: latents, memory snapshot,
noise state, switches, per-block reports) plus the shots themselves (prompts, durations, transitions,
labels, seeds, blocks and their text encodings) and a header naming what the memory depends on: the model's
architecture, the compute dtype, the size, steps, shift, fps, noise mode, preset and every memory option.

On disk it is one safetensors file with a versioned JSON header (``FORMAT`` / ``VERSION``) and a SHA-256
checksum over the header and every tensor, so a truncated or edited file is refused. Nothing is unpickled:
the memory snapshot is stored as plain data whose classes are looked up by name among the memory package's
own (``memory.snapshot.snapshot_record``). Files are written atomically in their own folder
(``memory.files``).

A story cannot tell two checkpoints of the same architecture apart (it does not hash the weights): continue
it with the model it was made with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..memory.files import HeaderFields, read_state_file, save_atomically
from ..memory.scene_pool import ScenePool
from ..memory.snapshot import RecordReader, RecordWriter, SnapshotFormatError
from ..safe_files import WriteOutcome
from .digests import file_checksum
from .noise import MAX_SEED, OFFICIAL
from .scene_list import SceneList, Shot
from .scene_script import MAX_SCENE_SECONDS, Scene, SceneScriptError, Transition
from .shot_boundary import BoundaryFileError, ShotBoundary, boundary_from_record, boundary_record

FORMAT = "echo-forcing-story"
VERSION = 2
"""2: the memory state records of the one-owner-per-state layout (memory.snapshot, ``snapshot_layout``)."""


class StoryError(ValueError):
    """A story that cannot be saved, read or continued here; the message says why and what to do."""


@dataclass(frozen=True, repr=False)
class Story:
    shots: SceneList
    """The shots so far (with their text encodings and their seeds)."""
    blocks: tuple[int, ...]
    boundary: ShotBoundary
    """The state after the last shot."""
    header: dict
    """What the memory depends on (see ``story_header``); a continuation must match it."""
    start_pool: ScenePool | None = None
    """The scene pool the story's first shot started from."""

    def __repr__(self) -> str:
        return f"Story({len(self.shots)} shots, {self.boundary.block} blocks, {str(self.header.get('preset'))[:40]})"

    @property
    def frames(self) -> int:
        return self.boundary.frames

    # ---- continuing -------------------------------------------------------------------------------------------

    def check(self, header: dict) -> None:
        """Refuse to continue this story with a run whose ``header`` differs (named, with what to change)."""
        names = {"model": "model architecture", "dtype": "compute dtype (weight_dtype)", "width": "width",
                 "height": "height", "grid": "token grid", "steps": "steps", "shift": "shift", "warp": "timestep warp",
                 "fps": "fps", "noise": "noise mode", "preset": "memory preset", "policy": "memory options",
                 "kv_storage": "kv_storage", "first_steps": "first block's steps", "block": "frames per block"}
        # what stories saved before a field existed ran with: the compute dtype, 3-frame blocks
        defaults = {"kv_storage": "compute", "block": 3}
        for key, name in names.items():
            mine, theirs = self.header.get(key, defaults.get(key)), header.get(key, defaults.get(key))
            if mine != theirs:
                if key in ("model", "policy"):
                    raise StoryError(f"the story was made with another {name} than this run; continue it with the "
                                     "model and the Echo Memory Config it was made with")
                raise StoryError(f"the story was made with {name} {repr(mine)[:60]}, this run has "
                                 f"{repr(theirs)[:60]}; use the story's {name} to continue it")

    def check_extension(self) -> None:
        """Refuse to add shots to a story made with the official noise order."""
        if self.header.get("noise") == OFFICIAL:
            raise StoryError("the story was made with the official noise order, where every block's noise depends "
                             "on the whole video's length, so no shot can be added to it; make stories with "
                             "per-shot noise")

    # ---- files ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> WriteOutcome:
        """Write the story as safetensors (atomically)."""
        writer = RecordWriter()
        record = boundary_record(self.boundary, writer)
        record["start_pool"] = writer.value(self.start_pool)
        tensors = writer.tensors
        shots = []
        for i, (shot, n) in enumerate(zip(self.shots.shots, self.blocks, strict=True)):
            s = shot.scene
            shots.append({"prompt": s.prompt, "duration": s.duration, "target": s.recall_target, "label": s.label,
                          "entry": None if s.entry is None else s.entry.value, "seed": shot.seed, "blocks": n})
            tensors[f"text.{i}"] = shot.text.contiguous()
            if shot.start is not None:
                tensors[f"start.{i}"] = shot.start.contiguous()
        metadata = {"format": FORMAT, "version": str(VERSION), "header": json.dumps(self.header),
                    "shots": json.dumps(shots), "boundary": json.dumps(record)}
        metadata["checksum"] = file_checksum(metadata, tensors)
        return save_atomically(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Story:
        """Read a story written by ``save``; refuses anything damaged, edited or of another format."""
        path = Path(path)
        meta, tensors = read_state_file(path, FORMAT, VERSION, "story", StoryError)
        if meta.get("checksum") != file_checksum({k: v for k, v in meta.items() if k != "checksum"}, tensors):
            raise StoryError(f"{path.name} does not match its checksum (edited or damaged); save the story again")
        try:
            return cls._from_file(meta, tensors, HeaderFields(path.name, "story", StoryError))
        except StoryError:
            raise
        except Exception as err:
            problem = str(err) if isinstance(err, (BoundaryFileError, SnapshotFormatError, SceneScriptError)) \
                else f"{type(err).__name__}: {err}"
            raise StoryError(f"{path.name} has a damaged story header ({problem[:300]}); save the story "
                             "again") from None

    @classmethod
    def _from_file(cls, meta: dict, tensors: dict[str, torch.Tensor], fields: HeaderFields) -> Story:
        header = fields.json(meta, "header", dict)
        record = fields.json(meta, "boundary", dict)
        boundary = boundary_from_record(record, tensors)
        start_pool = RecordReader(tensors).value(record.get("start_pool"))
        if start_pool is not None and not isinstance(start_pool, ScenePool):
            raise StoryError("the story's start pool is not a scene pool")
        shots, blocks = [], []
        records = fields.json(meta, "shots", list)
        if not records:
            raise fields.fail("shots", "at least one shot", records)
        for i, s in enumerate(records):
            where = f"shots[{i}]."
            s = fields.record(s, f"shots[{i}]")
            entry = fields.text(s, "entry", where, optional=True, limit=20)
            target = s.get("target")
            if not (target is None or isinstance(target, str) or (isinstance(target, int)
                                                                  and not isinstance(target, bool))):
                raise fields.fail(where + "target", "a shot index, a label or null", target)
            scene = Scene(fields.text(s, "prompt", where), fields.number(s, "duration", 0, MAX_SCENE_SECONDS, where),
                          None if entry is None else Transition(entry), target,
                          fields.text(s, "label", where, optional=True, limit=1000))
            seed = fields.int(s, "seed", 0, MAX_SEED, where, optional=True)
            text = tensors.get(f"text.{i}")
            if text is None or text.dim() != 3 or text.shape[0] != 1 or not text.is_floating_point():
                raise fields.fail(f"text.{i}", "a [1, tokens, width] float tensor",
                                  None if text is None else list(text.shape))
            start = tensors.get(f"start.{i}")
            if start is not None and (start.dim() != 5 or start.shape[0] != 1 or start.dtype != torch.float32
                                      or not bool(torch.isfinite(start).all())):
                raise fields.fail(f"start.{i}", "finite float32 latents [1, frames, channels, h, w]", list(start.shape))
            shots.append(Shot(scene, text, None, seed, start))
            blocks.append(fields.int(s, "blocks", 1, 2**31, where))
        if boundary.shot != len(shots) or boundary.block != sum(blocks):
            raise StoryError("the story's shots and its state disagree")
        return cls(SceneList(tuple(shots)), tuple(blocks), boundary, header, start_pool)


def story_header(model, dtype: torch.dtype, grid: Sequence[int], settings, fps: float, preset: str, policy) -> dict:
    """What a story's memory depends on (``Story.check`` compares it with a continuation's)."""
    return {"model": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model).items()},
            "dtype": str(dtype).replace("torch.", ""), "grid": list(grid), "width": settings.width,
            "height": settings.height, "steps": list(settings.steps), "shift": settings.shift, "warp": settings.warp,
            "first_steps": None if settings.first_block_steps is None else list(settings.first_block_steps),
            "block": settings.frames_per_block,
            "fps": fps, "noise": settings.noise, "preset": preset,
            "policy": repr(getattr(policy, "config", policy)), "kv_storage": getattr(policy, "kv_storage", "compute")}
