"""The judge: a Qwen2.5-VL chat model (got_backend/chat) asked yes/no questions about GoT's candidates
(docs/ALGORITHM.md §13). Any Qwen2.5-VL folder can judge, the GoT MLLM included (`ChatModel.of(got_mllm)`:
the same weights, loaded once)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ..chat import ChatError, ChatModel
from ..chat.model import FIRST_TOKEN_BATCH
from ..reasoning.prompts import check_text
from ..reasoning.sampling import LogitsProcessor
from ..ssgm.chain import GoTChain
from . import questions
from .scores import (DEFAULT_PLAN_WEIGHT, NO_WORDS, YES_WORDS, JudgeInputError, check_fraction, combined_score,
                     object_crops, yes_probability)

CORRECTION_TOKENS = 48  # a correction is one short sentence
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>")

JudgeProgress = Callable[[int, int], None]  # (questions answered, questions in this call)


@dataclass(frozen=True)
class CandidateScore:
    """What the judge thinks of one finished candidate."""

    outcome: float  # P(yes) to the outcome question
    plan: float | None  # mean P(yes) over the chain's objects (None: no chain, or no object with a phrase)
    score: float  # what candidates are ranked by (scores.combined_score)

    def describe(self) -> str:
        plan = "" if self.plan is None else f", plan {self.plan:.3f}"
        return f"{self.score:.3f} (outcome {self.outcome:.3f}{plan})"


class Judge:
    """Scores images with a chat model. `logits_processor` is applied to every answer (tests steer the tiny
    model's answers with it); `should_cancel` is checked between batches of questions and raises
    ReasoningCancelled; `on_progress` hears (answered, asked) after each batch."""

    def __init__(self, chat: ChatModel, *, plan_weight: float = DEFAULT_PLAN_WEIGHT,
                 logits_processor: Sequence[LogitsProcessor] = (),
                 should_cancel: Callable[[], bool] | None = None, on_progress: JudgeProgress | None = None) -> None:
        self.chat = chat
        self.plan_weight = check_fraction(plan_weight, "the plan weight",
                                          "0 ranks by the outcome question alone, 1 by the plan alone")
        self.logits_processor = tuple(logits_processor)
        self.should_cancel, self.on_progress = should_cancel, on_progress
        self.yes_words, self.no_words = self._one_token_spellings(YES_WORDS), self._one_token_spellings(NO_WORDS)

    def _one_token_spellings(self, words: Sequence[str]) -> tuple[str, ...]:
        """The spellings this tokenizer writes as one token, each token once."""
        kept, seen = [], set()
        for word in words:
            try:
                token = self.chat.word_token(word)
            except ChatError:
                continue
            if token not in seen:
                kept.append(word)
                seen.add(token)
        if not kept:
            raise JudgeInputError(f"the judge's tokenizer writes none of {', '.join(map(repr, words))} as one token: "
                                  "it is not a Qwen2.5-VL tokenizer; pick a Qwen2.5-VL folder as the judge")
        return tuple(kept)

    # The questions

    def ask(self, queries: Sequence[tuple[str, Image.Image]]) -> list[float]:
        """P(yes) (scores.yes_probability) for each (question, image)."""
        words = self.yes_words + self.no_words
        answers: list[float] = []
        for start in range(0, len(queries), FIRST_TOKEN_BATCH):
            chunk = queries[start:start + FIRST_TOKEN_BATCH]
            probabilities = self.chat.first_token_probabilities(
                chunk, words, logits_processor=self.logits_processor, should_cancel=self.should_cancel).probabilities
            yes = len(self.yes_words)
            answers += [yes_probability(row[:yes].tolist(), row[yes:].tolist()) for row in probabilities]
            if self.on_progress is not None:
                self.on_progress(len(answers), len(queries))
        return answers

    def outcome(self, images: Sequence[Image.Image], prompts: str | Sequence[str]) -> list[float]:
        """The released selector's outcome score of each image for its prompt."""
        return self.ask([(questions.outcome_question(p), im) for im, p in zip(images, _per_image(images, prompts))])

    def plan(self, images: Sequence[Image.Image], chains: Sequence[GoTChain | None]) -> list[float | None]:
        """The plan score of each image: the mean P(yes) that its boxes' crops show their phrases."""
        if len(chains) != len(images):
            raise JudgeInputError(f"{len(images)} images but {len(chains)} chains: give one chain per image, or "
                                  "none")
        crops = [object_crops(image, chain) if chain is not None else [] for image, chain in zip(images, chains)]
        answers = iter(self.ask([(questions.object_question(phrase), crop) for each in crops
                                 for phrase, crop in each]))
        return [sum(next(answers) for _ in each) / len(each) if each else None for each in crops]

    def score(self, images: Sequence[Image.Image], prompts: str | Sequence[str],
              chains: Sequence[GoTChain | None] | None = None) -> list[CandidateScore]:
        """Outcome and plan scores of finished candidates, and what they are ranked by."""
        if not images:
            raise JudgeInputError("there are no images to judge: give at least one candidate")
        outcomes = self.outcome(images, prompts)
        plans = self.plan(images, chains) if chains is not None and self.plan_weight > 0 else [None] * len(images)
        return [CandidateScore(o, p, combined_score(o, p, self.plan_weight)) for o, p in zip(outcomes, plans)]

    def clarity(self, images: Sequence[Image.Image], prompt: str) -> list[float]:
        """PARM: is each intermediate image clear enough to judge?"""
        check_judge_prompt(prompt)
        return self.ask([(questions.clarity_question(prompt), image) for image in images])

    def potential(self, images: Sequence[Image.Image], prompt: str) -> list[float]:
        """PARM: can each (clear) intermediate image still become a faithful one?"""
        check_judge_prompt(prompt)
        return self.ask([(questions.potential_question(prompt), image) for image in images])

    def correction(self, image: Image.Image, prompt: str) -> str:
        """PARM++: one short edit instruction that would make `image` match `prompt` (greedy)."""
        check_judge_prompt(prompt)
        answer = self.chat.generate(questions.correction_request(prompt), image, max_new_tokens=CORRECTION_TOKENS,
                                    logits_processor=self.logits_processor, should_cancel=self.should_cancel)
        text = " ".join(_SPECIAL_TOKEN.sub(" ", answer.text).split())  # GoT's prompt must not get special tokens
        if not text:
            raise JudgeInputError("the judge wrote an empty correction, so there is no edit to make: use another "
                                  "judge model, or no reflection")
        return text


def _per_image(images: Sequence[Image.Image], prompts: str | Sequence[str]) -> list[str]:
    """One prompt per image: a single prompt is shared; a list must match the images in length."""
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images):
        raise JudgeInputError(f"{len(images)} images but {len(prompts)} prompts: give one prompt for all images, "
                              "or one per image")
    for prompt in prompts:
        check_judge_prompt(prompt)
    return list(prompts)


def check_judge_prompt(prompt: str) -> None:
    """A prompt to judge images by: not empty, and text as `check_text` reads it (checked before any model work)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise JudgeInputError("the prompt to judge the images by is empty: give the prompt they were made for")
    check_text(prompt, "prompt to judge the images by")
