"""Unified relative RoPE (Echo-Infinity's "Unified Relative RoPE Recipe"), a position mode of some presets.

The problem it solves: with absolute positions (Self-Forcing, LongLive) the temporal RoPE id of the newest
frame is its frame index, so after 21 latent frames every block asks the model for positions it never saw in
training (Self-Forcing was trained on 21 frames, ids 0..20), and the further the video runs the further out
they go. The recipe keeps every id inside the trained range for any length:

* the sink frames (the frames a cache never evicts, at the front of its window) sit at ids 0, 1, ...;
* the newest frame's id grows with the video, one per frame, up to the pretrained maximum
  ``max_frames - 1`` (20), and then stays there;
* every other frame keeps its distance to the newest frame, so the rolling part of the window is the
  newest frame's id counted back (a window of sink 3 + rolling 9 after frame 40: sink 0..2, rolling 12..20).

While the video is shorter than ``max_frames`` nothing changes: the ids are the absolute frame indices.
A window longer than ``max_frames`` cannot fit the range; then the newest id is ``window_frames - 1`` (the
slot positions), so ids stay distinct. Echo-Infinity's learned memory queries need trained weights that are
not public; only the position recipe is offered here (memory/presets.py lists the presets that take it).
"""

from __future__ import annotations

import torch

from .config import ConfigError, check_int

PRETRAINED_FRAMES = 21
"""Latent frames the Self-Forcing family was trained on: temporal ids 0..20."""
ROPE_MODES = ("absolute", "unified")
"""Position modes of presets whose keys sit at absolute frame indices (Self-Forcing, LongLive)."""


def check_rope(rope: str, modes: tuple[str, ...], rope_frames: int) -> None:
    """Validate a preset's ``rope`` mode and ``rope_frames`` fields."""
    if rope not in modes:
        raise ConfigError(f"rope must be one of {', '.join(modes)}, got {rope!r}")
    check_int("rope_frames", rope_frames, 1, None)


def newest_id(newest_frame: int, window_frames: int, max_frames: int = PRETRAINED_FRAMES) -> int:
    """Temporal id of the newest frame (absolute index ``newest_frame``) in a window of ``window_frames``."""
    return min(newest_frame, max(max_frames, window_frames) - 1)


def unified_times(frames: torch.Tensor, sink_frames: torch.Tensor, newest_frame: int, window_frames: int,
                  max_frames: int = PRETRAINED_FRAMES) -> torch.Tensor:
    """Unified ids of the absolute frame indices ``frames``.

    ``sink_frames`` are the absolute frames held in the sink slots, in slot order (they get ids 0, 1, ...);
    every other frame keeps its distance to ``newest_frame``, whose id is ``newest_id``. Used for the keys
    of a window (its frames in slot order) and for the queries of a call (the frames of the call).
    """
    shift = newest_frame - newest_id(newest_frame, window_frames, max_frames)
    times = frames - shift
    for slot, frame in enumerate(sink_frames.tolist()):
        times[frames == frame] = slot
    return times


def unified_slot_times(window_frames: int, sink_size: int, newest_frame: int,
                       max_frames: int = PRETRAINED_FRAMES) -> torch.Tensor:
    """Unified ids of a window whose slots are counted from the newest frame (TetherCache's layout, where
    the memory frames are not contiguous in time): sink slots 0.., slot ``j`` after the sink
    ``newest_id - (window_frames - 1 - j)``."""
    top = newest_id(newest_frame, window_frames, max_frames)
    times = torch.arange(window_frames) + (top - (window_frames - 1))
    times[:min(sink_size, window_frames)] = torch.arange(min(sink_size, window_frames))
    return times


def unified_window(q_time: torch.Tensor, k_time: torch.Tensor, sink_size: int,
                   max_frames: int = PRETRAINED_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of absolute positions (``k_time``: each slot's frame, the first ``sink_size`` slots the sink;
    ``q_time``: the call's frames) in unified ids: ``(q_time, k_time)``."""
    window = k_time.numel()
    sink = k_time[:min(sink_size, window)]
    newest = max(int(k_time.max()), int(q_time.max()))
    return (unified_times(q_time, sink, newest, window, max_frames),
            unified_times(k_time, sink, newest, window, max_frames))
