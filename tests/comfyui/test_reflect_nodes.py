"""GoT Reflect and GoT Reflection Round (PARM++ reflection, docs/ALGORITHM.md §13) inside ComfyUI: in-process on
the tiny models with the judge steered by tests/steering.py's ScriptedJudge (through the nodes' own judge_of),
and the "GoT best of N, then reflect" template through a real server, where the edit branch runs only when the
pick scores below the threshold."""

from __future__ import annotations

import pytest
import torch

from tests.comfyui.test_judge_nodes import PROMPT, judged, parts  # noqa: F401 - the module's model fixture
from tests.comfyui.test_workflows import CHAIN, SIZE, cached_nodes, ran, saved_image, twin
from tests.steering import ScriptedJudge

TEMPLATE = "GoT best of N, then reflect"
CORRECTION = "make the pear green"


@pytest.fixture
def nodes(inproc, parts, monkeypatch):  # noqa: F811 - the fixture imported above
    """The two nodes, their judge steered by a script the test fills in (`nodes.script(...)`)."""
    reflect, judge_nodes = inproc.pack_module("nodes.reflect"), inproc.pack_module("nodes.judge")

    class Nodes:
        reflect_node = reflect.GoTReflectNode.PREPARE_CLASS_CLONE({})
        round_node = reflect.GoTReflectionRoundNode.PREPARE_CLASS_CLONE({})
        steering: ScriptedJudge | None = None

        def script(self, **answers: list[float]) -> ScriptedJudge:
            self.steering = ScriptedJudge(parts["vlm"].chat.tokenizer, correction=CORRECTION, **answers)
            return self.steering

    made = Nodes()
    monkeypatch.setattr(reflect, "judge_of", lambda vlm, weight, bar=None: judge_nodes.judge_of(
        vlm, weight, bar, logits_processor=[made.steering]))
    return made


def image(seed: int) -> torch.Tensor:
    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def test_a_low_score_asks_for_the_edit_and_the_better_round_wins(nodes, parts):
    script = nodes.script(outcome=[0.2, 0.9])
    start, edited = image(1), image(2)
    correction, to_edit, state = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=start)[:3]
    assert correction == CORRECTION and torch.equal(to_edit, start) and state.wants_edit
    # The edit is asked for lazily: the chain only where it is connected.
    assert nodes.round_node.check_lazy_status(reflection=state, edited=None, chain=None) == ["edited", "chain"]
    assert nodes.round_node.check_lazy_status(reflection=state, edited=None) == ["edited"]
    best, after, report, rounds, chart = nodes.round_node.execute(parts["vlm"], state, edited=edited)[:5]
    assert torch.equal(best, edited) and rounds.shape == (2, SIZE, SIZE, 3) and chart.shape == (1, 256, 512, 3)
    assert torch.equal(rounds[0], start[0]) and torch.equal(rounds[1], edited[0])
    lines = report.splitlines()
    assert lines[0].startswith("  round 0: 0.200") and lines[1].startswith("* round 1: 0.900")
    assert f"edit: {CORRECTION}" in lines[1] and "no further edit" in lines[2]
    assert [kind for kind, _ in script.asked] == ["outcome", "outcome"]


def test_a_satisfying_image_is_kept_and_no_edit_is_asked_for(nodes, parts):
    script = nodes.script(outcome=[0.7])
    start = image(3)
    correction, _, state = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=start)[:3]
    assert correction == CORRECTION and not state.wants_edit  # written, shown, but not carried out
    assert nodes.round_node.check_lazy_status(reflection=state, edited=None, chain=None) == []
    best, after, report, rounds = nodes.round_node.execute(parts["vlm"], state)[:4]
    assert torch.equal(best, start) and rounds.shape[0] == 1 and len(after.reflection.rounds) == 1
    assert "round 0 scores at least 0.5: no further edit" in report and len(script.asked) == 1


def test_a_second_round_corrects_the_latest_image_and_keeps_the_best(nodes, parts):
    script = nodes.script(outcome=[0.2, 0.3, 0.1])
    start, first, second = image(4), image(5), image(6)
    state = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=start)[2]
    state = nodes.round_node.execute(parts["vlm"], state, edited=first)[1]
    assert state.wants_edit and state.correction == ""  # the edit scored 0.3: the next round corrects it
    correction, to_edit, state = nodes.reflect_node.execute(parts["vlm"], "", 0.5, 0.0, reflection=state)[:3]
    assert correction == CORRECTION and torch.equal(to_edit, first)
    best, _, report, rounds = nodes.round_node.execute(parts["vlm"], state, edited=second)[:4]
    assert torch.equal(best, first) and rounds.shape[0] == 3  # 0.3 beats 0.2 and 0.1
    assert [line[:9] for line in report.splitlines()[:3]] == ["  round 0", "* round 1", "  round 2"]
    assert len(script.asked) == 3  # each image judged once


def test_plan_score_of_an_edit_uses_its_chain(nodes, parts):
    nodes.script(outcome=[0.2, 0.6], object=[0.9, 0.7])
    state = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.5, image=image(7))[2]
    after = nodes.round_node.execute(parts["vlm"], state, edited=image(8), chain=parts["chain"])[1]
    edit = after.reflection.rounds[1]
    assert edit.score.plan == pytest.approx(0.8) and edit.score.score == pytest.approx(0.7)
    assert edit.chain_text == parts["chain"].text


def test_bad_reflection_inputs(inproc, nodes, parts):
    judge = inproc.pack_module("got_backend.judge")
    widgets = inproc.pack_module("nodes.comfy_bridge")
    nodes.script(outcome=[0.2])
    with pytest.raises(judge.JudgeInputError, match="connect either `image`.*not neither"):
        nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0)
    with pytest.raises(inproc.pack_module("got_backend.images").ImageInputError,
                       match="GoT Reflect's image: got a batch of 2 images; GoT edits one image at a time"):
        nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=torch.rand(2, SIZE, SIZE, 3))
    with pytest.raises(widgets.WidgetValueError, match="threshold is nan"):
        nodes.reflect_node.execute(parts["vlm"], PROMPT, float("nan"), 0.0, image=image(9))
    state = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=image(9))[2]
    with pytest.raises(judge.JudgeInputError, match="not both"):
        nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=image(9), reflection=state)
    with pytest.raises(judge.JudgeInputError, match="first round's prompt"):
        nodes.reflect_node.execute(parts["vlm"], "another prompt", 0.5, 0.0, reflection=state)
    with pytest.raises(judge.JudgeInputError, match="`edited` is empty"):
        nodes.round_node.execute(parts["vlm"], state)


def test_a_round_wired_to_an_earlier_rounds_reflect_is_refused(inproc, nodes, parts):
    """The second round's Round wired to the first round's Reflect (issue 19.8): its edit was reasoned over the
    first edit, not over the first round's image, so crediting it to the first correction would be wrong."""
    nodes.script(outcome=[0.2, 0.3, 0.1])
    start, first, second = image(11), image(12), image(13)
    stale = nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=start)[2]
    state = nodes.round_node.execute(parts["vlm"], stale, edited=first)[1]
    to_edit, state = nodes.reflect_node.execute(parts["vlm"], "", 0.5, 0.0, reflection=state)[1:3]
    edit = parts["mllm"].got.user_chain(CORRECTION, CHAIN, to_edit.movedim(-1, 1))  # reasoned over the first edit
    chain = inproc.pack_module("nodes.types").reasoned_chain(edit.text, edit)
    with pytest.raises(inproc.pack_module("got_backend.judge").JudgeInputError,
                       match="reasoned over another image than round 0's"):
        nodes.round_node.execute(parts["vlm"], stale, edited=second, chain=chain)
    rounds = nodes.round_node.execute(parts["vlm"], state, edited=second, chain=chain)[1].reflection.rounds
    assert len(rounds) == 3  # wired to its own round's Reflect, the round counts


def test_cancel_while_the_judge_writes_the_correction(nodes, parts, monkeypatch):
    import comfy.model_management as mm

    nodes.script(outcome=[0.2, 0.2])
    seen = []

    def cancel_during_the_correction() -> bool:  # like the Cancel button: the outcome question, then two tokens
        seen.append(1)
        return len(seen) > 3

    monkeypatch.setattr(mm, "processing_interrupted", cancel_during_the_correction)
    with pytest.raises(mm.InterruptProcessingException) as raised:
        nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=image(10))
    assert len(seen) == 4 and raised.value.__context__ is None  # stopped at the third token, no traceback kept
    assert parts["vlm"].chat.cached_tokens == 0
    monkeypatch.setattr(mm, "processing_interrupted", lambda: False)
    assert nodes.reflect_node.execute(parts["vlm"], PROMPT, 0.5, 0.0, image=image(10))[0] == CORRECTION


# --- the template through a real server --------------------------------------------------------------------------

def reflected(threshold: float) -> dict:
    graph = judged(twin(TEMPLATE))
    graph["40"]["inputs"]["threshold"] = threshold
    return graph


def test_reflect_template_skips_the_edit_when_the_pick_satisfies(comfyui_server):
    entry, _ = ran(comfyui_server, reflected(0.0), f"{TEMPLATE} (threshold 0: no edit)")
    (report,) = entry["outputs"]["50"]["text"]
    assert report.splitlines()[0].startswith("* round 0") and "no further edit" in report
    edit_branch = {"41", "42", "44", "45", "47", "48", "49"}
    assert not edit_branch & (set(entry["outputs"]) | cached_nodes(entry))  # never run: not output, not cached
    assert saved_image(comfyui_server, entry, "51").size == (SIZE, SIZE)


def test_reflect_template_edits_the_pick_below_the_threshold(comfyui_server):
    entry, _ = ran(comfyui_server, reflected(1.0), f"{TEMPLATE} (threshold 1: one edit)")
    (report,) = entry["outputs"]["50"]["text"]
    lines = report.splitlines()
    assert lines[0][2:].startswith("round 0") and lines[1][2:].startswith("round 1: ") and "edit: " in lines[1]
    assert "41" in entry["outputs"]  # the edit's Reasoner ran (its chain is on the node)
    assert len(entry["outputs"]["52"]["images"]) == 2  # every round
    assert saved_image(comfyui_server, entry, "51").size == (SIZE, SIZE)
