"""PARM step by step (docs/ALGORITHM.md §13): candidates are denoised in lockstep; at chosen fractions of the
DDPM schedule each live candidate's predicted image (the scheduler's x0 estimate, decoded) is asked the
clarity question, and once it is clear, the potential question, once. A candidate judged without potential
STOPS there: no more UNet calls (the released PARM code renders every candidate to the end). The rest finish
and the outcome score picks. A check never stops every candidate still running: when it would, the least bad
of them (highest potential, then lowest index) runs on, so that one candidate always finishes.

`ParmControl` holds that rule for any loop that steps candidates: `parm_best_of_n` below (diffusers' DDPM, the
reference pipeline) and the GoT PARM Guider in ComfyUI (nodes/judge.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..images import ImageInput, as_rgb_image
from ..pipeline import GoTPipeline, Progress, ReasoningSettings, RenderSettings, to_pil
from ..ssgm.decode import decode
from ..ssgm.denoise import DenoiseRun
from .candidates import Candidate, Selection, candidate_reasonings, check_candidates
from .judge import Judge
from .scores import JudgeInputError, check_fraction, ranking

DEFAULT_CHECKS = (0.2, 0.4, 0.6)


@dataclass(frozen=True)
class ParmSettings:
    checks: tuple[float, ...] = DEFAULT_CHECKS  # fractions of the schedule after which candidates are judged
    clarity_threshold: float = 0.5  # P(clear) at or above this: clear, ask the potential question
    potential_threshold: float = 0.5  # P(potential) below this: stop the candidate

    def __post_init__(self) -> None:
        if not self.checks:
            raise JudgeInputError("PARM needs at least one check point (a fraction of the schedule, e.g. 0.4)")
        for value in self.checks:
            check_fraction(value, "a PARM check point", "give fractions of the schedule such as 0.2, 0.4, 0.6")
        check_fraction(self.clarity_threshold, "the clarity threshold", "0.5 is 'more likely clear than not'")
        check_fraction(self.potential_threshold, "the potential threshold", "0.5 is 'more likely yes than no'")


@dataclass
class ParmTrack:
    """One candidate's PARM record."""

    clarity: list[tuple[float, float]] = field(default_factory=list)  # (fraction, P(clear))
    potential: float | None = None
    stopped_at: float | None = None


class ParmControl:
    """Which candidates still run, and the judgement at each check point."""

    def __init__(self, count: int, steps: int, settings: ParmSettings) -> None:
        self.settings = settings
        # After how many steps each check runs; a check at the last step would save nothing.
        self.checks = {min(max(1, round(f * steps)), steps): f for f in sorted(settings.checks)
                       if round(f * steps) < steps}
        self.live = list(range(count))
        self.tracks = [ParmTrack() for _ in range(count)]

    def due(self, done: int) -> bool:
        """A check runs after `done` steps (and some live candidate is still to be judged)."""
        return done in self.checks and bool(self.pending())

    def pending(self) -> list[int]:
        """Live candidates not yet judged to have potential: the ones whose predicted image is looked at."""
        return [i for i in self.live if self.tracks[i].potential is None]

    def assess(self, done: int, previews: dict[int, Image.Image], judge: Judge, prompt: str) -> list[int]:
        """Judge the pending candidates' predicted images; returns the candidates stopped now."""
        fraction = self.checks[done]
        pending = sorted(previews)
        clear = []
        for index, p in zip(pending, judge.clarity([previews[i] for i in pending], prompt)):
            self.tracks[index].clarity.append((fraction, p))
            if p >= self.settings.clarity_threshold:
                clear.append(index)
        weak = []
        for index, p in zip(clear, judge.potential([previews[i] for i in clear], prompt) if clear else []):
            self.tracks[index].potential = p
            if p < self.settings.potential_threshold:
                weak.append(index)
        if weak and len(weak) == len(self.live):  # never stop them all: the least bad one runs on
            weak.remove(weak[ranking([self.tracks[i].potential for i in weak])[0]])
        for index in weak:
            self.live.remove(index)
            self.tracks[index].stopped_at = fraction
        return weak


def parm_best_of_n(pipeline: GoTPipeline, judge: Judge, prompt: str, *, candidates: int,
                   image: ImageInput | None = None, chain_text: str | None = None,
                   render: RenderSettings = RenderSettings(), reasoning: ReasoningSettings = ReasoningSettings(),
                   sample_chains: bool = False, parm: ParmSettings = ParmSettings(),
                   progress: Progress = Progress()) -> Selection:
    """best_of_n with PARM's step-wise judgement: the same candidates (seed render.seed + i), stopped early
    where the judge sees no potential. A finished candidate's latents are exactly best_of_n's."""
    count = check_candidates(candidates)
    source = as_rgb_image(image, "source image") if image is not None else None
    chains = candidate_reasonings(pipeline, prompt, count, source, chain_text, reasoning, sample_chains, progress)
    conditioned = {}
    for turn in chains:  # one conditioning per distinct chain
        if id(turn) not in conditioned:
            conditioned[id(turn)] = pipeline.conditioning(turn, source, render.width, render.height, progress)
    pipeline.use_stage("unet", progress, "denoise")
    runs = [DenoiseRun(pipeline.unet, conditioned[id(turn)][0], render.scales_for(turn.task), width=render.width,
                       height=render.height, steps=render.steps,
                       generator=torch.Generator(pipeline.device).manual_seed(render.seed + index),
                       latent_dtype=pipeline.vae.dtype, skip_zero_weight=render.skip_zero_weight)
            for index, turn in enumerate(chains)]
    control = ParmControl(count, render.steps, parm)
    previews: dict[int, Image.Image] = {}
    for done in range(1, render.steps + 1):
        for index in control.live:
            runs[index].step()
        if progress.on_step is not None:
            progress.on_step(done, render.steps)
        if control.due(done):
            pipeline.use_stage("vae", progress, "decode")
            looked_at = {i: _image(pipeline, runs[i].predicted_x0) for i in control.pending()}
            pipeline.use_for(judge.chat.model, progress, "judge")
            control.assess(done, looked_at, judge, prompt)
            previews.update(looked_at)
            pipeline.use_stage("unet", progress, "denoise")
    pipeline.use_stage("vae", progress, "decode")
    finished = {i: _image(pipeline, runs[i].latents) for i in control.live}
    made = []
    for index, (turn, run, track) in enumerate(zip(chains, runs, control.tracks)):
        done = index in finished
        made.append(Candidate(index, render.seed + index, turn, conditioned[id(turn)][1],
                              finished[index] if done else previews[index], run.latents if done else None,
                              run.done, track.stopped_at, tuple(track.clarity), track.potential))
    pipeline.use_for(judge.chat.model, progress, "judge")
    live = control.live
    judged = judge.score([made[i].image for i in live], prompt, [made[i].chain for i in live])
    scores = [None] * count
    for index, score in zip(live, judged):
        scores[index] = score
    return Selection(made, scores, live[ranking([s.score for s in judged])[0]])


def _image(pipeline: GoTPipeline, latents: torch.Tensor) -> Image.Image:
    return to_pil(decode(pipeline.vae, latents))


def parse_checks(text: str | Sequence[float]) -> tuple[float, ...]:
    """Check points from '0.2, 0.4, 0.6' (a node's text widget, the CLI) or a sequence of numbers."""
    if isinstance(text, str):
        try:
            return tuple(float(part) for part in text.replace(",", " ").split())
        except ValueError as err:
            raise JudgeInputError(f"PARM check points must be numbers from 0 to 1 such as '0.2, 0.4, 0.6', got "
                                  f"{text!r}") from err
    return tuple(text)
