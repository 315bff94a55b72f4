"""Routing: which earlier scene a recall brings back, its RoPE jump, and the paper's automatic router
(appendix B).

Prompt features (official ``_compute_recall_prompt_features``), computed once per video over its scene
prompts. Words: lower-case runs of a letter followed by letters/apostrophes, longer than 2 characters,
minus a fixed stop list.

* ``IDF`` (no encoder): TF-IDF over the prompts' vocabulary, tf = 1 + ln(count), idf = ln((1+N)/(1+df)) + 1,
  L2-normalised.
* ``Similar``: drop the words found in at least max(2, ceil(0.7 N)) prompts, join the rest (or keep the
  prompt if nothing is left), encode with the text encoder (injected here as a function) and take the
  L2-normalised mean of its non-padding rows.

Recall target: the pool entry with the highest dot product (the first of equal ones); every earlier scene
is a candidate, including the previous one (paper option: exclude it). Jump: the gaps 1 - s_i over the
candidates, n = gap of the chosen / sum of gaps (0 if the sum is <= 1e-6), J = round(min + n (max - min)).

Paper appendix B (an option, ``auto`` transitions): the most similar earlier scene i* with s >= 0.85 means
smooth when i* is the previous scene, recall of i* otherwise; below the threshold a hard cut. Offsets
0 / min(45, 10 (t - i*)) / 45.

``SceneFeatures`` holds one video's features (made with its ``EchoMemoryState``, changed only by itself:
it caches what a switch asked for); the scene registry (``memory.scene_pool.SceneRegistry``) ranks the
pool's entries with them and resolves named recall targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import EchoMemoryConfig, MatchMethod, MatchScope, SceneMemoryError, Transition

STOP_WORDS = frozenset((
    "a an and are as at back be been before by for from has have he her his in into is it its of on or over "
    "same she shot static the their them this to under while with wearing young now seen").split())
_WORD = re.compile(r"[a-zA-Z][a-zA-Z']+")

TextEncoder = Callable[[list[str]], torch.Tensor]
"""Encodes prompts to ``[N, L, D]`` embeddings whose padding rows are zero (umT5 in ComfyUI)."""

AUTO_THRESHOLD = 0.85
HARD_CUT_JUMP = 45


def prompt_words(prompt: str) -> list[str]:
    return [w for w in _WORD.findall(prompt.lower()) if len(w) > 2 and w not in STOP_WORDS]


def idf_features(prompts: Sequence[str]) -> list[torch.Tensor]:
    words = [prompt_words(p) for p in prompts]
    df: dict[str, int] = {}
    for ws in words:
        for w in set(ws):
            df[w] = df.get(w, 0) + 1
    vocab = sorted(df)
    if not vocab:
        return [torch.zeros(1) for _ in prompts]
    index = {w: i for i, w in enumerate(vocab)}
    n = max(1, len(prompts))
    features = []
    for ws in words:
        feature = torch.zeros(len(vocab))
        counts: dict[str, int] = {}
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
        for w, c in counts.items():
            feature[index[w]] = (1.0 + math.log(float(c))) * (math.log((1.0 + n) / (1.0 + df[w])) + 1.0)
        features.append(F.normalize(feature, dim=0, eps=1e-6))
    return features


def filtered_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts without the words most of them share (what ``Similar`` encodes)."""
    words = [prompt_words(p) for p in prompts]
    df: dict[str, int] = {}
    for ws in words:
        for w in set(ws):
            df[w] = df.get(w, 0) + 1
    common_at = max(2, int(max(1, len(prompts)) * 0.7 + 0.999))
    common = {w for w, c in df.items() if c >= common_at}
    out = []
    for prompt, ws in zip(prompts, words, strict=True):
        kept = [w for w in ws if w not in common]
        out.append(" ".join(kept) if kept else prompt)
    return out


def pooled_feature(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean of the non-zero rows of ``[L, D]`` (all rows if every row is zero)."""
    valid = embeddings.abs().sum(dim=-1) > 0
    rows = embeddings[valid] if bool(valid.any()) else embeddings
    return F.normalize(rows.mean(dim=0).to(torch.float32), dim=0, eps=1e-6).cpu()


def similar_features(prompts: Sequence[str], encode: TextEncoder) -> list[torch.Tensor]:
    embeddings = encode(filtered_prompts(prompts))
    return [pooled_feature(embeddings[i]) for i in range(len(prompts))]


def prompt_features(prompts: Sequence[str], method: MatchMethod, encode: TextEncoder | None) -> list[torch.Tensor]:
    if method is MatchMethod.IDF:
        return idf_features(prompts)
    if encode is None:
        raise ValueError("'Similar' recall matching needs a text encoder; connect one or choose IDF matching")
    return similar_features(prompts, encode)


@dataclass(frozen=True)
class Candidate:
    """An earlier scene a recall may bring back, with its similarity to the current prompt."""

    key: int
    """Position of the entry in the pool (or the scene index for the router)."""
    similarity: float


def rank(feature: torch.Tensor, others: Sequence[torch.Tensor]) -> list[Candidate]:
    """Dot-product similarity of ``feature`` with each of ``others``, in their order."""
    return [Candidate(i, float(torch.dot(feature, other).item())) for i, other in enumerate(others)]


def best(candidates: Sequence[Candidate]) -> Candidate | None:
    """The most similar candidate; the first one wins a tie."""
    chosen = None
    for c in candidates:
        if chosen is None or c.similarity > chosen.similarity:
            chosen = c
    return chosen


def similarity_jump(chosen: float, candidates: Sequence[Candidate], min_jump: int, max_jump: int) -> int:
    """Official recall jump: the chosen scene's share of the similarity gaps, mapped to min..max."""
    if not candidates:
        return max_jump
    gaps = [max(0.0, 1.0 - c.similarity) for c in candidates]
    total = sum(gaps)
    share = 0.0 if total <= 1e-6 else max(0.0, 1.0 - chosen) / total
    share = max(0.0, min(1.0, share))
    return round(min_jump + share * (max_jump - min_jump))


def paper_recall_jump(scene: int, recalled: int) -> int:
    """Paper appendix B: min(45, 10 * scenes back)."""
    return min(HARD_CUT_JUMP, 10 * (scene - recalled))


@dataclass(frozen=True)
class Route:
    mode: Transition
    target: int | None
    jump: int
    similarity: float | None


def auto_route(scene: int, features: Sequence[torch.Tensor], threshold: float = AUTO_THRESHOLD) -> Route:
    """The paper's automatic router for scene ``scene`` (> 0) given every scene's feature."""
    if scene <= 0:
        raise ValueError("the first scene has no transition to route")
    ranked = rank(features[scene], features[:scene])
    top = best(ranked)
    if top is None or top.similarity < threshold:
        return Route(Transition.HARD_CUT, None, HARD_CUT_JUMP, None if top is None else top.similarity)
    if top.key == scene - 1:
        return Route(Transition.SMOOTH, None, 0, top.similarity)
    return Route(Transition.RECALL, top.key, paper_recall_jump(scene, top.key), top.similarity)


class SceneFeatures:
    """The routing features of one video's scenes, then of the loaded pool's entries (one document set).

    With the official scope (``MatchScope.VIDEO``) they are computed once over every prompt; with "so-far"
    a switch at scene t sees features computed over the scenes up to t and the pool (later scenes None).
    Empty when no scene routes (no recall or auto transition). ``compute=False`` only checks the plan.
    """

    def __init__(self, prompts: Sequence[str], entries: Sequence[Transition | None], pool_prompts: Sequence[str],
                 config: EchoMemoryConfig, encode: TextEncoder | None, compute: bool = True):
        self.prompts, self.pool_prompts = list(prompts), list(pool_prompts)
        self.method, self.scope, self.encode = config.match_method, config.match_scope, encode
        self.routes = any(m in (Transition.RECALL, Transition.AUTO) for m in entries)
        self.features: list[torch.Tensor] = []
        self._scoped: dict[int, list] = {}
        if not self.routes:
            return
        if self.method is MatchMethod.SIMILAR and encode is None:
            raise SceneMemoryError("'Similar' recall matching needs a text encoder; connect one or choose IDF "
                                   "matching")
        if self.scope is MatchScope.VIDEO and compute:
            self.features = self._documents(len(self.prompts))

    def _documents(self, scenes: int) -> list[torch.Tensor]:
        try:
            return prompt_features(self.prompts[:scenes] + self.pool_prompts, self.method, self.encode)
        except ValueError as err:
            raise SceneMemoryError(str(err)) from None

    def at(self, scene: int) -> list[torch.Tensor | None]:
        """The features a decision at scene ``scene`` sees, indexed like the whole video's (this video's
        scenes, then the loaded pool's entries). Empty when no scene routes."""
        if not self.routes:
            return []
        if self.scope is MatchScope.VIDEO:
            return self.features
        cached = self._scoped.get(scene)
        if cached is None:
            made = self._documents(scene + 1)
            cached = made[:scene + 1] + [None] * (len(self.prompts) - scene - 1) + made[scene + 1:]
            self._scoped = {scene: cached}
        return cached

    def of(self, scene: int) -> torch.Tensor | None:
        """Scene ``scene``'s own feature as a decision there sees it (None when no scene routes)."""
        return self.at(scene)[scene] if self.routes else None
