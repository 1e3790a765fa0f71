"""Plain best-of-N against PARM step by step (docs/ALGORITHM.md §13) on the tiny GoT: UNet calls, wall time and
the judge's time per candidate, N = 4 candidates with two stopped at 40% of the schedule.

The judge is the tiny GoT MLLM itself (loaded once), steered by tests/steering.py's ScriptedJudge so that the
same two candidates are stopped every run (a random model would answer ~0.5 to everything).

    python bench/judge_parm.py [--models DIR] [--steps 10] [--size 64] [--json out.json]   # CPU by default
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from got_backend.chat import ChatModel  # noqa: E402
from got_backend.judge import Judge, ParmSettings, best_of_n, parm_best_of_n  # noqa: E402
from got_backend.pipeline import GoTPipeline, RenderSettings  # noqa: E402
from tests.steering import ScriptedJudge  # noqa: E402
from tests.test_judge import CHAIN, PROMPT  # noqa: E402

N = 4


class TimedJudge(Judge):
    """A Judge that adds up the seconds its questions take."""

    seconds = 0.0
    questions = 0

    def ask(self, queries):
        started = time.perf_counter()
        try:
            return super().ask(queries)
        finally:
            self.seconds += time.perf_counter() - started
            self.questions += len(queries)


def unet_counter(unet: torch.nn.Module) -> list[int]:
    calls = [0]
    unet.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def measure(pipeline: GoTPipeline, chat: ChatModel, render: RenderSettings, parm: bool) -> dict:
    script = ScriptedJudge(chat.tokenizer, clarity=[0.9] * N, potential=[0.9, 0.1, 0.8, 0.2],
                           outcome=[0.5, 0.6, 0.7, 0.4])
    judge = TimedJudge(chat, plan_weight=0.0, logits_processor=[script])
    calls = unet_counter(pipeline.unet)
    started = time.perf_counter()
    if parm:
        selection = parm_best_of_n(pipeline, judge, PROMPT, candidates=N, chain_text=CHAIN, render=render,
                                   parm=ParmSettings(checks=(0.4,)))
    else:
        selection = best_of_n(pipeline, judge, PROMPT, candidates=N, chain_text=CHAIN, render=render)
    wall = time.perf_counter() - started
    pipeline.unet._forward_pre_hooks.clear()
    return {"method": "PARM (check at 40%)" if parm else "plain best-of-N", "unet_calls": calls[0],
            "stopped": [c.index for c in selection.candidates if c.stopped_at is not None], "best": selection.best,
            "wall_s": round(wall, 3), "judge_s": round(judge.seconds, 3), "judge_questions": judge.questions,
            "judge_s_per_candidate": round(judge.seconds / N, 3),
            "judge_s_per_question": round(judge.seconds / max(1, judge.questions), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="a models folder with the converted tiny GoT (default: build one)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        models = args.models
        if models is None:
            from got_backend.convert import convert_release
            from got_backend.testing.fixtures import make_tiny_release

            release = make_tiny_release(Path(folder) / "release")
            models = Path(folder) / "models"
            models.mkdir()  # the converter writes into an existing ComfyUI/models folder
            convert_release(release.got_release, release.qwen_base, models)
        pipeline = GoTPipeline.from_models_dir(models, device=args.device)
        chat = ChatModel.of(pipeline.mllm)
        render = RenderSettings(width=args.size, height=args.size, steps=args.steps, seed=0)
        measure(pipeline, chat, RenderSettings(width=args.size, height=args.size, steps=1), parm=False)  # warm-up
        results = [measure(pipeline, chat, render, parm) for parm in (False, True)]
    for result in results:
        print(json.dumps(result))
    plain, stepwise = results
    print(f"PARM / plain best-of-N: UNet calls {stepwise['unet_calls'] / plain['unet_calls']:.2f}, "
          f"wall time {stepwise['wall_s'] / plain['wall_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "size": args.size, "device": args.device,
                                         "candidates": N, "results": results}, indent=1))


if __name__ == "__main__":
    main()
