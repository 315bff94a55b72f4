"""Difference-aware memory decay: how fast carried old memory fades after a switch.

After the first block of a new scene, each spatial position u gets a rate from how different the new
scene's first clean frame is from the carried old frame at that position:

    d_u = 1 - cos(k_old[u], k_new[u])          (cosine over all heads, pre-RoPE keys)
    delta_u = (d_u - min d) / (max d - min d)   (0 everywhere when the range is <= 1e-6)
    rate_u = max_rate - (max_rate - min_rate) * delta_u

so a more different position forgets faster. After every block the old tokens' weights are multiplied by
their rate (keys and values are scaled by the weight in attention), and after ``clear_after_blocks`` blocks
the old slots are deleted. Block r of the scene therefore sees w = w0 * rate^r, which is the paper's
``w = exp(-r mu)`` with ``mu = -ln(rate)`` (``DecayConfig.from_mu`` / ``mu_range`` convert): smooth rates
0.80..0.95 are mu 0.051..0.223, recall 0.55..0.90 are mu 0.105..0.598. Not in the paper: the deletion, and
a hard cut's fixed first-block weight 0.8 with deletion after one block.

Who changes what: the decay state of a layer (``OldMemoryDecay``: per-token weights, which tokens decay
and at what rate, the deletion countdown) belongs to its ``EchoLayerMemory``, which makes it in
``allocate`` and keeps it with its tokens when slots are written, moved or dropped. Only its own methods
change it: ``begin`` (``memory.transitions`` at a switch), ``estimate_rates`` (the layer, after the scene's
first block), ``apply`` and ``count_down`` / ``finish_eviction`` (after every block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import DecayConfig, DecayStrategy, DecayTarget
from .devices import to_device


def difference_rates(new_frame: torch.Tensor, old_frame: torch.Tensor, min_rate: float,
                     max_rate: float) -> torch.Tensor:
    """Per-position rates ``[P]`` float32 from pre-RoPE keys ``[1, P, H, d]`` of the new and the old frame."""
    new = F.normalize(new_frame.to(torch.float32).flatten(2), dim=-1, eps=1e-6)
    old = F.normalize(old_frame.to(torch.float32).flatten(2), dim=-1, eps=1e-6)
    diff = (1.0 - (new * old).sum(dim=-1)).mean(dim=0)
    low, high = diff.min(), diff.max()
    if float((high - low).item()) > 1e-6:
        normalized = (diff - low) / (high - low)
    else:
        normalized = torch.zeros_like(diff)
    return (max_rate - (max_rate - min_rate) * normalized).clamp(min=min_rate, max=max_rate)


class OldMemoryDecay:
    """The decay state of one layer's working cache, per token of its ``tokens`` slots (on the compute device):
    the weight attention multiplies keys and values by, whether the token decays and at what rate; plus the
    span of old tokens (``start``, ``count``) and the countdown to their deletion."""

    def __init__(self, tokens: int, device: torch.device):
        self.weights = torch.ones(tokens, dtype=torch.float32, device=device)
        self.mask = torch.zeros(tokens, dtype=torch.bool, device=device)
        self.rates = torch.ones(tokens, dtype=torch.float32, device=device)
        self.active = False
        self.start = 0  # first decaying token
        self.count = 0  # decaying tokens
        self.trivial = True
        """No weight differs from 1 (attention then skips the weighting); kept without a device read."""
        self.evict_steps = 0  # blocks until the old tokens are deleted (0: nothing scheduled)
        self.evict_start = 0
        self.evict_count = 0

    # ---- the cache's slot operations keep the per-token state with its tokens ---------------------------------

    def written(self, span: slice) -> None:
        """Fresh tokens were written at ``span``: weight 1, no decay."""
        self.weights[span] = 1.0
        self.mask[span] = False
        self.rates[span] = 1.0

    def move(self, src: slice, dst: slice) -> None:
        """The tokens at ``src`` moved to ``dst``."""
        for t in (self.weights, self.mask, self.rates):
            t[dst] = t[src].clone()

    def reset(self) -> None:
        """A new scene starts: nothing decays, nothing is scheduled."""
        self.weights.fill_(1.0)
        self.mask.zero_()
        self.rates.fill_(1.0)
        self.active, self.start, self.count = False, 0, 0
        self.evict_steps = self.evict_start = self.evict_count = 0
        self.trivial = True

    # ---- the decay of one scene's old memory ----------------------------------------------------------------

    def begin(self, decay: DecayConfig, start: int, tokens: int, evict_tokens: int,
              first_weight: float | None = None) -> None:
        """Mark ``tokens`` old tokens at ``start`` for decay and schedule the deletion of ``evict_tokens``."""
        if tokens <= 0:
            return
        span = slice(start, start + tokens)
        if first_weight is not None:
            self.weights[span] = first_weight
        self.mask[span] = True
        self.start, self.count, self.active = start, tokens, True
        if decay.strategy is DecayStrategy.FIXED:
            self.rates[span] = decay.fixed_rate
        self.evict_steps, self.evict_start, self.evict_count = decay.clear_after_blocks, 0, evict_tokens
        if first_weight is not None and first_weight != 1.0:
            self.trivial = False

    def estimate_rates(self, decay: DecayConfig, new_frame: torch.Tensor, cache_k: torch.Tensor, frame_tokens: int,
                       block_tokens: int, select_k: torch.Tensor | None) -> None:
        """After the context pass of a scene's first block: per-position rates for a diff-strategy decay, from
        the keys ``new_frame`` ``[P, H, d]`` of the scene's first frame against the old tokens (the front of
        the cache ``cache_k`` ``[1, S, H, d]``, or ``select_k`` for the ``old_recent`` target)."""
        if decay.strategy is not DecayStrategy.DIFF or not self.active or self.count <= 0:
            return
        reference_tokens = self.count
        if decay.target is DecayTarget.OLD_RECENT:
            if select_k is None:
                return
            reference_tokens = select_k.shape[0]
        ref = min(frame_tokens, reference_tokens, block_tokens)
        new_first = new_frame[:ref].unsqueeze(0)
        old = select_k[:ref].unsqueeze(0) if decay.target is DecayTarget.OLD_RECENT else cache_k[:, :ref]
        rates = difference_rates(new_first, to_device(old, new_first.device), decay.min_rate, decay.max_rate)
        repeats = -(-self.count // ref)
        self.rates[self.start:self.start + self.count] = rates.repeat(repeats)[:self.count]

    def apply(self) -> None:
        """End of a block: w <- w * rate on the decaying tokens."""
        if not self.active:
            return
        if not bool(self.mask.any()):
            self.active = False
            return
        self.weights[self.mask] *= self.rates[self.mask]
        self.trivial = False  # (a rate of exactly 1 leaves the weights at 1, and multiplying by 1 is exact)

    def count_down(self) -> tuple[int, int] | None:
        """End of a block: count down; when the old tokens are due, their span ``(start, count)`` in tokens
        (the layer drops those slots, then calls ``finish_eviction``)."""
        if self.evict_steps <= 0:
            return None
        self.evict_steps -= 1
        if self.evict_steps > 0:
            return None
        return self.evict_start, self.evict_count

    def finish_eviction(self) -> None:
        """The old slots are gone: no token decays any more."""
        self.start = self.count = 0
        self.active = False
        self.mask.zero_()
        self.rates.fill_(1.0)
        self.evict_start = self.evict_count = 0
        self.trivial = True  # only the old tokens ever had weights other than 1, and they are gone

    # ---- reads ------------------------------------------------------------------------------------------------

    def window(self, tokens: int) -> tuple[torch.Tensor | None, int | None]:
        """The weights of a window of the first ``tokens`` tokens (None: all 1), and how many of its first
        tokens may differ from 1."""
        if self.trivial:
            return None, None
        # weighted tokens only ever move towards the front (rolls and drops shift slots left, writes reset
        # weights to 1), so the end of the decay span set at the switch bounds them
        return self.weights[:tokens], self.start + self.count

    def old_weight_range(self) -> list[float] | None:
        """Min and max weight of the decaying tokens, if any (for the block report)."""
        if not self.active or self.count <= 0:
            return None
        span = self.weights[self.start:self.start + self.count]
        return [round(float(span.min()), 6), round(float(span.max()), 6)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weights, self.mask, self.rates))
