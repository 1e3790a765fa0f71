"""Choosing the next token from logits: greedy or sampled, as Hugging Face's `generate` does it.

Order (as in `generate`): repetition penalty, the caller's logits processors, then for sampling temperature,
top-k and top-p before drawing from the softmax; greedy takes the arg-max.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from ..errors import GoTError

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids [1, N], scores [1, V])
DEFAULT_MAX_NEW_TOKENS = 1024


class SamplingError(GoTError):
    """Sampling settings out of range."""


@dataclass(frozen=True)
class SamplingSettings:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0

    def check(self) -> None:
        if self.repetition_penalty <= 0:
            raise SamplingError(f"repetition_penalty must be > 0 (1.0 turns it off), got {self.repetition_penalty}")
        if not self.do_sample:
            return
        if self.temperature <= 0:
            raise SamplingError(f"temperature must be > 0, got {self.temperature} (use do_sample=False for greedy)")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")


@dataclass(frozen=True)
class ReasoningSettings:
    """How the MLLM writes a turn: the token limit and how tokens are picked; greedy by default, as the
    reference. `repetition_penalty` None: the model folder's generation config. `logits_processor`: callables
    (input_ids [1, N], scores [1, V]) -> scores, as in transformers."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float | None = None
    logits_processor: tuple[LogitsProcessor, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        object.__setattr__(self, "logits_processor", tuple(self.logits_processor))

    def sampling(self, default_penalty: float) -> SamplingSettings:
        """The token picker's settings, `default_penalty` standing in for an unset repetition penalty."""
        penalty = default_penalty if self.repetition_penalty is None else self.repetition_penalty
        return SamplingSettings(self.do_sample, self.temperature, self.top_p, self.top_k, self.seed, penalty)


class TokenPicker:
    """Picks tokens for one sequence; remembers the tokens it has seen for the penalty and the processors."""

    def __init__(self, settings: SamplingSettings, prompt_ids: Sequence[int], vocab_size: int, device: torch.device,
                 processors: Sequence[LogitsProcessor] = ()) -> None:
        settings.check()
        self.settings, self.processors = settings, list(processors)
        self.seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator(device=device).manual_seed(self.seed) if settings.do_sample else None
        self.ids = list(prompt_ids)
        self.seen: torch.Tensor | None = None
        if settings.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(sorted(set(self.ids)), dtype=torch.long, device=device)] = True

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token for float32 logits [V]; it is then counted as seen."""
        scores = logits
        if self.seen is not None:
            penalty = self.settings.repetition_penalty
            scores = torch.where(self.seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        if self.processors:
            ids = torch.tensor([self.ids], dtype=torch.long, device=logits.device)
            scores = scores[None]
            for processor in self.processors:
                scores = processor(ids, scores)
            scores = scores[0]
        token = self._sample(scores) if self.settings.do_sample else int(torch.argmax(scores))
        self.ids.append(token)
        if self.seen is not None:
            self.seen[token] = True
        return token

    def _sample(self, scores: torch.Tensor) -> int:
        settings = self.settings
        scores = scores / settings.temperature
        if 0 < settings.top_k < scores.numel():
            threshold = torch.topk(scores, settings.top_k).values[-1]
            scores = scores.masked_fill(scores < threshold, float("-inf"))
        if settings.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - settings.top_p
            drop[-1] = False  # keep at least the most likely token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        probabilities = scores.softmax(dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))
