"""The judge, best-of-N, PARM and PARM++ reflection (docs/ALGORITHM.md §13) on the tiny GoT (CPU, fp32), the
judge being the GoT MLLM itself (loaded once) steered by tests/steering.py's ScriptedJudge so that its answers
are known."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from got_backend.chat import ChatModel
from got_backend.judge import (JudgeInputError, Judge, ParmSettings, ReflectionRound, best_of_n, first_round,
                               parm_best_of_n, reflect)
from got_backend.judge.candidates import check_candidates
from got_backend.judge.parm import ParmControl, parse_checks
from got_backend.judge.scores import combined_score, object_crops, ranking, score_labels, yes_probability
from got_backend.pipeline import GoTPipeline, Progress, ReasoningSettings, RenderSettings
from got_backend.reasoning.prompts import condition_image
from got_backend.ssgm.chain import parse_chain
from got_backend.ssgm.layout import pixel_extent
from tests.steering import ScriptedJudge, steer
from tests.test_pipeline import BOX, BOX_END, CHAIN, PROMPT

RENDER = RenderSettings(width=64, height=64, steps=5, seed=10)


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


@pytest.fixture(scope="module")
def chat(pipeline: GoTPipeline) -> ChatModel:
    return ChatModel.of(pipeline.mllm)


def scripted(chat: ChatModel, plan_weight: float = 0.0, **answers) -> tuple[Judge, ScriptedJudge]:
    script = ScriptedJudge(chat.tokenizer, **answers)
    return Judge(chat, plan_weight=plan_weight, logits_processor=[script]), script


class UNetCalls:
    """Counts the UNet's forward calls (each is one denoising step of one candidate, its branches batched)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        self.handle = unet.register_forward_pre_hook(self._seen)

    def _seen(self, module, args) -> None:
        self.count += 1

    def __enter__(self) -> UNetCalls:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --- scoring rules ----------------------------------------------------------------------------------------------

def test_yes_no_rule_ranking_and_plan_crops() -> None:
    assert yes_probability([0.2, 0.1], [0.1, 0.0]) == pytest.approx(0.75)  # the spellings are summed
    assert yes_probability([0.0], [0.0]) == 0.5
    assert ranking([0.2, 0.9, 0.9, 0.1]) == [1, 2, 0, 3]  # a tie goes to the lower index
    assert combined_score(0.8, 0.4, 0.25) == pytest.approx(0.7) and combined_score(0.8, None, 0.25) == 0.8
    image = Image.new("RGB", (64, 32))
    chain = parse_chain(CHAIN + f" and {BOX}(0,0),(10,10){BOX_END} (red)")  # the last box has no phrase
    crops = object_crops(image, chain)
    assert [phrase for phrase, _ in crops] == ["red apple", "plate"]
    c0, r0, c1, r1 = pixel_extent(chain.objects[0].box, 64, 32)
    assert crops[0][1].size == (c1 - c0, r1 - r0)
    edge = parse_chain(f"A <|object_ref_start|>dot<|object_ref_end|>{BOX}(1000,1000),(1000,1000){BOX_END} (red)")
    (dot,) = object_crops(image, edge)  # zero area on the corner: PIL fills nothing, the judge still looks
    assert dot[0] == "dot" and dot[1].size == (1, 1)


def test_the_judge_reads_every_one_token_spelling_of_yes_and_no(chat: ChatModel) -> None:
    judge = Judge(chat)
    assert "yes" in judge.yes_words and " Yes" in judge.yes_words and "no" in judge.no_words
    tokens = [chat.word_token(word) for word in judge.yes_words + judge.no_words]
    assert len(set(tokens)) == len(tokens)
    (unsteered,) = judge.outcome([Image.new("RGB", (32, 32), "red")], PROMPT)
    assert 0.0 < unsteered < 1.0


# --- best-of-N ---------------------------------------------------------------------------------------------------

def test_best_of_n_picks_the_argmax_and_is_the_chosen_seed_alone(pipeline: GoTPipeline, chat: ChatModel) -> None:
    judge, script = scripted(chat, plan_weight=0.5, outcome=[0.3, 0.7, 0.9], object=[0.9, 0.9, 0.1, 0.3, 0.7, 0.7])
    with UNetCalls(pipeline.unet) as calls:
        selection = best_of_n(pipeline, judge, PROMPT, candidates=3, chain_text=CHAIN, render=RENDER)
    assert calls.count == 3 * RENDER.steps
    assert [c.seed for c in selection.candidates] == [10, 11, 12]
    assert [s.plan for s in selection.scores] == pytest.approx([0.9, 0.2, 0.7])
    assert [s.score for s in selection.scores] == pytest.approx([0.6, 0.45, 0.8])
    assert selection.best == 2 and selection.report().splitlines()[2].startswith("* 2: seed 12")
    alone = pipeline.render_chain(PROMPT, CHAIN, render=replace(RENDER, seed=12),
                                  reasoning=ReasoningSettings(max_new_tokens=1))
    assert torch.equal(selection.chosen.latents, alone.renders[0].latents)
    assert selection.chosen.image.tobytes() == alone.renders[0].image.tobytes()
    assert [kind for kind, _ in script.asked] == ["outcome"] * 3 + ["object"] * 6  # one batch per question


def test_ties_break_by_index(pipeline: GoTPipeline, chat: ChatModel) -> None:
    judge, _ = scripted(chat, outcome=[0.4, 0.8, 0.8])
    selection = best_of_n(pipeline, judge, PROMPT, candidates=3, chain_text=CHAIN, render=replace(RENDER, steps=1))
    assert selection.best == 1


# --- PARM --------------------------------------------------------------------------------------------------------

def test_with_offload_the_judge_gets_gots_mllm_back_on_the_device(pipeline: GoTPipeline, chat: ChatModel) -> None:
    """The judge is GoT's own MLLM, which offload moved out for rendering: it comes back before the questions
    (here on the CPU: the code path)."""
    offloading = GoTPipeline(pipeline.mllm, pipeline.unet, pipeline.vae, device="cpu", offload=True)
    judge, script = scripted(chat, outcome=[0.3, 0.6])
    stages: list[str] = []
    selection = best_of_n(offloading, judge, PROMPT, candidates=2, chain_text=CHAIN, render=replace(RENDER, steps=1),
                          progress=Progress(on_stage=stages.append))
    assert stages[-4:] == ["switch", "decode", "switch", "judge"] and selection.best == 1


def test_parm_stops_candidates_without_potential(pipeline: GoTPipeline, chat: ChatModel) -> None:
    """N = 4, checks at 40% of 5 steps (after step 2): candidate 3 is not clear yet (not asked the potential
    question; clear at 60%), 1 has no potential and stops there; 0 and 2 have it and run on. Stopped candidates
    make no more UNet calls."""
    judge, script = scripted(chat, clarity=[0.9, 0.8, 0.9, 0.2, 0.7], potential=[0.9, 0.1, 0.6, 0.8],
                             outcome=[0.5, 0.6, 0.55])
    settings = ParmSettings(checks=(0.4, 0.6))
    with UNetCalls(pipeline.unet) as calls:
        selection = parm_best_of_n(pipeline, judge, PROMPT, candidates=4, chain_text=CHAIN, render=RENDER,
                                   parm=settings)
    assert [c.unet_calls for c in selection.candidates] == [5, 2, 5, 5]
    assert calls.count == selection.unet_calls == 17  # plain best-of-N: 20
    assert [c.stopped_at for c in selection.candidates] == [None, 0.4, None, None]
    late = selection.candidates[3]  # the float32 softmax gives the scripted answers to float rounding
    assert [f for f, _ in late.clarity] == [0.4, 0.6] and [p for _, p in late.clarity] == pytest.approx([0.2, 0.7])
    assert late.potential == pytest.approx(0.8)
    assert [kind for kind, _ in script.asked] == ["clarity"] * 4 + ["potential"] * 3 + ["clarity", "potential"] + \
        ["outcome"] * 3
    assert selection.scores[1] is None and selection.best == 2
    alone = pipeline.render_chain(PROMPT, CHAIN, render=replace(RENDER, seed=12),
                                  reasoning=ReasoningSettings(max_new_tokens=1))
    assert torch.equal(selection.chosen.latents, alone.renders[0].latents)
    assert selection.candidates[1].latents is None and selection.candidates[1].image.size == (64, 64)


def test_parm_keeps_the_least_bad_when_none_has_potential(pipeline: GoTPipeline, chat: ChatModel) -> None:
    judge, _ = scripted(chat, clarity=[0.9, 0.9, 0.9], potential=[0.3, 0.45, 0.2], outcome=[0.1])
    selection = parm_best_of_n(pipeline, judge, PROMPT, candidates=3, chain_text=CHAIN, render=RENDER,
                               parm=ParmSettings(checks=(0.2,)))
    assert [c.unet_calls for c in selection.candidates] == [1, 5, 1] and selection.best == 1


def test_parm_check_points() -> None:
    control = ParmControl(2, 10, ParmSettings(checks=(0.6, 0.2, 0.4, 1.0)))
    assert control.checks == {2: 0.2, 4: 0.4, 6: 0.6}  # none at the last step: it would save nothing
    assert ParmControl(1, 2, ParmSettings()).checks == {1: 0.6}  # 20%, 40% and 60% of 2 steps: after step 1
    assert parse_checks("0.2, 0.4 0.6") == (0.2, 0.4, 0.6)


# --- reflection --------------------------------------------------------------------------------------------------

def test_reflection_edits_the_chosen_image_with_the_judges_correction(pipeline: GoTPipeline,
                                                                      chat: ChatModel) -> None:
    judge, script = scripted(chat, outcome=[0.2, 0.3, 0.9], correction="make the plate blue")
    selection = best_of_n(pipeline, judge, PROMPT, candidates=2, chain_text=CHAIN, render=replace(RENDER, steps=2))
    tokens = pipeline.mllm.tokens
    edit_reasoning = ReasoningSettings(max_new_tokens=8, logits_processor=tuple(steer(5, tokens.boi)))
    reflection = reflect(pipeline, judge, PROMPT, first_round(selection), rounds=3, threshold=0.5,
                         render=replace(RENDER, steps=2), reasoning=edit_reasoning)
    start, edited = reflection.rounds[0], reflection.rounds[1]
    assert len(reflection.rounds) == 2  # the edit scored 0.9 >= 0.5: no further round
    assert start.image is selection.chosen.image and start.correction is None
    assert edited.correction == "make the plate blue" and edited.score.outcome == pytest.approx(0.9)
    assert reflection.best is edited and "edit: make the plate blue" in reflection.report()
    # GoT's edit mode: the correction is the instruction, the MLLM saw the chosen image, the chain is new.
    assert edited.reasoning.task == "edit" and edited.reasoning.prompt == "make the plate blue"
    assert edited.reasoning.sequence.images[0].image.tobytes() == condition_image(selection.chosen.image).tobytes()
    assert edited.chain_text.endswith("<|im_gen_start|>") and edited.chain_text != start.chain_text
    satisfied = reflect(pipeline, judge, PROMPT, ReflectionRound(0, start.image, start.reasoning,
                                                                 replace(start.score, score=0.6), None),
                        rounds=3, threshold=0.5)
    assert len(satisfied.rounds) == 1


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_inputs_are_clear_errors(pipeline: GoTPipeline, chat: ChatModel) -> None:
    judge = Judge(chat)
    images = [Image.new("RGB", (32, 32))] * 2
    with pytest.raises(JudgeInputError, match="at least 1, got 0"):
        check_candidates(0)
    with pytest.raises(JudgeInputError, match="2 images but 3 prompts"):
        judge.outcome(images, ["a", "b", "c"])
    with pytest.raises(JudgeInputError, match="2 images but 1 chains"):
        judge.plan(images, [None])
    with pytest.raises(JudgeInputError, match="no images to judge"):
        judge.score([], PROMPT)
    with pytest.raises(JudgeInputError, match="reflection threshold must be a number from 0 to 1, got 1.5"):
        reflect(pipeline, judge, PROMPT, ReflectionRound(0, images[0], None, None, None), rounds=1, threshold=1.5)
    with pytest.raises(JudgeInputError, match="plan weight"):
        Judge(chat, plan_weight=-0.1)
    with pytest.raises(JudgeInputError, match="check point"):
        ParmSettings(checks=(0.4, 1.2))
    with pytest.raises(JudgeInputError, match="numbers from 0 to 1"):
        parse_checks("0.2, forty")


def test_score_labels_tell_close_scores_apart_and_rank_them() -> None:
    # the report's case: 0.478 .. 0.482 all read "0.48" with two decimals
    assert score_labels([0.4801, 0.4821, None, 0.4783]) == ["0.480 #2", "0.482 #1", "stop", "0.478 #3"]
    assert score_labels([0.9, 0.25]) == ["0.90 #1", "0.25 #2"]
    assert score_labels([0.48211, 0.48214]) == ["0.48211 #2", "0.48214 #1"]
    assert score_labels([0.5, 0.5]) == ["0.50 #1", "0.50 #2"]  # a tie goes to the lower index, as in ranking
    assert score_labels([None]) == ["stop"]
