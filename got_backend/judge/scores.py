"""How the judge's answers become scores (docs/ALGORITHM.md §13).

Yes/no: the judge's first answer token is read as a distribution over the vocabulary. Its "yes" may come in any
of the spellings in YES_WORDS (case, and with or without the leading space BPE gives a word after a space), its
"no" likewise; the score is the probability of all the yes spellings over that of all the yes and no spellings:

    P(yes) = sum_{v in YES} p(v) / (sum_{v in YES} p(v) + sum_{v in NO} p(v))

Each distinct first token is counted once. Normalising by yes + no (the released selector reads the softmax
probability of "yes" alone) keeps mass the judge puts on other tokens ("The", "I") from lowering every score
alike, and makes 0.5 mean "undecided".

Plan: for each object of the chain that has a phrase, the crop of its box (the pixels the reference's layout
fills, ssgm/layout.py) is asked whether it shows the phrase; the plan score is the mean of those P(yes). The
candidate's score is (1 - w) * outcome + w * plan with w = plan_weight (0 without a chain or without objects).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ..errors import GoTError
from ..ssgm.chain import GoTChain
from ..ssgm.layout import pixel_extent

YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_WORDS = ("no", "No", "NO", " no", " No", " NO")
DEFAULT_PLAN_WEIGHT = 0.5


class JudgeInputError(GoTError):
    """Settings or inputs the judge cannot work with."""


def yes_probability(yes: Sequence[float], no: Sequence[float]) -> float:
    """P(yes) from the first-token probabilities of the yes and the no spellings (0.5 if both are 0)."""
    total_yes, total_no = float(sum(yes)), float(sum(no))
    return 0.5 if total_yes + total_no == 0 else total_yes / (total_yes + total_no)


def check_fraction(value: float, what: str, fix: str) -> float:
    """`value` if it is a number in 0..1, else a JudgeInputError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise JudgeInputError(f"{what} must be a number from 0 to 1, got {value!r}: {fix}")
    return float(value)


def object_crops(image: Image.Image, chain: GoTChain) -> list[tuple[str, Image.Image]]:
    """(phrase, crop of its box) for each object with a phrase. A box that covers no pixel (zero area on the
    image's right or bottom edge, where PIL fills nothing) gets the pixel it touches, so that no phrased object
    leaves the plan score without a word. (The chat model shows every image squashed to 448x448, crops
    included.)"""
    width, height = image.size
    crops = []
    for obj in chain.objects:
        if obj.phrase:
            c0, r0, c1, r1 = pixel_extent(obj.box, width, height)
            c0, r0 = min(c0, width - 1), min(r0, height - 1)
            crops.append((obj.phrase, image.crop((c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)))))
    return crops


def combined_score(outcome: float, plan: float | None, plan_weight: float) -> float:
    """(1 - w) * outcome + w * plan; the outcome alone when there is no plan score."""
    return outcome if plan is None else (1.0 - plan_weight) * outcome + plan_weight * plan


def ranking(scores: Sequence[float]) -> list[int]:
    """Candidate indices best first; equal scores keep index order (the lower index wins a tie)."""
    return sorted(range(len(scores)), key=lambda index: (-scores[index], index))


def score_labels(scores: Sequence[float | None], most_digits: int = 6) -> list[str]:
    """`0.482 #1` per score (`stop` for a candidate stopped before judging): with as many decimals (2 at least)
    as it takes to tell different scores apart, and the rank (1 is the best; equal scores share the lower
    index's order, as `ranking` does)."""
    judged = [index for index, score in enumerate(scores) if score is not None]
    values = [scores[index] for index in judged]
    digits = next((d for d in range(2, most_digits + 1)
                   if len({f"{v:.{d}f}" for v in values}) == len(set(values))), most_digits)
    rank = {judged[position]: place + 1 for place, position in enumerate(ranking(values))}
    return [f"{score:.{digits}f} #{rank[index]}" if score is not None else "stop"
            for index, score in enumerate(scores)]
