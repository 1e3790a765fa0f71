"""Steering the tiny (random) GoT MLLM in tests with logits processors, the public hook of `reason`: no token
repeated, so greedy chains vary, and a chosen token forced at a chosen step, to reach each stop on purpose."""

from __future__ import annotations

import torch
from transformers import NoRepeatNGramLogitsProcessor


class ForceToken:
    """A transformers-style logits processor that makes `token` the `index`-th new token of a turn."""

    def __init__(self, index: int, token: int) -> None:
        self.index, self.token, self.start = index, token, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.start = input_ids.shape[1] if self.start is None else self.start
        if input_ids.shape[1] - self.start + 1 != self.index:
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token] = 0.0
        return forced


def steer(index: int | None = None, token: int | None = None) -> list:
    """No repeated tokens (transformers' own processor: varied greedy chains), and `token` forced at `index` if
    given."""
    processors = [NoRepeatNGramLogitsProcessor(1)]
    return processors + ([ForceToken(index, token)] if index is not None else [])
