"""GoT Judge and GoT PARM Guider (docs/ALGORITHM.md §13): an MLLM judge over a batch of GoT candidates.

- GoT Judge: IMAGE batch + prompt (+ the chain, for the plan score) -> the best image, its index, every score
  as text and a bar chart of them. Render N seeds in one run by sampling a latent batch of N through the GoT
  Guider (Empty Latent Image's batch_size; each batch item gets its own noise).
- GoT PARM Guider: the GoT Guider with PARM's step-wise judgement (got_backend/judge/parm.ParmControl, the
  same rule as the backend): at the check points the predicted images of the batch's live candidates are
  judged, and candidates without potential get no more UNet calls. Connect it to the GoT Judge's `parm` input
  too, so that the judge picks among the candidates that finished and shows where the others stopped.

The judge model is a GOT_VLM (GoT VLM Loader) under ComfyUI's model management; Cancel stops it between batches
of questions; the node's progress bar counts the questions answered (a PARM check's, the sampler's node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

import comfy.model_management
import comfy.utils

from ..got_backend.images import to_uint8_pil
from ..got_backend.judge import CandidateScore, Judge, JudgeInputError, ParmSettings
from ..got_backend.judge.parm import DEFAULT_CHECKS, ParmControl, parse_checks
from ..got_backend.judge.scores import DEFAULT_PLAN_WEIGHT, ranking, score_labels
from ..got_backend.judge.candidates import check_candidates, describe_candidate
from ..got_backend.judge.judge import check_judge_prompt
from ..got_backend.reasoning.sampling import LogitsProcessor
from .comfy_bridge import cancellable_forward, check_widget_number, checked_images, queue_time_check
from .guider import GoTGuider, GoTGuiderNode
from .model_management import ManagedVLM
from .reasoner import reason_or_interrupt
from .types import ChainSocket, VLMSocket

CHART_SIZE = (512, 256)
CHART_COLORS = {"best": (64, 170, 92), "other": (90, 120, 170), "stopped": (110, 110, 110)}
FRACTION = (0.0, 1.0)  # the range of plan_weight and potential_threshold, also checked at run time (a linked
# value, or NaN in a workflow file, skips ComfyUI's check)


def pil_batch(images: torch.Tensor, what: str = "the judge's images", *, one: bool = False) -> list[Image.Image]:
    """ComfyUI's IMAGE batch [B, H, W, C], checked (`checked_images`; `one`: exactly one), as RGB PIL images."""
    checked_images(images, what, one=one)
    return [to_uint8_pil(images[i:i + 1].movedim(-1, 1)) for i in range(images.shape[0])]


def judge_of(vlm: ManagedVLM, plan_weight: float, bar: comfy.utils.ProgressBar | None = None,
             logits_processor: Sequence[LogitsProcessor] = ()) -> Judge:
    """A Judge over the VLM on its device, checking ComfyUI's Cancel flag between batches of questions
    (`logits_processor`: steers the answers, for tests)."""
    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update_absolute(done, total)
    return Judge(vlm.loaded(), plan_weight=plan_weight, on_progress=progress, logits_processor=logits_processor,
                 should_cancel=comfy.model_management.processing_interrupted)


def score_chart(scores: list[float | None], best: int) -> torch.Tensor:
    """[1, H, W, 3] in [0, 1]: one bar per candidate (height = score, the best in green, stopped ones grey),
    labelled with its score (enough digits to rank them) and rank."""
    notes = score_labels(scores)
    width, height = CHART_SIZE
    chart = Image.new("RGB", CHART_SIZE, (30, 30, 33))
    draw = ImageDraw.Draw(chart)
    top, bottom = 24, height - 28
    slot = (width - 16) / max(1, len(scores))
    for index, (score, note) in enumerate(zip(scores, notes)):
        x0, x1 = 8 + index * slot + slot * 0.15, 8 + (index + 1) * slot - slot * 0.15
        kind = "stopped" if score is None else "best" if index == best else "other"
        value = 0.04 if score is None else max(score, 0.01)
        draw.rectangle((x0, bottom - value * (bottom - top), x1, bottom), fill=CHART_COLORS[kind])
        draw.text((x0, bottom + 6), str(index), fill=(220, 220, 220))
        draw.text((x0, max(2, bottom - value * (bottom - top) - 14)), note, fill=(220, 220, 220))
    draw.line((8, bottom, width - 8, bottom), fill=(160, 160, 160))
    return torch.from_numpy(np.array(chart)).float().div(255)[None]


@dataclass
class ParmRun:
    """What the GoT PARM Guider did in its last sampling: the PARM record and the UNet calls per candidate."""

    control: ParmControl
    unet_calls: list[int]
    previews: dict[int, torch.Tensor]  # IMAGE [1, H, W, 3]: a stopped candidate's last judged prediction


class GoTPARMGuider(GoTGuider):
    """GoT's guidance over a batch of candidates, with PARM's checks between steps. The check after k steps
    looks at the denoised prediction of the k-th UNet call (what diffusers' DDPM calls the predicted x0 after
    step k); a stopped candidate's rows are left out of every later UNet call, and the sampler gets its own
    latent back as its prediction (it is not used)."""

    def set_parm(self, vlm: ManagedVLM, vae, prompt: str, settings: ParmSettings,
                 logits_processor: Sequence[LogitsProcessor] = ()) -> None:
        check_judge_prompt(prompt)
        self.vlm, self.vae, self.prompt, self.settings = vlm, vae, prompt, settings
        self.logits_processor = tuple(logits_processor)
        self.last_run: ParmRun | None = None
        self._previous: torch.Tensor | None = None

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler, sigmas: torch.Tensor, *args,
               **kwargs) -> torch.Tensor:
        batch = check_candidates(noise.shape[0])
        self.last_run = ParmRun(ParmControl(batch, len(sigmas) - 1, self.settings), [0] * batch, {})
        self._sigmas, self._previous = sigmas.float().cpu(), None
        return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict = {},
                      seed: int | None = None) -> torch.Tensor:  # noqa: B006 - CFGGuider's signature
        run = self.last_run
        done = int(torch.argmin((self._sigmas - timestep[0].float().cpu()).abs()))
        if self._previous is not None and run.control.due(done):
            self._assess(done)
        live = torch.tensor(run.control.live, device=x.device)
        out = x.clone()
        out[live] = super().predict_noise(x[live], timestep[live], model_options, seed)  # GoT's guidance, patches
        for index in run.control.live:
            run.unet_calls[index] += 1
        self._previous = out
        return out

    def _assess(self, done: int) -> None:
        run, pending = self.last_run, self.last_run.control.pending()
        with cancellable_forward(self.vae.first_stage_model):
            pixels = self.vae.decode(self.inner_model.process_latent_out(self._previous[pending].float()))
        previews = {index: pixels[row:row + 1] for row, index in enumerate(pending)}
        # The questions answered show on the sampler's node (this guider has no node of its own at sampling).
        judge = judge_of(self.vlm, 0.0, comfy.utils.ProgressBar(len(pending)), logits_processor=self.logits_processor)
        stopped = reason_or_interrupt(lambda: run.control.assess(
            done, {i: pil_batch(image)[0] for i, image in previews.items()}, judge, self.prompt))
        run.previews.update({index: previews[index].cpu() for index in stopped})


def parm_run(parm, batch: int) -> ParmRun | None:
    """The GoT PARM Guider's record of the sampling that made this batch (None without a PARM guider)."""
    if parm is None:
        return None
    run = getattr(parm, "last_run", None)
    if not isinstance(parm, GoTPARMGuider) or run is None:
        raise JudgeInputError("the judge's parm input takes the GoT PARM Guider that sampled these images (after "
                              "SamplerCustomAdvanced ran with it); leave it empty for plain best-of-N")
    if len(run.unet_calls) != batch:
        raise JudgeInputError(f"the GoT PARM Guider last sampled {len(run.unet_calls)} candidates but the judge got "
                              f"{batch} images: connect the images decoded from that guider's sampling")
    return run


class GoTJudgeNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTJudge",
            display_name="GoT Judge",
            category="GoT/judge",
            description="Best-of-N: an MLLM judge scores every image of the batch by P(yes) to 'Does this image "
                        "accurately represent the prompt?' (and, with the chain, whether each box's crop shows "
                        "its object) and returns the best one, its index, every score and a bar chart. Render the "
                        "candidates as one latent batch through the GoT Guider or the GoT PARM Guider.",
            inputs=[
                VLMSocket.Input("vlm", tooltip="The judge: any Qwen2.5-VL from the GoT VLM Loader (the base "
                                            "Qwen2.5-VL-3B-Instruct, or the GoT MLLM folder itself: loaded once)."),
                io.Image.Input("images",
                               tooltip="The candidates, one IMAGE batch (e.g. VAE Decode of a latent batch)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the candidates were made for; the judge asks whether each "
                                        "image represents it."),
                io.Float.Input("plan_weight", default=DEFAULT_PLAN_WEIGHT, min=FRACTION[0], max=FRACTION[1], step=0.05,
                               tooltip="With a chain: score = (1 - w) * outcome + w * plan, the plan score being "
                                       "the mean P(yes) that each box's crop shows its phrase. 0: outcome only."),
                ChainSocket.Input("chain", optional=True,
                               tooltip="The chain the candidates were rendered from, for the plan score."),
                io.Guider.Input("parm", optional=True,
                                tooltip="The GoT PARM Guider that sampled the batch: candidates it stopped are "
                                        "not picked and are shown where they stopped."),
            ],
            outputs=[
                io.Image.Output("best", display_name="best", tooltip="The best-scoring candidate."),
                io.Int.Output("best_index", display_name="index",
                              tooltip="Its index in the batch (a tie goes to the lower index)."),
                io.String.Output("scores", display_name="scores",
                                 tooltip="Every candidate's scores, one line each, the best marked with *."),
                io.Image.Output("chart", display_name="chart",
                                tooltip="A bar chart of the scores (best green, stopped by PARM grey)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompt: str | None = None) -> bool | str:
        """At queue time: the prompt to judge by (a prompt from another node is checked when run)."""
        return queue_time_check(check_judge_prompt, prompt)

    @classmethod
    def execute(cls, vlm: ManagedVLM, images: torch.Tensor, prompt: str, plan_weight: float, chain=None,
                parm=None) -> io.NodeOutput:
        check_widget_number("GoT Judge", "plan_weight", plan_weight, *FRACTION)
        check_judge_prompt(prompt)  # before the judge loads
        candidates = pil_batch(images, "GoT Judge's images")
        run = parm_run(parm, len(candidates))
        live = run.control.live if run is not None else list(range(len(candidates)))
        bar = comfy.utils.ProgressBar(len(live), node_id=cls.hidden.unique_id)
        judge = judge_of(vlm, plan_weight, bar)
        judged = reason_or_interrupt(lambda: judge.score([candidates[i] for i in live], prompt,
                                                         [chain] * len(live) if chain is not None else None))
        scores: list[CandidateScore | None] = [None] * len(candidates)
        for index, score in zip(live, judged):
            scores[index] = score
        best = live[ranking([s.score for s in judged])[0]]
        lines = []
        for index, score in enumerate(scores):
            track = run.control.tracks[index] if run is not None else None
            lines.append(describe_candidate(index, best, score, track.stopped_at if track else None,
                                            track.potential if track else None))
        text = "\n".join(lines)
        return io.NodeOutput(images[best:best + 1], best, text, score_chart(
            [s.score if s is not None else None for s in scores], best), ui=ui.PreviewText(text))


class GoTPARMGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTPARMGuider",
            display_name="GoT PARM Guider",
            category="GoT/judge",
            description="The GoT Guider with PARM's step-wise judgement over a latent batch of candidates: at the "
                        "check points the judge decodes each live candidate's predicted image and asks whether it "
                        "is clear enough to judge, then (once clear) whether it can still become a faithful image; "
                        "candidates without potential get no more UNet calls. Connect to SamplerCustomAdvanced and "
                        "the GoT Judge's parm input.",
            inputs=[
                *GoTGuiderNode.define_schema().inputs,  # model, branches and the three scales
                VLMSocket.Input("vlm", tooltip="The judge (GoT VLM Loader)."),
                io.Vae.Input("vae", tooltip="The SDXL VAE, to decode the candidates' predicted images."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the candidates are judged by."),
                io.String.Input("checks", default=", ".join(map(str, DEFAULT_CHECKS)),
                                tooltip="Fractions of the schedule after which the live candidates are judged, "
                                        "e.g. 0.2, 0.4, 0.6 (PARM's points)."),
                io.Float.Input("potential_threshold", default=0.5, min=FRACTION[0], max=FRACTION[1], step=0.05,
                               tooltip="A candidate whose P(potential) is below this stops (never all of them: "
                                       "the least bad runs on)."),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider",
                                      tooltip="For SamplerCustomAdvanced; also connect it to the GoT Judge.")],
        )

    @classmethod
    def validate_inputs(cls, checks: str | None = None) -> bool | str:
        """At queue time: check points PARM can use (checks from another node are checked when run)."""
        return queue_time_check(lambda text: ParmSettings(checks=parse_checks(text)), checks)

    @classmethod
    def execute(cls, model, branches, a_t: float, a_s: float, a_r: float, vlm: ManagedVLM, vae, prompt: str,
                checks: str, potential_threshold: float) -> io.NodeOutput:
        check_widget_number("GoT PARM Guider", "potential_threshold", potential_threshold, *FRACTION)
        settings = ParmSettings(checks=parse_checks(checks), potential_threshold=potential_threshold)
        guider = GoTPARMGuider(model)
        guider.set_guidance(branches, a_t, a_s, a_r, node="GoT PARM Guider")
        guider.set_parm(vlm, vae, prompt, settings)
        return io.NodeOutput(guider)


NODES: list[type[io.ComfyNode]] = [GoTJudgeNode, GoTPARMGuiderNode]
