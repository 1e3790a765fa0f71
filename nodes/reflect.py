"""GoT Reflect and GoT Reflection Round: PARM++ reflection (docs/ALGORITHM.md §13) unrolled in the graph.

One round: GoT Reflect (the judge scores the image and writes one short correction) -> GoT's edit mode with the
correction as the instruction (GoT Reasoner with task edit, the Plan Editor to see and drag the new plan,
Reference Encoder, SSGM Conditioner, GoT Guider at the edit scales, sampler, VAE Decode) -> GoT Reflection Round
(the judge scores the edit; the best round so far comes out). The Round asks for the edit lazily, so when the
latest image already scores at least the threshold, the edit branch does not run. Chain the Round's reflection
into the next GoT Reflect for another round: a graph holds at most K rounds, and rounds after a satisfying one
render nothing. The rule (which round is corrected, which one is best) is the backend's Reflection.

The correction is written even when no edit follows (what the judge would change, shown on the node): the
edit branch then always has an instruction, so a preview hung on it cannot fail the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from comfy_api.latest import io, ui
from PIL import Image

import comfy.utils

from ..got_backend.judge import CandidateScore, JudgeInputError, Reflection, ReflectionRound
from ..got_backend.judge.judge import check_judge_prompt
from ..got_backend.judge.reflect import DEFAULT_THRESHOLD
from ..got_backend.judge.scores import DEFAULT_PLAN_WEIGHT
from ..got_backend.reasoning.prompts import condition_image
from .comfy_bridge import check_widget_number, comfy_image
from .judge import FRACTION, judge_of, pil_batch, score_chart
from .model_management import ManagedVLM
from .reasoner import reason_or_interrupt
from .types import ChainSocket, ReasonedChain, ReflectionSocket, VLMSocket


@dataclass(frozen=True)
class ReflectionState:
    """A GOT_REFLECTION value: the rounds so far (each image also as the IMAGE it came in, so the result is not
    re-quantised), what they are judged by, and the judge's correction of the latest round ("" until written)."""

    reflection: Reflection
    images: tuple[torch.Tensor, ...]  # IMAGE [1, H, W, 3] per round
    prompt: str
    threshold: float
    plan_weight: float
    correction: str = ""

    @property
    def wants_edit(self) -> bool:
        return self.reflection.needs_correction(self.threshold)

    def then(self, image: torch.Tensor, view: Image.Image, chain: ReasonedChain | None,
             score: CandidateScore) -> ReflectionState:
        """One more round: `image` (`view`: as the judge saw it), GoT's edit of the latest round with the
        correction."""
        reasoning = chain.reasoning if chain is not None else None
        reflection = self.reflection.then(view, reasoning, score, self.correction)
        return replace(self, reflection=reflection, images=(*self.images, image), correction="")

    def check_edit_source(self, chain: ReasonedChain | None) -> None:
        """The edit's chain was reasoned over this state's latest image (the image its GoT Reflect gave to edit):
        a Round wired to an earlier round's Reflect would credit the edit to the wrong correction and drop a
        round. Without a chain, or for a chain typed with no Reasoner, there is nothing to compare."""
        images = chain.reasoning.sequence.images if chain is not None and chain.reasoning is not None else ()
        if images and images[0].image.tobytes() != condition_image(comfy_image(self.images[-1], "the round's "
                                                                                "image")).tobytes():
            raise JudgeInputError(
                f"GoT Reflection Round: the edit's chain was reasoned over another image than round "
                f"{len(self.reflection.rounds) - 1}'s, the latest of this `reflection`: connect `reflection` to the "
                "GoT Reflect of this round (the one whose image the edit's Reasoner got)")

    def report(self) -> str:
        rounds = len(self.reflection.rounds)
        verdict = (f"round {rounds - 1} scores below {self.threshold:g}: a next GoT Reflect edits it" if self.wants_edit
                   else f"round {rounds - 1} scores at least {self.threshold:g}: no further edit")
        return f"{self.reflection.report()}\n({verdict})"


def round_images(images: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Every round's image as one IMAGE batch, at round 0's size (an edit comes back at its source's aspect)."""
    height, width = images[0].shape[1:3]
    same = [image if image.shape[1:3] == (height, width) else
            comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bicubic", "disabled").movedim(1, -1)
            for image in images]
    return torch.cat([image.to(images[0].device, images[0].dtype) for image in same])


class GoTReflectNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTReflect",
            display_name="GoT Reflect",
            category="GoT/judge",
            description="PARM++ reflection, one round: the judge scores the image (as the GoT Judge does) and writes "
                        "one short correction. Render the correction with GoT's edit mode (GoT Reasoner, task edit, "
                        "on this node's image) and give the result to a GoT Reflection Round, which runs that edit "
                        "only while the latest image scores below the threshold.",
            inputs=[
                VLMSocket.Input("vlm", tooltip="The judge (GoT VLM Loader): the GoT MLLM itself or another "
                                            "Qwen2.5-VL."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the image was made for: it is judged by it and corrected "
                                        "towards it. Leave empty after a GoT Reflection Round (its prompt goes on)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=FRACTION[0], max=FRACTION[1], step=0.05,
                               tooltip="Edit while the latest image's score is below this (1: always edit, "
                                       "0: never)."),
                io.Float.Input("plan_weight", default=DEFAULT_PLAN_WEIGHT, min=FRACTION[0], max=FRACTION[1], step=0.05,
                               tooltip="With chains: score = (1 - w) * outcome + w * plan, as in the GoT Judge."),
                io.Image.Input("image", optional=True,
                               tooltip="Round 0: the image to correct (e.g. the GoT Judge's best). Leave empty "
                                       "when continuing from a GoT Reflection Round."),
                ChainSocket.Input("chain", optional=True,
                                  tooltip="Round 0: the chain the image was rendered from, for the plan score."),
                ReflectionSocket.Input("reflection", optional=True,
                                       tooltip="A further round: the GoT Reflection Round of the round before."),
            ],
            outputs=[
                io.String.Output("correction", display_name="correction",
                                 tooltip="The judge's instruction: the prompt of the GoT Reasoner (task edit)."),
                io.Image.Output("image_to_edit", display_name="image",
                                tooltip="The image to edit (the latest round): the Reasoner's and the Reference "
                                        "Encoder's image."),
                ReflectionSocket.Output("reflection_out", display_name="reflection",
                                        tooltip="The rounds so far, for the GoT Reflection Round."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, vlm: ManagedVLM, prompt: str, threshold: float, plan_weight: float,
                image: torch.Tensor | None = None, chain: ReasonedChain | None = None,
                reflection: ReflectionState | None = None) -> io.NodeOutput:
        for name, value in (("threshold", threshold), ("plan_weight", plan_weight)):
            check_widget_number("GoT Reflect", name, value, *FRACTION)
        if (image is None) == (reflection is None):
            raise JudgeInputError("GoT Reflect: connect either `image` (the first round: the image to correct) or "
                                  "`reflection` (a further round: the previous GoT Reflection Round), not "
                                  f"{'both' if image is not None else 'neither'}")
        if reflection is not None and prompt.strip() and prompt != reflection.prompt:
            raise JudgeInputError("GoT Reflect: a further round is judged by the first round's prompt; leave this "
                                  "prompt empty (or give the same one)")
        if image is not None:
            check_judge_prompt(prompt)  # the first round's prompt, before the judge loads
        pixels = pil_batch(image, "GoT Reflect's image", one=True) if image is not None else None
        judge = judge_of(vlm, plan_weight, comfy.utils.ProgressBar(1, node_id=cls.hidden.unique_id))  # loads it
        if pixels is not None:
            (score,) = reason_or_interrupt(lambda: judge.score(pixels, prompt, [chain] if chain is not None else None))
            round_0 = ReflectionRound(0, pixels[0], chain.reasoning if chain is not None else None, score, None)
            state = ReflectionState(Reflection((round_0,)), (image,), prompt, threshold, plan_weight)
        else:
            state = replace(reflection, threshold=threshold, plan_weight=plan_weight)
        if not state.correction:
            latest = state.reflection.latest.image
            state = replace(state, correction=reason_or_interrupt(lambda: judge.correction(latest, state.prompt)))
        shown = f"{state.report()}\ncorrection: {state.correction}"
        return io.NodeOutput(state.correction, state.images[-1], state, ui=ui.PreviewText(shown))


class GoTReflectionRoundNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTReflectionRound",
            display_name="GoT Reflection Round",
            category="GoT/judge",
            description="Ends a PARM++ reflection round: when the GoT Reflect's image scored below its threshold, "
                        "runs the edit connected to `edited` (only then), judges it by the prompt and keeps every "
                        "round. Out come the best round's image (the earliest on a tie, so an edit that made things "
                        "worse is not taken), every round's image, scores and correction, and a chart.",
            inputs=[
                VLMSocket.Input("vlm", tooltip="The judge (the same GoT VLM Loader as the GoT Reflect)."),
                ReflectionSocket.Input("reflection", tooltip="From the GoT Reflect of this round."),
                io.Image.Input("edited", lazy=True,
                               tooltip="GoT's edit of the Reflect's image with its correction (VAE Decode, resized "
                                       "back to the source's aspect). Run only when the round needs it."),
                ChainSocket.Input("chain", optional=True, lazy=True,
                                  tooltip="The edit's chain (Reasoner or Plan Editor), for the plan score."),
            ],
            outputs=[
                io.Image.Output("best", display_name="best",
                                tooltip="The best round's image so far."),
                ReflectionSocket.Output("reflection_out", display_name="reflection",
                                        tooltip="Every round so far, for the next round's GoT Reflect."),
                io.String.Output("report", display_name="report",
                                 tooltip="One line per round: score, and the correction that made it (* = best)."),
                io.Image.Output("rounds", display_name="rounds",
                                tooltip="Every round's image as one batch, at round 0's size."),
                io.Image.Output("chart", display_name="chart",
                                tooltip="A bar chart of the rounds' scores (the best in green)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def check_lazy_status(cls, reflection: ReflectionState, **lazy) -> list[str]:
        """The edit is needed only while the latest round scores below the threshold. An unconnected optional
        input is not among the arguments; a connected one not yet run is None."""
        if not reflection.wants_edit:
            return []
        return [name for name in ("edited", "chain") if name in lazy and lazy[name] is None]

    @classmethod
    def execute(cls, vlm: ManagedVLM, reflection: ReflectionState, edited: torch.Tensor | None = None,
                chain: ReasonedChain | None = None) -> io.NodeOutput:
        state = reflection
        if state.wants_edit:
            if edited is None:
                raise JudgeInputError("GoT Reflection Round: the round needs the edit, but `edited` is empty: "
                                      "connect the VAE Decode of GoT's edit with the Reflect's correction")
            (view,) = pil_batch(edited, "GoT Reflection Round's edited", one=True)
            state.check_edit_source(chain)
            judge = judge_of(vlm, state.plan_weight, comfy.utils.ProgressBar(1, node_id=cls.hidden.unique_id))
            (score,) = reason_or_interrupt(lambda: judge.score([view], state.prompt,
                                                               [chain] if chain is not None else None))
            state = state.then(edited, view, chain, score)
        rounds = state.reflection.rounds
        best = state.reflection.best.index
        chart = score_chart([r.score.score for r in rounds], best)
        report = state.report()
        return io.NodeOutput(state.images[best], state, report, round_images(state.images), chart,
                             ui=ui.PreviewText(report))


NODES: list[type[io.ComfyNode]] = [GoTReflectNode, GoTReflectionRoundNode]
