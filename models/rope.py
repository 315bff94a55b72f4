"""3D rotary position embedding of Wan2.1.

A head of dimension ``d`` is viewed as ``c = d/2`` complex channels made of ADJACENT pairs (element 2i is
the real part, 2i+1 the imaginary part). The channels are split into temporal ``c - 2*floor(c/3)``, height
``floor(c/3)`` and width ``floor(c/3)`` groups (22/21/21 at d = 128) with frequencies
``theta^(-2i/dim_part)``. The tables are built in float64 (like the Self-Forcing and Echo-Forcing code). The
official code also multiplies in complex128; here the product is complex64 for float32/bf16/fp16 tensors
(float64 tensors keep complex128): about 5x less time and memory traffic on the hot path of every call, and
the result differs from the float64 product by at most one float32 rounding step (the parity tests hold
with unchanged tolerances; in bf16 one element in 40,000 lands on the neighbouring bf16 value).

Positions are free: every key frame carries its own temporal position (absolute frame index for
Self-Forcing, slot-derived relative time for Echo-Forcing), spatial positions are the row/column of the
token inside its frame. The tables grow on demand, so long videos never run off the end of a table. The
rotation of a whole window is kept for the last few position lists asked for, on the device: a cache that
is full asks for the same window positions (0..20) in every call of every layer, so the table is built once.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

ROTATIONS_KEPT = 8
"""Recently used per-token rotation tables kept per ``Rope3D`` (a 21-frame window at 30x52 is 8 MiB)."""


def rope_frequencies(num_positions: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Unit complex table ``e^{i * pos * theta^(-2j/dim)}``, ``[num_positions, dim/2]`` complex128."""
    if dim % 2:
        raise ValueError(f"rotary dim must be even, got {dim}")
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim))
    angles = torch.outer(torch.arange(num_positions, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


def split_channels(head_dim: int) -> tuple[int, int, int]:
    """Complex channels given to (time, height, width): ``(22, 21, 21)`` for head dim 128."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


class Rope3D:
    """Rotary embedding for ``[B, L, heads, head_dim]`` tensors laid out frame-major, row-major inside a frame."""

    def __init__(self, head_dim: int, theta: float = 10000.0, initial_positions: int = 1024):
        self.head_dim = head_dim
        self.theta = theta
        self.channels = split_channels(head_dim)
        self._tables: list[torch.Tensor] = []
        self._grow(initial_positions)
        self._spatial: dict[tuple[int, int, str], torch.Tensor] = {}
        self._rotations: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _grow(self, n: int) -> None:
        ct, ch, cw = self.channels
        self._tables = [rope_frequencies(n, 2 * ct, self.theta), rope_frequencies(n, 2 * ch, self.theta),
                        rope_frequencies(n, 2 * cw, self.theta)]

    @property
    def num_positions(self) -> int:
        return self._tables[0].shape[0]

    def _ensure(self, max_position: int) -> None:
        if max_position >= self.num_positions:
            size = self.num_positions
            while size <= max_position:
                size *= 2
            self._grow(size)
            self._spatial.clear()
            self._rotations.clear()

    def _spatial_table(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """``[h*w, ch + cw]`` complex128 rotations of the height and width channels."""
        key = (h, w, str(device))
        if key not in self._spatial:
            self._ensure(max(h, w) - 1)
            _, th, tw = self._tables
            ch, cw = th.shape[1], tw.shape[1]
            grid = torch.cat([th[:h].view(h, 1, ch).expand(h, w, ch), tw[:w].view(1, w, cw).expand(h, w, cw)], dim=-1)
            self._spatial[key] = grid.reshape(h * w, ch + cw).to(device)
        return self._spatial[key]

    def frequencies(self, frame_positions: torch.Tensor, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Rotation of every token, ``[F * h * w, 1, head_dim/2]`` complex128, for frames at ``frame_positions``."""
        h, w = grid
        positions = frame_positions.to("cpu", torch.long)
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError(f"rotary positions must be >= 0, got {positions.tolist()}")
        self._ensure(int(positions.max()) if positions.numel() else 0)
        temporal = self._tables[0].index_select(0, positions).to(device)  # [F, ct]
        spatial = self._spatial_table(h, w, device)  # [h*w, ch+cw]
        f, hw = temporal.shape[0], spatial.shape[0]
        freqs = torch.cat([temporal.view(f, 1, -1).expand(f, hw, -1), spatial.view(1, hw, -1).expand(f, hw, -1)], -1)
        return freqs.reshape(f * hw, 1, -1)

    def rotation(self, frame_positions: torch.Tensor, grid: tuple[int, int], device: torch.device,
                 dtype: torch.dtype = torch.complex64) -> torch.Tensor:
        """``frequencies`` as ``dtype`` on ``device``, kept for the last ``ROTATIONS_KEPT`` position lists."""
        key = (tuple(frame_positions.tolist()), tuple(grid), str(device), dtype)
        table = self._rotations.get(key)
        if table is None:
            table = self.frequencies(frame_positions, grid, device).to(dtype)
            self._rotations[key] = table
            if len(self._rotations) > ROTATIONS_KEPT:
                self._rotations.popitem(last=False)
        else:
            self._rotations.move_to_end(key)
        return table

    def apply(self, x: torch.Tensor, frame_positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Rotate ``x`` ``[B, F*h*w, heads, head_dim]`` whose frame ``i`` sits at temporal ``frame_positions[i]``.

        float64 tensors are rotated in complex128, all others in complex64; the result has ``x``'s dtype."""
        b, length, heads, d = x.shape
        if length != frame_positions.numel() * grid[0] * grid[1]:
            raise ValueError(f"{length} tokens do not match {frame_positions.numel()} frames of {grid[0]}x{grid[1]}")
        wide = x.dtype == torch.float64
        freqs = self.rotation(frame_positions, grid, x.device, torch.complex128 if wide else torch.complex64)
        real = x if wide else x.to(torch.float32)
        xc = torch.view_as_complex(real.reshape(b, length, heads, d // 2, 2))
        return torch.view_as_real(xc * freqs).flatten(3).type_as(x)
