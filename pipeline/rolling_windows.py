"""Rolling Forcing's rollout: a rolling window of blocks denoised jointly, each at its own noise level.

With K denoising steps (Rolling Forcing: 5, timesteps 1000, 952.4, 882.4, 769.2, 555.6 at shift 5) window ``w``
holds blocks ``max(0, w - K + 1) .. min(N - 1, w)`` of the N blocks, block ``b`` at step ``w - b``: the newest
block enters as pure noise, every window moves each block one step on, and a block leaves finished after its
last step, as the window's oldest block. Per window:

1. one DiT call over all the window's frames with per-frame timesteps (the newest block's shot gives the text);
   each frame's clean estimate is ``x - sigma(t) * flow`` at its own t;
2. every block not at its last step is re-noised to its next step, in block order, each with a fresh noise draw
   the size of the whole window of which it keeps its own rows (the official RNG order);
3. one clean context pass (t = 0) on the window's oldest block, with its shot's text, which writes it into the
   cache (``memory.rolling_forcing``); when that block was at its last step, its estimate is the output.

N + K - 1 windows, 2 DiT calls each (5 per block for Self-Forcing). The initial noise is one draw of the whole
video, as in the official code; a window spans shots, so a shot's last frames depend on the next shot's noise,
which is why only the official noise order, no stop after a shot and no start latents are offered.

For videos of fewer than K blocks the official code repeats its first windows (a known bug of its window
indexing); here every block still takes each step once.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..models.seam import BlockCall
from .noise import OFFICIAL
from .rollout import BlockEvent, PendingText, RolloutInputError, RolloutScene, _BlockLoop


def check_rolling_request(scenes: list[RolloutScene], noise: str, first_block_steps, resume: bool) -> None:
    """Refuse what a joint-window rollout cannot do (before any model call)."""
    if noise != OFFICIAL:
        raise RolloutInputError("Rolling Forcing denoises several blocks at once across shot boundaries, so a "
                                "shot's noise cannot be kept apart from the next one's: use the official noise order")
    if any(s.start is not None for s in scenes):
        raise RolloutInputError("Rolling Forcing cannot start a shot from given frames (its official image and "
                                "clip start is broken); remove the start latents or use another preset")
    if first_block_steps is not None:
        raise RolloutInputError("Rolling Forcing gives every block the same steps; a separate first-block step "
                                "list does not apply")
    if resume:
        raise RolloutInputError("a Rolling Forcing run cannot resume at a shot boundary: its window spans shots")


class RollingWindowLoop(_BlockLoop):
    """The joint-window rollout (see the module docstring); the output, noise, hooks and result are the block
    loop's."""

    def generate(self) -> None:
        model, settings, scenes, f, b = self.model, self.settings, self.scenes, self.f, self.b
        steps = self.timesteps
        k, blocks = len(steps), settings.num_blocks
        shot_of = [i for i, scene in enumerate(scenes) for _ in range(scene.num_blocks)]
        starts = [sum(s.num_blocks for s in scenes[:i]) for i in range(len(scenes))]  # each shot's first block
        first_of = {block: shot for shot, block in enumerate(starts)}
        texts: dict[int, object] = {}
        noisy: dict[int, torch.Tensor] = {}
        switches: dict[int, dict | None] = {}
        started = time.perf_counter()
        for w in range(blocks + k - 1):
            if self.hooks.interrupt is not None:
                self.hooks.interrupt()
            oldest, newest = max(0, w - k + 1), min(blocks - 1, w)
            if w < blocks:
                noisy[w] = self._enter(w, shot_of[w], starts, switches)
            for shot in [s for s in texts if s < shot_of[oldest]]:  # shots no window reads any more
                del texts[shot]
            x = torch.cat([noisy[i] for i in range(oldest, newest + 1)], dim=1)
            t = torch.cat([torch.full((b, f), float(steps[w - i]), dtype=torch.float32)
                           for i in range(oldest, newest + 1)], dim=1)
            start, frames = oldest * f, x.shape[1]
            flow = model(x, t, self._text(shot_of[newest], texts), self.memories,
                         BlockCall(start, frames, float(steps[w - newest]), False, self.grid))
            x0 = self.schedule.x0_from_flow(flow, x, t)
            for i in range(oldest, newest + 1):  # re-noise every block not at its last step, oldest first
                if w - i == k - 1:
                    continue
                eps = self.noise.step(frames).to(device=model.device, dtype=model.dtype)
                rows = slice((i - oldest) * f, (i - oldest + 1) * f)
                noisy[i] = self.schedule.add_noise(x0[:, rows], eps[:, rows], steps[w - i + 1])
            finished = w - oldest == k - 1
            self.state.before_context_pass()
            if w < blocks + k - 2:  # the last window's context pass would write a block nothing reads
                model(x0[:, :f], torch.zeros((b, f), dtype=torch.float32), self._text(shot_of[oldest], texts),
                      self.memories, BlockCall(start, f, 0.0, True, self.grid))
            if finished:
                started = self._finish_block(oldest, x0[:, :f], shot_of, first_of, switches, started)
                del noisy[oldest]
        self.result.shots_done = len(scenes)

    def finish(self):
        """The result without a shot boundary at the end: a rolling-window run is not continued as a story."""
        self.hooks = replace(self.hooks, on_boundary=None, keep_end=False)
        return super().finish()

    def _enter(self, block: int, shot: int, starts: list[int], switches: dict) -> torch.Tensor:
        """A block enters the window as its initial noise (a shot's first block starts the shot in the memory)."""
        f = self.f
        first = block == starts[shot]
        if first:
            if shot:
                self.result.switches.append(self.state.start_scene(shot, block * f))
            switches[block] = self.result.switches[-1] if shot else None
        self.state.begin_block(first)
        return self.noise.initial(block * f, f, shot, block - starts[shot]).to(device=self.model.device,
                                                                               dtype=self.model.dtype)

    def _text(self, shot: int, texts: dict):
        if shot not in texts:
            text = self.scenes[shot].text
            texts[shot] = text.encode() if isinstance(text, PendingText) else text
        return texts[shot]

    def _finish_block(self, block: int, x0: torch.Tensor, shot_of: list, first_of: dict, switches: dict,
                      started: float) -> float:
        """The block left the window finished: output, check, memory report, event. Returns the new clock."""
        f, result, shot = self.f, self.result, shot_of[block]
        start = block * f
        self.output[:, start:start + f] = x0.float().cpu()
        self.index = block
        self._check_finite(start, shot)
        last = block + 1 == len(shot_of) or shot_of[block + 1] != shot
        report = self.state.end_block(shot, block in first_of, last)
        seconds = time.perf_counter() - started
        result.block_seconds.append(seconds)
        result.block_reports.append(report)
        if self.hooks.on_block is not None:
            self.hooks.on_block(BlockEvent(block, self.settings.num_blocks, start, shot,
                                           self.output[:, start:start + f], seconds, report,
                                           switches.get(block) if block in first_of else None))
        self.index = block + 1
        return time.perf_counter()

