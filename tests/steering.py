"""Steering the tiny (random) GoT MLLM in tests with logits processors, the public hook of `reason`: no token
repeated, so greedy chains vary, and a chosen token forced at a chosen step, to reach each stop on purpose."""

from __future__ import annotations

import math
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


class ScriptedJudge:
    """Steers a chat model used as a judge (got_backend.judge): each yes/no question gets the next P(yes) of its
    script (the first answer token's probability split between "yes" and "no", nothing else), recognised by a
    phrase of its text; `correction` is written token by token when the judge is asked for one. `asked` records
    (phrase, P(yes)) in the order the questions came."""

    PHRASES = {"outcome": "accurately represent the prompt? Please", "object": "Does this image show",
               "clarity": "clear enough to judge", "potential": "have the potential", "correction": "Write one short"}

    def __init__(self, tokenizer, correction: str = "", **answers: list[float]) -> None:
        self.tokenizer, self.answers = tokenizer, {kind: list(values) for kind, values in answers.items()}
        self.yes, self.no = (tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
        self.correction = tokenizer(correction, add_special_tokens=False)["input_ids"] + [
            tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.asked: list[tuple[str, float]] = []
        self._writing: tuple[str, torch.Tensor] | None = None  # (kind, question ids) of the answer being written

    def _kind(self, input_ids: torch.Tensor) -> tuple[str, int]:
        if self._writing is not None:
            kind, question = self._writing
            if input_ids.shape[1] > question.shape[1] and torch.equal(input_ids[:, :question.shape[1]], question):
                return kind, question.shape[1]  # a later token of the same answer
        text = self.tokenizer.decode(input_ids[0].tolist())
        kind = next((k for k, phrase in self.PHRASES.items() if phrase in text), "other")
        self._writing = (kind, input_ids.clone())
        return kind, input_ids.shape[1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        kind, start = self._kind(input_ids)
        forced = torch.full_like(scores, float("-inf"))
        if kind == "correction":
            forced[:, self.correction[min(input_ids.shape[1] - start, len(self.correction) - 1)]] = 0.0
            return forced
        if kind not in self.answers:
            return scores
        p = self.answers[kind].pop(0)
        self.asked.append((kind, p))
        forced[:, self.yes], forced[:, self.no] = math.log(max(p, 1e-12)), math.log(max(1 - p, 1e-12))
        return forced
