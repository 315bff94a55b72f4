"""3D rotary position embedding of Wan2.1 (SPEC §1.3).

A head of dimension ``d`` is viewed as ``c = d/2`` complex channels made of ADJACENT pairs (element 2i is
the real part, 2i+1 the imaginary part). The channels are split into temporal ``c - 2*floor(c/3)``, height
``floor(c/3)`` and width ``floor(c/3)`` groups (22/21/21 at d = 128) with frequencies
``theta^(-2i/dim_part)``. Rotations are done in float64 complex arithmetic and cast back, exactly like the
Self-Forcing and Echo-Forcing code.

Positions are free: every key frame carries its own temporal position (absolute frame index for
Self-Forcing, slot-derived relative time for Echo-Forcing), spatial positions are the row/column of the
token inside its frame. The tables grow on demand, so long videos never run off the end of a table.
"""

from __future__ import annotations

import torch


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

    def apply(self, x: torch.Tensor, frame_positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Rotate ``x`` ``[B, F*h*w, heads, head_dim]`` whose frame ``i`` sits at temporal ``frame_positions[i]``."""
        b, length, heads, d = x.shape
        if length != frame_positions.numel() * grid[0] * grid[1]:
            raise ValueError(f"{length} tokens do not match {frame_positions.numel()} frames of {grid[0]}x{grid[1]}")
        freqs = self.frequencies(frame_positions, grid, x.device)
        xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, heads, d // 2, 2))
        return torch.view_as_real(xc * freqs).flatten(3).type_as(x)
