"""Parity of drift-gated phase compression with the official ``_compute_pc_scores`` / ``_select_history_middle``
(mingqiangWu/Echo-Forcing @ d0878fa), on one layer's full 21-frame history (12 x 128 heads, 1560-token frames).

Inputs are regenerated from seeds (recipe in tests/fixtures/echo_forcing/README.md); the official scores and
selections are stored in pc_scores.npz. Our scores come from the per-token summaries
(``memory.phase_compression``), a different but mathematically equal arrangement of the same formula.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from echo_forcing.memory.phase_compression import (
    PhaseCalibration,
    drift_gate,
    geometric_offsets,
    score_tokens,
    select_tokens,
    summarize,
    temporal_omega,
)

FIXTURE = Path(__file__).parent / "fixtures" / "echo_forcing" / "pc_scores.npz"


@pytest.fixture(scope="module")
def official():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def inputs(official):
    g = torch.Generator().manual_seed(7)
    history_k = torch.randn(1, 32760, 12, 128, generator=g)
    q_real = torch.randn(12, 64, generator=g)
    q_imag = torch.randn(12, 64, generator=g)
    abs_extra = torch.rand(12, 64, generator=g)
    q_recent = torch.randn(1, 4680, 12, 128, generator=g)
    counts = torch.randint(0, 10, (1, 32760), generator=g)
    assert history_k.double().sum().item() == pytest.approx(float(official["inputs_history_k_sum"]), rel=1e-9)
    assert int(counts.sum()) == int(official["inputs_counts_sum"])
    calib = PhaseCalibration(12, 128, torch.device("cpu"))
    calib.mean = torch.complex(q_real, q_imag)
    calib.abs_mean = calib.mean.abs() + abs_extra
    frames = torch.arange(5, 26).repeat_interleave(1560)
    return history_k[0], calib, q_recent, counts[0], frames


@pytest.mark.parametrize("lam, tag", [(3.0, "l3_sum"), (2.0, "l2_sum")])
def test_scores_and_selection_match_the_official_code(official, inputs, lam, tag):
    history_k, calib, q_recent, counts, frames = inputs
    gate = drift_gate(q_recent, calib, lam)
    assert gate.item() == pytest.approx(float(official[f"gate_{tag}"]), rel=1e-6)
    ours = score_tokens(summarize(history_k, calib, True), frames.max() + 1 - frames, gate, temporal_omega(128),
                        geometric_offsets(21))
    ours[-4680:] = -float("inf")  # the recent region (the newest 3 frames) is never a candidate
    reference = torch.from_numpy(official[f"fused_{tag}"])
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(ours))
    assert (ours[finite] - reference[finite]).abs().max().item() < 2e-5  # scores span about -11..16
    chosen = select_tokens(ours, counts, 3 * 1560, reuse_cap=8)
    assert chosen.tolist() == official[f"selected_{tag}"].tolist()
