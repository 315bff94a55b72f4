"""Scene Recall Frames: one frame that stands for a whole scene when it is recalled.

While a scene runs, its clean passes record the pre-RoPE keys/values of its first frames and accumulate
its mean query ``qbar`` per head (``SceneRecorder``). At the scene's last block each layer builds the
recall frame from the candidate frames (official: scene frames 0, 4, 8 of the first 12; paper: M = 5
from the "stable stage"):

    e_{m,u} = mean_h <K_{m,u,h}, qbar_h>                 (raw dot product, per candidate m and position u)
    alpha_{m,u} = softmax_m(e_{m,u});  K_u = w * K_{0,u} + (1 - w) * sum_m alpha_{m,u} K_{m,u}   (V alike)

with w = 0.9 in the official code (a hidden default) and w = 0 in the paper (pure fusion). The
``token_select`` variant takes, per position, the candidate with the highest e. Computed in float32.

Who changes what: each ``EchoLayerMemory`` owns one ``SceneRecorder`` (made by its ``allocate``); the
recorder's own methods change it: ``memory.echo_memory`` starts and stops the recording around every
clean pass (``start``/``stop``), the layer feeds it (``record``) and clears it at a switch (``clear``).
"""

from __future__ import annotations

import torch

from .config import EchoMemoryConfig, RecallFusion
from .devices import to_device, to_storage
from .kv_storage import KVFormat
from .rolling_anchors import AnchorPool
from .scene_pool import POOL_DEVICE


def recall_frame(candidates: list[tuple[torch.Tensor, torch.Tensor]], q_sum: torch.Tensor, q_count: float,
                 fusion: RecallFusion, base_weight: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fuse candidate frames ``[(k, v)]`` (each ``[P, H, d]``) into one recall frame, float32 ``[P, H, d]``.

    None when nothing was recorded (no candidate or no query statistics).
    """
    if not candidates or q_count <= 0:
        return None
    q_mean = (q_sum / max(q_count, 1.0)).to(torch.float32).to(candidates[0][0].device)
    k = torch.stack([c[0] for c in candidates]).to(torch.float32)  # [M, P, H, d]
    v = torch.stack([c[1] for c in candidates]).to(torch.float32)
    scores = (k * q_mean.unsqueeze(0).unsqueeze(0)).sum(dim=-1).mean(dim=-1)  # [M, P]
    base = max(0.0, min(1.0, base_weight))
    if fusion is RecallFusion.SCORE_WEIGHTED and k.shape[0] > 1:
        alpha = torch.softmax(scores, dim=0).unsqueeze(-1).unsqueeze(-1)
        fused_k, fused_v = (k * alpha).sum(dim=0), (v * alpha).sum(dim=0)
        return k[0] * base + fused_k * (1.0 - base), v[0] * base + fused_v * (1.0 - base)
    positions = torch.arange(k.shape[1], device=k.device)
    best = scores.argmax(dim=0) * k.shape[1] + positions
    return k.reshape(-1, *k.shape[2:]).index_select(0, best), v.reshape(-1, *v.shape[2:]).index_select(0, best)


class SceneRecorder:
    """What the running scene records in one layer for its Scene Recall Frame: the sum and count of its clean
    queries per head and channel (compute device) and which of its frames are candidates. The candidates are
    read from the layer's anchor pool, which holds the scene's first frames anyway
    (``EchoMemoryConfig.recall_candidates_in_anchor_pool``); with a layout whose candidates can fall outside
    it, the recorder keeps copies (storage device, in the layer's storage format)."""

    def __init__(self, config: EchoMemoryConfig, heads: int, head_dim: int, kv: KVFormat,
                 device: torch.device, storage: torch.device):
        self.config, self.kv, self.device, self.storage = config, kv, device, storage
        self.copies = not config.recall_candidates_in_anchor_pool
        """Whether the candidates are copied here (else read from the anchor pool)."""
        self.active = False
        """Recording the current call (the clean pass, while some transition carries a recall frame)."""
        self.q_sum = torch.zeros(heads, head_dim, dtype=torch.float32, device=device)
        self.q_count = 0.0
        self.frames: list[tuple[torch.Tensor, torch.Tensor]] = []  # copied candidates (``copies``)
        self.candidates: list[int] = []  # the scene frames that are candidates, in order
        self.recorded = 0  # frames of the scene seen so far (up to recall_storage_frames)

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int) -> None:
        """Add one clean pass: its queries to the statistics, its frames that are candidates to the list (keys
        and values in the storage format, copied only when the anchor pool may not hold them)."""
        cfg, p = self.config, frame_tokens
        self.q_sum += q.detach().to(torch.float32).sum(dim=(0, 1))
        self.q_count += float(q.shape[0] * q.shape[1])
        for i in range(k.shape[1] // p):
            index = self.recorded
            if index >= cfg.recall_storage_frames:
                break
            if index < cfg.recall_source_frames and index % cfg.recall_stride == 0:
                self.candidates.append(index)
                if self.copies:
                    frame = slice(i * p, (i + 1) * p)
                    self.frames.append((to_storage(k[0, frame], self.storage), to_storage(v[0, frame], self.storage)))
            self.recorded += 1

    def clear(self) -> None:
        """A new scene starts: nothing recorded."""
        self.q_sum.zero_()
        self.q_count = 0.0
        self.frames = []
        self.candidates = []
        self.recorded = 0
        self.active = False

    def recall_frame(self, pool: AnchorPool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This layer's Scene Recall Frame of the running scene: fused on the compute device from the recorded
        candidates (read from the layer's anchor ``pool`` unless copied), returned in the layer's storage format
        on the CPU (where the scene pool keeps its frames; the bytes a recall puts back into the cache); None when
        nothing was recorded."""
        cfg = self.config
        stored = self.frames if self.copies else [pool.scene_frame(i) for i in self.candidates]
        candidates = [(self.kv.decode(to_device(k, self.device)), self.kv.decode(to_device(v, self.device)))
                      for k, v in stored]
        made = recall_frame(candidates, self.q_sum, self.q_count, cfg.recall_fusion, cfg.recall_base_frame_weight)
        if made is None:
            return None
        kv = self.kv
        return (to_storage(kv.encode(made[0].to(kv.dtype)), POOL_DEVICE),
                to_storage(kv.encode(made[1].to(kv.dtype)), POOL_DEVICE))

    @property
    def device_bytes(self) -> int:
        return self.q_sum.numel() * self.q_sum.element_size()

    @property
    def storage_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.frames)
