"""The GoT Plan Editor node through the real ComfyUI server: what its UI output tells the frontend, and that an
artist's edit is never silently replaced when the model's plan changes."""

from __future__ import annotations

from test_workflows import CHAIN, twin

EDITED = CHAIN.replace("(520,250),(900,820)", "(560,250),(940,820)")
CHANGED = CHAIN.replace("red apple", "yellow apple")  # what the model writes after its prompt changed


def plan_graph(model_chain: str, plan: str, edited_from: str) -> dict:
    """Reasoner (given the whole chain) -> Plan Editor -> the text it passes on."""
    graph = {key: node for key, node in twin("GoT interactive generation").items() if key in ("1", "2")}
    graph["2"]["inputs"].update(chain_start=model_chain, max_new_tokens=8)
    graph["3"] = {"class_type": "GoTPlanEditor", "inputs": {"chain": ["2", 0], "plan": plan, "edited_from": edited_from,
                                                           "width": 96, "height": 64}}
    graph["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}
    return graph


def editor_run(server, graph: dict) -> tuple[dict, str, str]:
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", server.execution_error(entry)
    (message,) = entry["outputs"]["3"]["got_plan"]
    return message, entry["outputs"]["3"]["text"][0], entry["outputs"]["9"]["text"][0]


def test_the_editor_receives_the_models_plan_and_keeps_the_artists_edit(comfyui_server):
    message, boxes, passed_on = editor_run(comfyui_server, plan_graph(CHAIN, "", ""))
    assert message == {"model_chain": CHAIN, "plan": CHAIN, "edited": False, "model_changed": False,
                       "width": 96, "height": 64, "source": []}
    assert passed_on == CHAIN and boxes.startswith('1. "red apple" (100,300)-(480,800) red')

    message, _, passed_on = editor_run(comfyui_server, plan_graph(CHAIN, EDITED, CHAIN))
    assert (message["plan"], message["edited"], message["model_changed"], passed_on) == (EDITED, True, False, EDITED)

    message, boxes, passed_on = editor_run(comfyui_server, plan_graph(CHANGED, EDITED, CHAIN))
    assert message["model_chain"] == CHANGED and message["model_changed"] and passed_on == EDITED
    assert boxes.startswith("[the model's plan changed since this edit")

    message, _, passed_on = editor_run(comfyui_server, plan_graph(CHANGED, "", ""))  # "take the model's plan"
    assert (message["edited"], message["model_changed"], passed_on) == (False, False, CHANGED)
