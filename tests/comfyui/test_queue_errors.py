"""What /prompt says about the Reasoner's inputs, through a real ComfyUI server (the `comfyui_server` fixture):
each queue-time error appears once, under the input that is wrong. ComfyUI (0.3.64 and 0.8.0 alike) files the
one message of a node's validate_inputs under every argument of validate_inputs, so the Reasoner's takes only
`prompt`; its task Combo is checked by ComfyUI 0.8.0 itself, and by the node when it runs."""

from __future__ import annotations

from tests.comfyui.test_hardening_server import fails, reasoner_only


def queue_errors(server, graph: dict, node: str = "2") -> list[dict]:
    """The validation errors /prompt gives for `node` (it must refuse the graph)."""
    status, body = server.submit(graph)
    assert status == 400, f"expected /prompt to refuse the graph, got {status}: {body}"
    return body["node_errors"][node]["errors"]


def test_an_empty_prompt_is_reported_once_blaming_prompt(comfyui_server):
    for task in ("text-to-image", "edit"):
        errors = queue_errors(comfyui_server, reasoner_only(prompt=" \n", task=task, chain_start=""))
        assert len(errors) == 1, errors
        assert errors[0]["extra_info"]["input_name"] == "prompt"
        assert errors[0]["details"].startswith("prompt - the prompt is empty: write what the image should show")


def test_a_bad_task_and_an_empty_prompt_are_each_reported_once_under_their_input(comfyui_server):
    bad_task = reasoner_only(task="txt2img")
    status, body = comfyui_server.submit(bad_task)
    if status == 400:  # ComfyUI 0.8.0 checks a V3 Combo's value itself
        errors = body["node_errors"]["2"]["errors"]
        assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_in_list", "task")]
    else:  # 0.3.64 checks only V1 Combos: the Reasoner refuses the task when it runs
        error = comfyui_server.execution_error(comfyui_server.wait(body["prompt_id"], timeout=90))
        assert error["node_type"] == "GoTReasoner"
        assert "task 'txt2img' is not one of text-to-image, edit" in error["exception_message"]
    names = [e["extra_info"]["input_name"] for e in queue_errors(comfyui_server, reasoner_only(prompt="",
                                                                                              task="txt2img"))]
    assert names.count("prompt") == 1 and len(set(names)) == len(names) and set(names) <= {"prompt", "task"}


def test_an_unlisted_model_file_is_reported_once_under_its_input(comfyui_server):
    """The loaders' validate_inputs take only the file or folder name, so its error is not repeated under the
    loader's other widgets (those are checked when the loader runs, and by ComfyUI 0.8.0 itself)."""
    graph = reasoner_only()
    graph["1"]["inputs"]["model_folder"] = "GoT-7B"
    errors = queue_errors(comfyui_server, graph, node="1")
    assert [e["extra_info"]["input_name"] for e in errors] == ["model_folder"]
    assert errors[0]["details"].startswith("model_folder - model_folder 'GoT-7B' is not one of the choices (GoT-6B")
    graph = {"1": {"class_type": "GoTUNetLoader", "inputs": {"unet_name": "GoT-7B-unet.safetensors",
                                                            "weight_dtype": "default"}},
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    errors = queue_errors(comfyui_server, graph, node="1")
    assert [e["extra_info"]["input_name"] for e in errors] == ["unet_name"]


# --- typed plans are checked where they are typed -----------------------------------------------------------

NOT_A_PLAN = "hello world"
PLAN_END = "the plan must end with <|im_gen_start|>"


def parser_graph(text) -> dict:
    return {"1": {"class_type": "GoTChainParser", "inputs": {"text": text}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}


def test_a_typed_plan_is_refused_at_queue_time_under_its_text(comfyui_server):
    (error,) = queue_errors(comfyui_server, parser_graph(NOT_A_PLAN), node="1")
    assert error["extra_info"]["input_name"] == "text"
    assert PLAN_END in error["details"] and "'hello world'" in error["details"]
    graph = reasoner_only()
    del graph["9"]  # the editor's preview is then the only output, so /prompt refuses the whole graph
    graph["3"] = {"class_type": "GoTPlanEditor", "inputs": {"chain": ["2", 0], "plan": "A ball <|box_start|>(1,2)",
                                                            "edited_from": "", "width": 64, "height": 64}}
    graph["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    (error,) = queue_errors(comfyui_server, graph, node="3")
    assert error["extra_info"]["input_name"] == "plan" and "<|box_start|> is never closed" in error["details"]


def test_a_linked_plan_is_checked_when_the_parser_runs(comfyui_server):
    graph = parser_graph(["3", 0])
    graph["3"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": NOT_A_PLAN}}
    fails(comfyui_server, graph, "GoTChainParser", PLAN_END, "'hello world'", within=10)


def test_a_plan_with_no_objects_says_so_on_the_node(comfyui_server):
    entry = comfyui_server.run(parser_graph("An empty white room.<|im_gen_start|>"), timeout=60)
    (shown,) = entry["outputs"]["1"]["text"]
    assert shown.startswith("(no boxes: this plan places no objects, so the spatial guidance is a black canvas")
