"""GoT Judge and GoT PARM Guider through a real ComfyUI server (the `comfyui_server` fixture, tiny models, CPU):
Cancel during judging lands between batches of questions and leaves the server serving; every numeric widget and
the checks text is a clear error wherever its value comes from (typed, linked, NaN); batches of different sizes
and an empty batch fail their prompt, not the server."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from got_backend.ssgm.guidance import SCALE_LIMIT
from tests.comfyui.test_hardening_server import fails, linked, refused
from tests.comfyui.test_judge_nodes import TEMPLATE, judged, with_parm_guider
from tests.comfyui.test_workflows import CHAIN, SIZE, Listener, twin

PROMPT = "a red apple and a green pear"


def judge_graph(count: int, chain: bool = False, **judge_inputs) -> dict:
    """GoT Judge over `count` plain images (Empty Image: no rendering), the GoT MLLM as the judge; with `chain`,
    CHAIN (two objects) from the Reasoner, so that each image gets two plan questions besides its outcome one."""
    colour = int(time.time() * 1000) % 0xFFFFFF  # never a cached result
    graph = {
        "1": {"class_type": "GoTVLMLoader", "inputs": {"model_folder": "GoT-6B", "dtype": "auto"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": count,
                                                     "color": colour}},
        "3": {"class_type": "GoTJudge", "inputs": {"vlm": ["1", 0], "images": ["2", 0], "prompt": PROMPT,
                                                   "plan_weight": 0.5, **judge_inputs}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    if chain:
        graph["5"] = {"class_type": "GoTMLLMLoader", "inputs": {"model_folder": "GoT-6B",
                                                                "qwen_folder": "(converted: not needed)",
                                                                "dtype": "auto"}}
        graph["6"] = {"class_type": "GoTReasoner", "inputs": {
            "mllm": ["5", 0], "prompt": PROMPT, "task": "text-to-image", "max_new_tokens": 8, "sampling": False,
            "seed": 0, "temperature": 1.0, "top_p": 1.0, "chain_start": CHAIN}}
        graph["3"]["inputs"]["chain"] = ["6", 0]
    return graph


def judged_ok(server, graph: dict) -> dict:
    entry = server.run(graph, timeout=300)
    error = server.execution_error(entry)
    assert entry["status"]["status_str"] == "success", error and error["exception_message"]
    return entry


# --- Cancel ----------------------------------------------------------------------------------------------------

@dataclass
class Cancelled:
    progress: list[tuple[int, int]]  # (value, max) of the node's progress in the cancelled prompt
    stopped: float  # seconds from POST /interrupt to the server's execution_interrupted
    batch: float  # the longest time between two of the node's progress updates before the Cancel


def cancel_after_batches(server, graph: dict, node: str, batches: int, total: int | None = None) -> Cancelled:
    """Queue `graph`, POST /interrupt once `node` has reported `batches` progress updates (of `total` only, if
    given), and wait for the prompt: it must end interrupted, not failed, and leave the queue empty."""
    listener = Listener(server)
    prompt_id, seen = listener.queue(server, graph), []

    def progress() -> list[tuple[int, int]]:
        return [(p["value"], p["max"]) for p in listener.progress if p["node"] == node
                and p["prompt_id"] == prompt_id and total in (None, p["max"])]
    try:
        deadline = time.monotonic() + 300
        while len(seen) < batches:  # the node is working, batch after batch
            values = progress()
            if values and (not seen or values[-1] != seen[-1][1]):
                seen.append((time.time(), values[-1]))
            assert time.monotonic() < deadline, f"node {node} never got going: {listener.progress[-3:]}"
            time.sleep(0.005)
        cancelled_at = time.time()
    finally:
        messages = listener.cancel(server, prompt_id)
    assert "execution_interrupted" in messages and "execution_error" not in messages, messages
    assert server.get("/queue")[1] == {"queue_running": [], "queue_pending": []}
    stopped = messages["execution_interrupted"]["timestamp"] / 1000 - cancelled_at  # the server's clock is ours
    return Cancelled(progress(), stopped, max(b[0] - a[0] for a, b in zip(seen, seen[1:])))


def test_cancel_during_judging_lands_between_batches_of_questions(comfyui_server):
    server = comfyui_server
    judged_ok(server, judge_graph(1, chain=True))  # the judge and the chain loaded, so the big run only judges
    count = 160  # 160 outcome + 320 plan questions: 60 batches of eight
    cancel = cancel_after_batches(server, judge_graph(count, chain=True), "3", batches=4)
    value, total = cancel.progress[-1]
    answered = value if total == count else count + value  # of 3 * count
    print(f"\n[cancel] the GoT Judge stopped {cancel.stopped:.2f} s after POST /interrupt, {answered} of {3 * count} "
          f"questions answered (one batch of eight questions took up to {cancel.batch:.2f} s on this machine)")
    assert cancel.stopped < max(1.0, 2 * cancel.batch)  # the running batch ends, the next one is not started
    assert answered < count  # it stopped in the outcome questions, where it was cancelled
    judged_ok(server, judge_graph(2, chain=True))


# --- numeric widgets and the checks text -------------------------------------------------------------------------

def parm_graph(**guider_inputs) -> dict:
    """The best-of-N template at test size with the GoT PARM Guider (two candidates) in place of the GoT Guider."""
    graph = with_parm_guider(judged(twin(TEMPLATE)))
    graph["12"]["inputs"]["batch_size"] = 2
    graph["9"]["inputs"]["noise_seed"] = int(time.time() * 1000) % 10**9  # never a cached result
    graph["8"]["inputs"].update(guider_inputs)
    return graph


def test_the_judge_plan_weight_outside_0_to_1_is_a_clear_error_however_it_is_given(comfyui_server):
    server = comfyui_server
    for chain in (False, True):
        refused(server, judge_graph(2, chain, plan_weight=1.5), "3", "plan_weight", "bigger than max of 1.0")
        refused(server, judge_graph(2, chain, plan_weight=-0.5), "3", "plan_weight", "smaller than min of 0.0")
        fails(server, linked(judge_graph(2, chain), "3", "plan_weight", 1.5), "GoTJudge",
              "GoT Judge: plan_weight is 1.5", "from 0 to 1", "fix the node linked to plan_weight")
        fails(server, judge_graph(2, chain, plan_weight=math.nan), "GoTJudge", "plan_weight is nan", "from 0 to 1")
    judged_ok(server, judge_graph(2, chain=True, plan_weight=1.0))



def test_in_the_template_a_typed_plan_weight_of_1_5_is_a_node_error_and_the_judge_does_not_run(comfyui_server):
    """Why "the GoT Judge accepted plan_weight 1.5 without error": ComfyUI refuses it, but queues the rest of the
    graph (HTTP 200) because the template's "every candidate" preview does not depend on the judge; the refusal is
    in the response's node_errors (the frontend outlines the node) and the judge and its outputs never run."""
    graph = judged(twin(TEMPLATE))
    graph["15"]["inputs"]["plan_weight"] = 1.5
    graph["9"]["inputs"]["noise_seed"] = int(time.time() * 1000) % 10**9
    status, body = comfyui_server.submit(graph)
    assert status == 200 and body["node_errors"]["15"]["class_type"] == "GoTJudge", body
    (error,) = body["node_errors"]["15"]["errors"]
    assert error["details"] == "plan_weight" and "bigger than max of 1.0" in error["message"]
    assert sorted(body["node_errors"]["15"]["dependent_outputs"]) == ["16", "17"]
    entry = comfyui_server.wait(body["prompt_id"])
    assert "18" in entry["outputs"] and not {"15", "16", "17"} & set(entry["outputs"])

def test_the_parm_guider_threshold_and_checks_are_clear_errors_however_they_are_given(comfyui_server):
    server = comfyui_server
    refused(server, parm_graph(potential_threshold=1.5), "8", "potential_threshold", "bigger than max of 1.0")
    fails(server, linked(parm_graph(), "8", "potential_threshold", 1.5), "GoTPARMGuider",
          "GoT PARM Guider: potential_threshold is 1.5", "from 0 to 1", "fix the node linked to potential_threshold")
    fails(server, parm_graph(potential_threshold=math.nan), "GoTPARMGuider", "potential_threshold is nan")
    refused(server, parm_graph(a_t=2 * SCALE_LIMIT), "8", "a_t", "bigger than max")  # the GoT Guider's scales
    fails(server, linked(parm_graph(), "8", "a_s", -2 * SCALE_LIMIT), "GoTPARMGuider", "GoT PARM Guider: a_s is",
          f"{SCALE_LIMIT:g}")
    fails(server, parm_graph(a_r=math.nan), "GoTPARMGuider", "a_r is nan")
    for checks, phrases in (("0.2; 0.4", ("check points must be numbers from 0 to 1", "'0.2; 0.4'")),
                            ("  ", ("at least one check point",)),
                            ("0.4, nan", ("check point must be a number from 0 to 1, got nan",)),
                            ("0.4, 1.4", ("check point must be a number from 0 to 1, got 1.4",))):
        refused(server, parm_graph(checks=checks), "8", *phrases)  # typed: refused when queued
        fails(server, linked(parm_graph(), "8", "checks", checks, "PrimitiveString"), "GoTPARMGuider", *phrases)
    judged_ok(server, parm_graph())


def test_cancel_during_a_parm_check_lands_between_batches_of_questions(comfyui_server):
    """64 candidates, a check after the first of two steps: its clarity questions (eight batches) show on the
    sampler's node; Cancel lands between two of them."""
    server = comfyui_server
    judged_ok(server, parm_graph())  # everything loaded, so the big run only renders and judges
    count = 64
    graph = parm_graph()
    graph["12"]["inputs"]["batch_size"] = count
    cancel = cancel_after_batches(server, graph, "13", batches=3, total=count)
    asked = cancel.progress[-1][0]
    print(f"\n[cancel] the PARM check stopped {cancel.stopped:.2f} s after POST /interrupt, {asked} of {count} "
          f"clarity questions answered (one batch of eight took up to {cancel.batch:.2f} s on this machine)")
    assert cancel.stopped < max(1.0, 2 * cancel.batch) and asked < count
    judged_ok(server, parm_graph())


# --- batches -----------------------------------------------------------------------------------------------------

def test_an_empty_batch_and_batches_of_different_sizes_fail_their_prompt_not_the_server(comfyui_server):
    server = comfyui_server
    fails(server, linked(judge_graph(2), "2", "batch_size", 0, "PrimitiveInt"), "GoTJudge",
          "GoT Judge's images: the image batch is empty", "at least one image")
    empty = linked(parm_graph(), "12", "batch_size", 0, "PrimitiveInt")
    fails(server, empty, "SamplerCustomAdvanced", "number of candidates must be a whole number of at least 1, got 0",
          "the latent batch size in ComfyUI")
    mismatched = parm_graph()  # the guider sampled two candidates, the judge gets three images
    mismatched["30"] = {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1,
                                                               "color": 0}}
    mismatched["31"] = {"class_type": "ImageBatch", "inputs": {"image1": ["14", 0], "image2": ["30", 0]}}
    mismatched["15"]["inputs"]["images"] = ["31", 0]
    fails(server, mismatched, "GoTJudge", "last sampled 2 candidates but the judge got 3 images")
    judged_ok(server, parm_graph())
    judged_ok(server, judge_graph(2, chain=True))
