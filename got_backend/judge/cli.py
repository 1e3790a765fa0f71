"""The judge's part of the command line (`python -m got_backend generate ... --candidates N --judge FOLDER
--reflect K`): best-of-N, PARM with --parm, PARM++ reflection (docs/ALGORITHM.md §13).

Writes OUT.png (the result), OUT.chain.txt (its chain), OUT.scores.txt (every candidate's and round's scores),
OUT.candidate-I.png (every candidate; a stopped one as the prediction it was judged on) and OUT.round-K.png
(every reflection round)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ..chat import ChatModel
from ..pipeline import GoTPipeline, Progress, ReasoningSettings, RenderSettings
from ..ssgm.sizes import source_aspect_size
from .candidates import best_of_n, check_candidates
from .judge import Judge
from .parm import ParmSettings, parm_best_of_n, parse_checks
from .reflect import DEFAULT_THRESHOLD, check_rounds, first_round, reflect
from .scores import DEFAULT_PLAN_WEIGHT, JudgeInputError, check_fraction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judging (best-of-N, PARM, PARM++ reflection)")
    group.add_argument("--candidates", type=int, default=1,
                       help="render N candidates (seeds SEED, SEED+1, ...) and keep the one the judge scores best")
    group.add_argument("--judge", type=Path,
                       help="a Qwen2.5-VL folder to judge with (the GoT MLLM folder itself: loaded once)")
    group.add_argument("--reflect", type=int, default=0,
                       help="at most K rounds of PARM++ reflection: while the score is below --threshold, the "
                            "judge writes a correction and GoT edits the image with it")
    group.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help=f"reflect while the score is below this, 0..1 (default {DEFAULT_THRESHOLD})")
    group.add_argument("--parm", metavar="CHECKS",
                       help="PARM step by step: judge the live candidates at these fractions of the schedule "
                            "(e.g. 0.2,0.4,0.6) and stop those without potential")
    group.add_argument("--plan-weight", type=float, default=DEFAULT_PLAN_WEIGHT,
                       help=f"weight of the plan score (boxes' crops) in a candidate's score (default "
                            f"{DEFAULT_PLAN_WEIGHT})")
    group.add_argument("--sample-chains", action="store_true",
                       help="each candidate reasons its own sampled chain (reasoning seed + i)")


def wants_judge(args: argparse.Namespace) -> bool:
    """Whether the run judges, after checking the judging options (before any model is loaded)."""
    check_candidates(args.candidates)
    check_rounds(args.reflect)
    check_fraction(args.threshold, "--threshold", "reflect while the judge's score is below it")
    check_fraction(args.plan_weight, "--plan-weight", "0 ranks by the outcome question alone")
    if args.parm is not None:
        ParmSettings(checks=parse_checks(args.parm))
    judging = args.candidates > 1 or args.reflect > 0 or args.parm is not None
    if judging and args.judge is None:
        raise JudgeInputError("--candidates, --reflect and --parm need a judge: --judge models/LLM/<a Qwen2.5-VL "
                              "folder> (the GoT folder itself works: it is loaded once)")
    return judging or args.judge is not None


def judged_run(args: argparse.Namespace, pipeline: GoTPipeline, chat: ChatModel, prompt: str,
               chain_text: str | None, source: Image.Image | None, render: RenderSettings,
               reasoning: ReasoningSettings, progress: Progress) -> int:
    judge = Judge(chat, plan_weight=args.plan_weight,
                  on_progress=lambda done, total: print(f"judge: {done}/{total} questions", flush=True))
    options = dict(candidates=args.candidates, image=source, chain_text=chain_text, render=render,
                   reasoning=reasoning, sample_chains=args.sample_chains, progress=progress)
    if args.parm is not None:
        selection = parm_best_of_n(pipeline, judge, prompt, parm=ParmSettings(checks=parse_checks(args.parm)),
                                   **options)
    else:
        selection = best_of_n(pipeline, judge, prompt, **options,
                              on_candidate=lambda done, total: print(f"candidate {done}/{total} rendered"))
    report = [f"candidates ({selection.unet_calls} UNet calls):", selection.report()]
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for candidate in selection.candidates:
        candidate.image.save(out.with_suffix(f".candidate-{candidate.index}.png"))
    final, chain = selection.chosen.image, selection.chosen.reasoning.text
    if args.reflect:
        reflection = reflect(pipeline, judge, prompt, first_round(selection), rounds=args.reflect,
                             threshold=args.threshold, render=render, reasoning=reasoning, progress=progress)
        for kept in reflection.rounds[1:]:
            kept.image.save(out.with_suffix(f".round-{kept.index}.png"))
        report += ["reflection:", reflection.report()]
        final, chain = reflection.best.image, reflection.best.chain_text
    if source is not None:  # an edit's result goes back to the source's aspect, as GoTPipeline's do
        final = final.resize(source_aspect_size(source.size, min(render.width, render.height)),
                             Image.Resampling.BICUBIC)
    final.save(out)
    out.with_suffix(".chain.txt").write_text(chain, encoding="utf-8")
    out.with_suffix(".scores.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    print(f"image -> {out} (scores -> {out.with_suffix('.scores.txt')})")
    return 0
