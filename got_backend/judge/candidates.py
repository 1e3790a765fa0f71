"""Best-of-N (docs/ALGORITHM.md §13): N candidates from different seeds and/or differently sampled chains,
rendered, judged and ranked; the best is kept with every score.

Candidate i is rendered with the seed `render.seed + i`, so the chosen one is exactly what rendering that seed
alone gives. Its chain is the one greedy chain for every candidate (reasoned once), the user's chain, or with
`sample_chains` a chain sampled with the reasoning seed `reasoning.seed + i` (sampled reasoning gives
different plans).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..images import ImageInput, as_rgb_image
from ..pipeline import GoTPipeline, PipelineError, Progress, ReasoningSettings, RenderSettings
from ..reasoning.turns import Reasoning
from ..ssgm.chain import GoTChain
from .judge import CandidateScore, Judge
from .scores import JudgeInputError, ranking

CandidateProgress = Callable[[int, int], None]  # (candidates rendered, candidates in all)


@dataclass(frozen=True)
class Candidate:
    index: int
    seed: int
    reasoning: Reasoning  # the turn it was rendered from
    chain: GoTChain
    image: Image.Image  # the finished image, or for a candidate PARM stopped the predicted image it was judged on
    latents: torch.Tensor | None  # the final DDPM latents (None: stopped before the end)
    unet_calls: int  # denoising steps run (one batched UNet call each)
    stopped_at: float | None = None  # the fraction of the schedule where PARM stopped it
    clarity: tuple[tuple[float, float], ...] = ()  # PARM: (fraction, P(clear)) at each check it was asked
    potential: float | None = None  # PARM: P(potential), asked once it was clear


@dataclass(frozen=True)
class Selection:
    candidates: list[Candidate]
    scores: list[CandidateScore | None]  # None: stopped by PARM, not judged as finished
    best: int  # index of the chosen candidate

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.best]

    @property
    def unet_calls(self) -> int:
        return sum(candidate.unet_calls for candidate in self.candidates)

    def report(self) -> str:
        """One line per candidate, the chosen one marked."""
        return "\n".join(describe_candidate(c.index, self.best, score, c.stopped_at, c.potential, c.seed)
                         for c, score in zip(self.candidates, self.scores))


def describe_candidate(index: int, best: int, score: CandidateScore | None, stopped_at: float | None,
                       potential: float | None, seed: int | None = None) -> str:
    """`* 2: seed 12: 0.800 (outcome 0.900, plan 0.700), potential 0.600`: one candidate's line."""
    what = score.describe() if score is not None else f"stopped at {stopped_at:.0%}"
    if potential is not None:
        what += f", potential {potential:.3f}"
    seeded = f"seed {seed}: " if seed is not None else ""
    return f"{'*' if index == best else ' '} {index}: {seeded}{what}"


def check_candidates(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise JudgeInputError(f"the number of candidates must be a whole number of at least 1, got {count!r}: "
                              "render at least one (--candidates in the CLI, the latent batch size in ComfyUI)")
    return count


def candidate_reasonings(pipeline: GoTPipeline, prompt: str, count: int, source: Image.Image | None,
                         chain_text: str | None, settings: ReasoningSettings, sample_chains: bool,
                         progress: Progress) -> list[Reasoning]:
    """The chain each candidate renders: the user's, one greedy chain shared, or one sampled chain each."""
    if chain_text is not None and sample_chains:
        raise JudgeInputError("a chain was given and sampled chains were asked for: give one or the other")
    if chain_text is not None:
        shared = pipeline.mllm.user_chain(prompt, chain_text, source)
        chains = [shared] * count
    elif sample_chains:
        base = settings.seed or 0
        chains = [pipeline.reason(prompt, source, replace(settings, do_sample=True, seed=base + i), progress)
                  for i in range(count)]
    else:
        chains = [pipeline.reason(prompt, source, settings, progress)] * count
    for index, reasoning in enumerate(chains):
        if not reasoning.ready_for_image:
            raise PipelineError(f"candidate {index}'s chain stopped on {reasoning.stop}, not <|im_gen_start|>, so "
                                "there is no image to render: raise max_new_tokens, or give a chain that ends "
                                "with <|im_gen_start|>")
    return chains


def best_of_n(pipeline: GoTPipeline, judge: Judge, prompt: str, *, candidates: int, image: ImageInput | None = None,
              chain_text: str | None = None, render: RenderSettings = RenderSettings(),
              reasoning: ReasoningSettings = ReasoningSettings(), sample_chains: bool = False,
              progress: Progress = Progress(), on_candidate: CandidateProgress | None = None) -> Selection:
    """Render `candidates` images of `prompt` (an edit of `image` if given), judge them, pick the best."""
    count = check_candidates(candidates)
    source = as_rgb_image(image, "source image") if image is not None else None
    chains = candidate_reasonings(pipeline, prompt, count, source, chain_text, reasoning, sample_chains, progress)
    rendered = []
    for index, turn in enumerate(chains):
        seed = render.seed + index
        result = pipeline.render_turn(turn, source, replace(render, seed=seed), progress)
        rendered.append(Candidate(index, seed, turn, result.chain, result.image, result.latents, render.steps))
        if on_candidate is not None:
            on_candidate(index + 1, count)
    pipeline.use_for(judge.chat.model, progress, "judge")
    scores = judge.score([c.image for c in rendered], prompt, [c.chain for c in rendered])
    return Selection(rendered, list(scores), ranking([s.score for s in scores])[0])
