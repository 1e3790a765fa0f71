"""The workflow templates and the MLLM nodes through a real ComfyUI server (the `comfyui_server` fixture): the
templates and their API twins describe the same graph; every twin renders an image with the tiny GoT; the chain
streams onto the Reasoner with a token progress bar; Cancel and bad input fail one prompt, never the server."""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI_DIR = REPO / "workflows"
API_DIR = REPO / "tests" / "workflows_api"
WORKFLOWS = ("GoT text-to-image", "GoT image editing", "GoT interactive generation", "GoT best of N with a judge",
             "GoT think, plan, render", "GoT best of N, then reflect")
MLLM_NODES = {"GoTMLLMLoader": "GoT/loaders", "GoTReasoner": "GoT/reasoning", "GoTNextTurn": "GoT/reasoning",
              "GoTChainParser": "GoT/reasoning", "GoTPlanEditor": "GoT/reasoning", "GoTVLMLoader": "GoT/loaders",
              "GoTPromptThinker": "GoT/reasoning"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}
BOI = "<|im_gen_start|>"
CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,300),(480,800)<|box_end|> (red) and a "
         "<|object_ref_start|>green pear<|object_ref_end|><|box_start|>(520,250),(900,820)<|box_end|> (green)." + BOI)
SIZE = 64
BINARY_TEXT = 3  # ComfyUI's BinaryEventTypes.TEXT (progress text sent to a node)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def twin(name: str) -> dict:
    return load_json(API_DIR / f"{name}.api.json")


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    return [node for node in graph.values() if node["class_type"] == class_type]


def small(graph: dict, chain_start: str = CHAIN, max_new_tokens: int = 8) -> dict:
    """The graph at test size: 64x64, 2 denoising steps, a short (or given) chain."""
    graph = copy.deepcopy(graph)
    for node in nodes_of(graph, "PrimitiveInt"):
        node["inputs"]["value"] = SIZE
    for node in nodes_of(graph, "GoTDDPMSchedule"):
        node["inputs"]["steps"] = 2
    for node in nodes_of(graph, "GoTReasoner"):
        node["inputs"].update(chain_start=chain_start, max_new_tokens=max_new_tokens)
    return graph


def reasoner_only(prompt: str = "a red ball", max_new_tokens: int = 8) -> dict:
    graph = {key: node for key, node in twin("GoT text-to-image").items() if key in ("1", "2")}
    graph["2"]["inputs"].update(prompt=prompt, max_new_tokens=max_new_tokens)
    graph["2"]["inputs"]["seed"] += 1 + int(time.time() * 1000) % 10**6  # never a cached result
    return {**graph, "9": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}


@pytest.fixture(scope="module")
def object_info(comfyui_server) -> dict:
    return comfyui_server.object_info()


@pytest.fixture(scope="module")
def source_image(comfyui_server) -> Path:
    """The edit template's `example.png`, 96x64, in the server's input folder."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).ellipse((20, 12, 60, 52), fill="red")
    path = comfyui_server.base_dir / "input" / "example.png"
    path.parent.mkdir(exist_ok=True)
    image.save(path)
    return path


def ran(comfyui_server, graph: dict, name: str) -> tuple[dict, float]:
    started = time.monotonic()
    entry = comfyui_server.run(graph)
    seconds = time.monotonic() - started
    error = comfyui_server.execution_error(entry)
    assert entry["status"]["status_str"] == "success", f"{name}: {error and error['exception_message']}"
    print(f"\n[wall time] {name}: {seconds:.2f} s on the CPU")
    return entry, seconds


def saved_image(comfyui_server, entry: dict, node_id: str):
    from PIL import Image

    (image,) = entry["outputs"][node_id]["images"]
    return Image.open(comfyui_server.base_dir / image["type"] / image["subfolder"] / image["filename"])


def cached_nodes(entry: dict) -> set[str]:
    return {node for kind, data in entry["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]}


# --- the UI templates and their API twins -------------------------------------------------------------------

def has_extra_widget(name: str, spec: list) -> bool:
    """The frontend adds a second widget after seeds (control after generate) and image combos (upload)."""
    options = spec[1] if len(spec) > 1 else {}
    control = options.get("control_after_generate")
    return bool(control or (control is None and spec[0] == "INT" and name in ("seed", "noise_seed"))
                or options.get("image_upload"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the frontend queues for a saved workflow (its graphToPrompt): widget values by name, links as
    [source id, output slot], frontend-only nodes left out."""
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed"
        info = object_info[node["type"]]
        values, inputs = list(node["widgets_values"]), {}
        for group in ("required", "optional"):
            for name in info["input_order"].get(group, []):
                spec = info["input"][group][name]
                if isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    inputs[name] = values.pop(0)
                    if has_extra_widget(name, spec):
                        values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}) has widget values left over: {values}"
        for slot, socket in enumerate(node["inputs"]):
            if socket["link"] is not None:
                _, source, source_slot, target, target_slot, kind = links[socket["link"]]
                assert (target, target_slot) == (node["id"], slot), f"link {socket['link']} points elsewhere"
                source_type = next(n["type"] for n in workflow["nodes"] if n["id"] == source)
                assert object_info[source_type]["output"][source_slot] == kind == socket["type"]
                inputs[socket["name"]] = [str(source), source_slot]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                "_meta": {"title": node.get("title", info["display_name"])}}
    return api


def graph(api: dict) -> dict:
    """An API prompt's graph: each node's class and inputs, without `_meta` (titles, which ComfyUI versions fill
    differently: 0.8's /object_info gives display names that 0.3.64's did not)."""
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in api.items()}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_template_and_api_twin_describe_the_same_graph(object_info, name):
    workflow = load_json(UI_DIR / f"{name}.json")
    assert workflow["version"] == 0.4 and workflow["last_link_id"] == len(workflow["links"])
    assert graph(ui_to_api(workflow, object_info)) == graph(twin(name))


def test_templates_are_what_the_generator_writes(object_info):
    """workflows/ and tests/workflows_api/ are regenerated after every change to make_workflows.py."""
    spec = importlib.util.spec_from_file_location("make_workflows", API_DIR / "make_workflows.py")
    make = sys.modules["make_workflows"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(make)
    for name, nodes in make.WORKFLOWS.items():
        assert make.build_ui(nodes(), object_info) == load_json(UI_DIR / f"{name}.json"), name
        assert graph(make.build_api(nodes(), object_info)) == graph(twin(name)), name


def test_templates_are_all_twinned_and_served(comfyui_server):
    assert sorted(p.stem for p in UI_DIR.glob("*.json")) == sorted(WORKFLOWS)
    assert sorted(p.name.removesuffix(".api.json") for p in API_DIR.glob("*.api.json")) == sorted(WORKFLOWS)
    status, listed = comfyui_server.get("/workflow_templates")
    assert status == 200 and sorted(listed["comfyui-got"]) == sorted(WORKFLOWS)
    status, served = comfyui_server.get("/api/workflow_templates/comfyui-got/"
                                        + urllib.parse.quote("GoT text-to-image.json"))
    assert status == 200 and served == load_json(UI_DIR / "GoT text-to-image.json")


def test_server_lists_the_mllm_nodes(object_info):
    for name, category in MLLM_NODES.items():
        assert object_info[name]["category"] == category
        assert object_info[name]["python_module"].endswith("comfyui-got")
    used = {node["class_type"] for name in WORKFLOWS for node in twin(name).values()}
    assert used <= set(object_info), f"the templates use unknown nodes: {used - set(object_info)}"


# --- every template renders ---------------------------------------------------------------------------------

def test_text_to_image_template_renders(comfyui_server):
    graph = small(twin("GoT text-to-image"))
    # another seed (unused: greedy, finished chain_start) so that the Reasoner runs even when the thumbnail test
    # rendered this template first; ComfyUI 0.8.0 leaves a cached node's UI output out of the history
    graph["2"]["inputs"]["seed"] += 1
    entry, _ = ran(comfyui_server, graph, "GoT text-to-image (64x64, 2 steps)")
    assert saved_image(comfyui_server, entry, "15").size == (SIZE, SIZE)
    assert entry["outputs"]["2"]["text"] == [CHAIN]  # the chain shown on the Reasoner
    assert saved_image(comfyui_server, entry, "17").size == (SIZE, SIZE)  # the layout preview
    again, _ = ran(comfyui_server, graph, "GoT text-to-image, unchanged")
    assert {"1", "2", "6", "15"} <= cached_nodes(again)  # the loaded MLLM and the chain are reused


def test_editing_template_renders_at_the_source_aspect(comfyui_server, source_image):
    entry, _ = ran(comfyui_server, small(twin("GoT image editing")), "GoT image editing (64x64, 2 steps)")
    assert saved_image(comfyui_server, entry, "15").size == (96, SIZE)  # 96x64 source, short side 64


def test_interactive_template_rerenders_only_after_the_edit(comfyui_server):
    graph = small(twin("GoT interactive generation"), chain_start="")  # the tiny MLLM writes 8 tokens
    (editor,) = nodes_of(graph, "GoTPlanEditor")
    editor["inputs"]["plan"] = CHAIN  # the user's plan replaces them
    first, _ = ran(comfyui_server, graph, "GoT interactive generation (64x64, 2 steps)")
    reasoned = first["outputs"]["2"]["text"][0]
    assert reasoned != CHAIN and first["outputs"]["3"]["text"][0].startswith('1. "red apple" (100,300)-(480,800) red')
    editor["inputs"]["plan"] = CHAIN.replace("(green)", "(gold)").replace("(520,250)", "(560,250)")
    second, _ = ran(comfyui_server, graph, "GoT interactive generation, chain edited")
    assert {"1", "2", "4", "7"} <= cached_nodes(second)  # the Reasoner did not run again
    assert not {"3", "6", "13", "15"} & cached_nodes(second)  # the edited plan and what follows did
    assert second["outputs"]["3"]["text"][0].splitlines()[1] == '2. "green pear" (560,250)-(900,820) gold'
    before, after = (saved_image(comfyui_server, entry, "15") for entry in (first, second))
    assert before.tobytes() != after.tobytes()


# --- streaming, progress, Cancel ----------------------------------------------------------------------------

class Listener:
    """The frontend's side of the websocket: progress of each node and the text streamed onto it."""

    def __init__(self, server) -> None:
        import websocket

        self.client_id = str(uuid.uuid4())
        address = server.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.socket = websocket.create_connection(address, timeout=1)
        self.progress: list[dict] = []
        self.texts: list[tuple[str, str]] = []
        self.executing: list[tuple[float, dict]] = []  # (time.time() when it came, the message's data)
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        import websocket

        while not self.closed:
            try:
                opcode, data = self.socket.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            if opcode == websocket.ABNF.OPCODE_BINARY:
                (kind,) = struct.unpack(">I", data[:4])
                if kind == BINARY_TEXT:
                    (length,) = struct.unpack(">I", data[4:8])
                    self.texts.append((data[8:8 + length].decode(), data[8 + length:].decode()))
            elif opcode == websocket.ABNF.OPCODE_TEXT:
                message = json.loads(data)
                if message["type"] == "progress":
                    self.progress.append(message["data"])
                elif message["type"] == "executing":
                    self.executing.append((time.time(), message["data"]))

    def queue(self, server, graph: dict) -> str:
        status, body = server.post("/prompt", {"prompt": graph, "client_id": self.client_id})
        assert status == 200, body
        return body["prompt_id"]

    def cancel(self, server, prompt_id: str, timeout: float = 300) -> dict:
        """POST /interrupt, wait for the prompt's /history entry, stop listening; the entry's status messages."""
        assert server.post("/interrupt", {})[0] == 200
        try:
            return dict(server.wait(prompt_id, timeout=timeout)["status"]["messages"])
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.thread.join(5)
        self.socket.close()


@pytest.fixture
def listener(comfyui_server):
    listener = Listener(comfyui_server)
    yield listener
    listener.close()


def test_the_chain_streams_onto_the_reasoner_with_token_progress(comfyui_server, listener):
    prompt_id = listener.queue(comfyui_server, reasoner_only(max_new_tokens=40))
    entry = comfyui_server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success"
    final = entry["outputs"]["2"]["text"][0]
    steps = [(p["value"], p["max"]) for p in listener.progress if p["node"] == "2" and p["prompt_id"] == prompt_id]
    assert steps[:3] == [(1, 40), (2, 40), (3, 40)] and steps[-1] == (40, 40)
    streamed = [text for node, text in listener.texts if node == "2"]
    assert streamed and streamed[-1].startswith(final)  # the last update is the finished chain (plus a note)
    assert all(final.startswith(text) for text in streamed[:-1])  # earlier ones are its beginnings


def test_cancel_mid_reasoning_returns_the_server_to_idle(comfyui_server, listener):
    prompt_id = listener.queue(comfyui_server, reasoner_only(max_new_tokens=8000))
    deadline = time.monotonic() + 120
    while not any(p["node"] == "2" and p["value"] >= 20 for p in listener.progress if p["prompt_id"] == prompt_id):
        assert time.monotonic() < deadline, "the Reasoner never started writing"
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    assert comfyui_server.post("/interrupt", {})[0] == 200
    entry = comfyui_server.wait(prompt_id, timeout=60)
    stopped = time.monotonic() - cancelled_at
    print(f"\n[cancel] the Reasoner stopped {stopped:.2f} s after POST /interrupt")
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]
    assert max(p["value"] for p in listener.progress if p["prompt_id"] == prompt_id) < 8000
    assert comfyui_server.get("/queue")[1] == {"queue_running": [], "queue_pending": []}
    assert ran(comfyui_server, reasoner_only(max_new_tokens=4), "Reasoner after a Cancel")[0]


# --- bad input fails the prompt, not the server -------------------------------------------------------------

def test_an_empty_prompt_is_refused_at_queue_time(comfyui_server):
    graph = small(twin("GoT text-to-image"))
    graph["2"]["inputs"]["prompt"] = "  "
    status, body = comfyui_server.submit(graph)
    assert status == 400 and "prompt is empty" in json.dumps(body["node_errors"]["2"])


def test_an_edit_without_an_image_is_a_node_error(comfyui_server):
    graph = small(twin("GoT image editing"))
    for node in ("2", "5"):
        del graph[node]["inputs"]["image"]
    entry = comfyui_server.run(graph)
    error = comfyui_server.execution_error(entry)
    assert error["node_type"] == "GoTReasoner" and "needs the image to edit" in error["exception_message"]


def test_an_unknown_colour_in_the_edited_chain_is_refused_under_the_editor(comfyui_server):
    graph = small(twin("GoT interactive generation"))
    (editor,) = [key for key, node in graph.items() if node["class_type"] == "GoTPlanEditor"]
    graph[editor]["inputs"]["plan"] = CHAIN.replace("(green)", "(blurple)")
    _, body = comfyui_server.submit(graph)  # at queue time: the plan is typed (the rest of the graph may run)
    (error,) = body["node_errors"][editor]["errors"]
    assert error["extra_info"]["input_name"] == "plan"
    assert "'blurple', which is not a colour name" in error["details"]
    assert f"at character {CHAIN.index('<|object_ref_start|>green pear')}" in error["details"]


def test_a_folder_outside_models_llm_is_refused(comfyui_server):
    graph = reasoner_only()
    graph["1"]["inputs"]["model_folder"] = "../../../etc"
    status, body = comfyui_server.submit(graph)
    assert status == 400 and "not one of the choices" in json.dumps(body["node_errors"]["1"])


def test_the_server_keeps_serving_after_the_failures(comfyui_server):
    entry, _ = ran(comfyui_server, small(twin("GoT text-to-image")), "GoT text-to-image after failures")
    assert entry["outputs"]["15"]["images"]


# --- think, plan, render (the Prompt Thinker before the Reasoner) -------------------------------------------

THINKER = "40"


def thinking(graph: dict, max_new_tokens: int) -> dict:
    """The think template with a short thinker (the tiny model never writes "Revised Prompt:" by itself)."""
    graph["40"]["inputs"].update(max_new_tokens=max_new_tokens,
                                 seed=1 + int(time.time() * 1000) % 10**6)  # never a cached thought
    return graph


def test_think_plan_render_template_renders_and_streams_the_thinking(comfyui_server, listener):
    graph = thinking(small(twin("GoT think, plan, render")), max_new_tokens=24)
    assert graph["2"]["inputs"]["prompt"] == [THINKER, 0]  # the Reasoner plans the thinker's prompt
    entry = comfyui_server.wait(listener.queue(comfyui_server, graph))
    assert entry["status"]["status_str"] == "success", comfyui_server.execution_error(entry)
    assert saved_image(comfyui_server, entry, "15").size == (SIZE, SIZE)
    (shown,) = entry["outputs"][THINKER]["text"]
    assert 'Revised Prompt: The tower Gustave Eiffel built' in shown  # no revision: the original prompt went on
    assert 'no "Revised Prompt:" in the answer: the original prompt is passed on' in shown
    steps = [(p["value"], p["max"]) for p in listener.progress if p["node"] == THINKER]
    assert steps[:2] == [(1, 24), (2, 24)] and steps[-1] == (24, 24)
    streamed = [text for node, text in listener.texts if node == THINKER]
    assert len(streamed) >= 2 and streamed[-1] == shown  # streamed while thinking, then the result


def test_what_the_thinker_adds_to_the_wall_time(comfyui_server):
    """The same render with and without 24 thinking tokens before it, every model already loaded."""
    plain = small(twin("GoT text-to-image"))
    ran(comfyui_server, plain, "GoT text-to-image, warming up")
    plain["2"]["inputs"]["seed"] += 1 + int(time.time() * 1000) % 10**6  # everything after the loaders re-runs
    _, without = ran(comfyui_server, plain, "GoT text-to-image (64x64, 2 steps)")
    _, with_thinking = ran(comfyui_server, thinking(small(twin("GoT think, plan, render")), max_new_tokens=24),
                           "GoT think, plan, render (24 thinking tokens, 64x64, 2 steps)")
    print(f"\n[wall time] the thinker adds {with_thinking - without:.2f} s for 24 tokens on the tiny models")


def test_an_empty_prompt_to_the_thinker_is_refused_at_queue_time(comfyui_server):
    graph = small(twin("GoT think, plan, render"))
    graph[THINKER]["inputs"]["prompt"] = " "
    status, body = comfyui_server.submit(graph)
    assert status == 400 and "prompt to think about is empty" in json.dumps(body["node_errors"][THINKER])
