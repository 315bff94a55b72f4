"""A deterministic stand-in for the umT5-XXL text encoder (demo, tests and parity fixtures only).

Real prompts are encoded by umT5 (in ComfyUI, core CLIPLoader + CLIPTextEncode). Where no text encoder
can be loaded, this gives every whitespace-separated word (lower-cased) its own fixed random row, seeded
by the SHA-256 of the word, and zero-pads to 512 rows like umT5's output. Prompts that share words get
similar mean embeddings, so prompt-similarity routing behaves sensibly with it.
"""

from __future__ import annotations

import hashlib

import torch

TEXT_LEN = 512


def word_row(word: str, text_dim: int) -> torch.Tensor:
    """The fixed N(0, 1) row of one word, ``[text_dim]`` float32."""
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return torch.randn(text_dim, generator=torch.Generator().manual_seed(seed))


def stand_in_text_embedding(prompts: list[str], text_dim: int) -> torch.Tensor:
    """``[len(prompts), 512, text_dim]`` float32: one row per word (at most 512), zeros after."""
    out = torch.zeros(len(prompts), TEXT_LEN, text_dim)
    for i, prompt in enumerate(prompts):
        for j, word in enumerate(prompt.lower().split()[:TEXT_LEN]):
            out[i, j] = word_row(word, text_dim)
    return out
