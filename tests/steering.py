"""Steering the tiny (random) GoT MLLM in tests with logits processors, the public hook of `reason`: no token
repeated, so greedy chains vary, and a chosen token forced at a chosen step, to reach each stop on purpose."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import NoRepeatNGramLogitsProcessor


class ForceToken:
    """A transformers-style logits processor that makes `token` the `index`-th new token of a turn (or, given
    several tokens, makes them the new tokens from the `index`-th on: the model "writes" a chosen chain). The
    count goes on over several `generate` calls that continue one sequence."""

    def __init__(self, index: int, token: int | Sequence[int]) -> None:
        self.index, self.start = index, None
        self.tokens = [token] if isinstance(token, int) else list(token)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.start = input_ids.shape[1] if self.start is None else self.start
        offset = input_ids.shape[1] - self.start + 1 - self.index
        if not 0 <= offset < len(self.tokens):
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[offset]] = 0.0
        return forced


def steer(index: int | None = None, token: int | None = None) -> list:
    """No repeated tokens (transformers' own processor: varied greedy chains), and `token` forced at `index` if
    given."""
    processors = [NoRepeatNGramLogitsProcessor(1)]
    return processors + ([ForceToken(index, token)] if index is not None else [])
