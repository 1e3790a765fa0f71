"""PARM++ reflection through GoT's own edit mode (docs/ALGORITHM.md §13): while the best image scores below a
threshold, the judge writes one short correction; GoT edits the image with it as the instruction (reasoning with
the image, a new chain, rendering with the image as reference latent); the edit is judged by the original
prompt. At most `rounds` rounds; every round is kept, and the best-scoring round is the result (the earliest
on a tie, so a correction that makes things worse is not taken)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..pipeline import GoTPipeline, Progress, ReasoningSettings, RenderSettings
from ..reasoning.turns import Reasoning
from .candidates import Selection
from .judge import CandidateScore, Judge
from .scores import JudgeInputError, check_fraction, ranking

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ReflectionRound:
    index: int  # 0: the image reflection started from
    image: Image.Image
    reasoning: Reasoning | None  # the turn it was rendered from (round 0: the candidate's; later: the edit's)
    score: CandidateScore
    correction: str | None  # the judge's instruction that made this image (None for round 0)

    @property
    def chain_text(self) -> str:
        """The chain the image was rendered from ("" when it is not known: an image from outside GoT)."""
        return self.reasoning.text if self.reasoning is not None else ""


@dataclass(frozen=True)
class Reflection:
    rounds: tuple[ReflectionRound, ...]

    @property
    def latest(self) -> ReflectionRound:
        return self.rounds[-1]

    @property
    def best(self) -> ReflectionRound:
        return self.rounds[ranking([r.score.score for r in self.rounds])[0]]

    def needs_correction(self, threshold: float) -> bool:
        """PARM++'s rule: the latest round is corrected while it scores below the threshold."""
        return self.latest.score.score < threshold

    def then(self, image: Image.Image, reasoning: Reasoning | None, score: CandidateScore,
             correction: str) -> Reflection:
        """This reflection with one more round: `image`, made by editing the latest one with `correction`."""
        return Reflection((*self.rounds, ReflectionRound(len(self.rounds), image, reasoning, score, correction)))

    def report(self) -> str:
        lines = []
        for r in self.rounds:
            mark = "*" if r is self.best else " "
            how = "start" if r.correction is None else f"edit: {r.correction}"
            lines.append(f"{mark} round {r.index}: {r.score.describe()} ({how})")
        return "\n".join(lines)


def check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise JudgeInputError(f"reflection rounds must be a whole number of at least 0, got {rounds!r}")
    return rounds


def reflect(pipeline: GoTPipeline, judge: Judge, prompt: str, start: ReflectionRound, *, rounds: int,
            threshold: float = DEFAULT_THRESHOLD, render: RenderSettings = RenderSettings(),
            reasoning: ReasoningSettings = ReasoningSettings(), progress: Progress = Progress()) -> Reflection:
    """Correct `start` (round 0) by up to `rounds` edits while the latest round scores below `threshold`."""
    check_rounds(rounds)
    check_fraction(threshold, "the reflection threshold", "reflect while the judge's score is below it")
    reflection = Reflection((start,))
    while len(reflection.rounds) <= rounds and reflection.needs_correction(threshold):
        pipeline.use_for(judge.chat.model, progress, "judge")
        correction = judge.correction(reflection.latest.image, prompt)
        edit = pipeline.generate(correction, reflection.latest.image, render=render, reasoning=reasoning,
                                 progress=progress)
        made = edit.renders[-1]
        pipeline.use_for(judge.chat.model, progress, "judge")
        (score,) = judge.score([edit.image], prompt, [made.chain])
        reflection = reflection.then(edit.image, made.reasoning, score, correction)
    return reflection


def first_round(selection: Selection) -> ReflectionRound:
    """Round 0 of a reflection: the candidate best-of-N chose."""
    chosen = selection.chosen
    return ReflectionRound(0, chosen.image, chosen.reasoning, selection.scores[selection.best], None)
