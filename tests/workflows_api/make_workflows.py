"""Writes the pack's workflow templates (workflows/*.json, the frontend's UI format) and their API-format twins
(tests/workflows_api/*.json, what the integration tests queue) from one description of each graph.

Run it against a ComfyUI that has this pack loaded (the node definitions come from its /object_info):

    python tests/workflows_api/make_workflows.py http://127.0.0.1:8188

tests/comfyui/test_workflows.py converts every template to API format on its own, as the frontend does, and
checks it equals its twin, so the two cannot drift apart; it also queues every twin on a real ComfyUI.
"""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_DIR = REPO / "workflows"
API_DIR = Path(__file__).resolve().parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"MarkdownNote"}  # frontend-only: not part of the API graph
SEED_NAMES = ("seed", "noise_seed")  # the frontend gives these a "control after generate" widget by default


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # input -> (source node id, output slot)
    title: str | None = None


def note(node_id: int, pos: tuple[int, int], size: tuple[int, int], text: str) -> Node:
    return Node(node_id, "MarkdownNote", pos, size, {"text": text})


# --- the graphs ---------------------------------------------------------------------------------------------

T2I_PROMPT = "A red apple and a green pear side by side on a wooden table, soft morning light"
EDIT_PROMPT = "Put a red hat on the girl's head"
WIDTH, HEIGHT = 20, 21  # ids of the shared size nodes


def size_nodes() -> list[Node]:
    return [Node(WIDTH, "PrimitiveInt", (20, 430), (300, 82), {"value": 1024}, title="width"),
            Node(HEIGHT, "PrimitiveInt", (20, 560), (300, 82), {"value": 1024}, title="height")]


def sized(links: dict | None = None) -> dict:
    return {"width": (WIDTH, 0), "height": (HEIGHT, 0), **(links or {})}


def loaders() -> list[Node]:
    return [
        Node(1, "GoTMLLMLoader", (20, 40), (330, 110),
             {"model_folder": "GoT-6B", "qwen_folder": "(converted: not needed)", "dtype": "auto"}),
        Node(4, "VAELoader", (20, 190), (330, 60), {"vae_name": "GoT-6B-vae.safetensors"}),
        Node(7, "GoTUNetLoader", (20, 290), (330, 90),
             {"unet_name": "GoT-6B-unet.safetensors", "weight_dtype": "default"}),
    ]


def reasoner(prompt: str, task: str, image: tuple[int, int] | None = None) -> Node:
    return Node(2, "GoTReasoner", (390, 40), (420, 580),
                {"prompt": prompt, "task": task, "max_new_tokens": 1024, "sampling": False, "seed": 0,
                 "temperature": 1.0, "top_p": 1.0, "chain_start": ""},
                {"mllm": (1, 0), **({"image": image} if image else {})})


def sampling(chain: tuple[int, int], scales: tuple[float, float, float], x: int = 1250) -> list[Node]:
    """Conditioning -> GoT Guider -> SamplerCustomAdvanced with GoT's DDPM (the reference's 50 "leading"
    timesteps, start noise and step noise) -> VAE Decode."""
    a_t, a_s, a_r = scales
    return [
        Node(6, "GoTSSGMConditioner", (850, 40), (330, 200),
             links=sized({"mllm": (1, 0), "chain": chain, "vae": (4, 0), "reference": (5, 0)})),
        Node(8, "GoTGuider", (850, 290), (330, 150), {"a_t": a_t, "a_s": a_s, "a_r": a_r},
             {"model": (7, 0), "branches": (6, 2)}),
        Node(9, "RandomNoise", (x, 40), (300, 82), {"noise_seed": 42}),
        Node(10, "GoTDDPMSampler", (x, 170), (300, 60)),
        Node(11, "GoTDDPMSchedule", (x, 280), (300, 90), {"steps": 50}, {"model": (7, 0)}),
        Node(12, "EmptyLatentImage", (x, 440), (300, 110), {"batch_size": 1}, sized()),
        Node(13, "SamplerCustomAdvanced", (x + 340, 40), (260, 110),
             links={"noise": (9, 0), "guider": (8, 0), "sampler": (10, 0), "sigmas": (11, 0),
                    "latent_image": (12, 0)}),
        Node(14, "VAEDecode", (x + 340, 200), (260, 50), links={"samples": (13, 0), "vae": (4, 0)}),
    ]


def plan_editor(node_id: int, chain: tuple[int, int], pos: tuple[int, int], image: tuple[int, int] | None = None,
                title: str | None = None) -> Node:
    """The GoT Plan Editor over the Reasoner's chain: unedited (plan empty) it passes the model's plan on."""
    return Node(node_id, "GoTPlanEditor", pos, (380, 640), {"plan": "", "edited_from": ""},
                sized({"chain": chain, **({"image": image} if image else {})}), title=title)


def layout_preview(node_id: int, chain: tuple[int, int], pos: tuple[int, int], title: str | None = None) -> list[Node]:
    return [Node(node_id, "GoTMaskFromBoxes", pos, (330, 110), links=sized({"chain": chain}), title=title),
            Node(node_id + 1, "PreviewImage", (pos[0], pos[1] + 150), (330, 300), links={"images": (node_id, 1)},
                 title=title and f"{title}: preview")]


def text_to_image() -> list[Node]:
    return [
        *loaders(), *size_nodes(),
        reasoner(T2I_PROMPT, "text-to-image"),
        Node(5, "GoTReferenceEncoder", (850, 490), (330, 130), links=sized({"vae": (4, 0)})),
        *sampling((2, 0), (7.5, 4.0, 1.0)),
        Node(15, "SaveImage", (1590, 300), (520, 560), {"filename_prefix": "GoT/t2i"}, {"images": (14, 0)}),
        *layout_preview(16, (2, 0), (850, 670), "layout of the chain"),
        note(30, (390, 680), (420, 300),
             "## GoT text-to-image\nThe **GoT Reasoner** writes a plan (a chain of thought with a box and a colour per "
             "object); it appears on the node while it is written. The **SSGM Conditioner** turns the plan into "
             "semantic, spatial and reference guidance; the **GoT Guider** applies GoT's three guidance scales.\n\n"
             "Models: `models/LLM/GoT-6B/`, `models/diffusion_models/GoT-6B-unet.safetensors`, "
             "`models/vae/GoT-6B-vae.safetensors` (see the README: convert the GoT-6B release once)."),
    ]


def editing() -> list[Node]:
    return [
        *loaders(), *size_nodes(),
        Node(3, "LoadImage", (20, 690), (330, 360), {"image": "example.png"}, title="image to edit"),
        reasoner(EDIT_PROMPT, "edit", image=(3, 0)),
        Node(5, "GoTReferenceEncoder", (850, 490), (330, 130), links=sized({"vae": (4, 0), "image": (3, 0)})),
        plan_editor(19, (2, 0), (850, 1200), image=(3, 0)),
        *sampling((19, 0), (4.0, 3.0, 1.5)),
        Node(18, "ImageScale", (1590, 290), (300, 130), {"upscale_method": "bicubic", "crop": "disabled"},
             {"image": (14, 0), "width": (5, 1), "height": (5, 2)}, title="back to the source's aspect ratio"),
        Node(15, "SaveImage", (1590, 470), (520, 560), {"filename_prefix": "GoT/edit"}, {"images": (18, 0)}),
        *layout_preview(16, (19, 0), (850, 670), "layout of the edit"),
        note(30, (390, 680), (420, 300),
             "## GoT image editing\nLoad the image to edit and write the instruction. The **GoT Reasoner** (task: "
             "edit) looks at the image and plans the edit step by step; the **Reference Encoder** gives the source "
             "image as reference guidance. The guider uses GoT's editing scales (a_t 4.0, a_s 3.0, a_r 1.5); the "
             "result is resized back to the source's aspect ratio.\n\nThe **GoT Plan Editor** shows the plan's boxes "
             "over the image: drag one and queue again to re-render from your plan."),
    ]


def interactive() -> list[Node]:
    return [
        *loaders(), *size_nodes(),
        reasoner(T2I_PROMPT, "text-to-image"),
        plan_editor(3, (2, 0), (850, 670), title="edit the plan here"),
        Node(5, "GoTReferenceEncoder", (850, 490), (330, 130), links=sized({"vae": (4, 0)})),
        *sampling((3, 0), (7.5, 4.0, 1.0)),
        Node(15, "SaveImage", (1590, 300), (520, 560), {"filename_prefix": "GoT/interactive"}, {"images": (14, 0)}),
        *layout_preview(16, (2, 0), (1250, 600), "reasoner's layout"),
        *layout_preview(26, (3, 0), (1590, 900), "edited layout"),
        note(30, (390, 680), (420, 380),
             "## GoT interactive generation\n1. Queue: the Reasoner writes the plan (shown on it) and the image is "
             "rendered from it; the plan's boxes appear in **edit the plan here**.\n2. Change the plan there: drag "
             "a box, pull its handles, add or delete an object, edit a phrase or a colour in the list.\n3. Queue "
             "again: the Reasoner is not run again (its inputs did not change); the semantic tokens and the layout "
             "are recomputed from your edited plan.\n\n\"back to the model's plan\" discards the edit."),
    ]


CANDIDATES = 4  # the latent batch the judge picks from


def best_of_n_judged() -> list[Node]:
    """Text to image with N candidates (one latent batch through the GoT Guider) and a judge that picks one."""
    nodes = [
        *loaders(), *size_nodes(),
        Node(3, "PrimitiveStringMultiline", (20, 690), (330, 160), {"value": T2I_PROMPT}, title="prompt"),
        Node(19, "GoTVLMLoader", (20, 900), (330, 90), {"model_folder": "GoT-6B", "dtype": "auto"},
             title="judge (the GoT MLLM itself: loaded once)"),
        replace(reasoner(T2I_PROMPT, "text-to-image"), links={"mllm": (1, 0), "prompt": (3, 0)}),
        Node(5, "GoTReferenceEncoder", (850, 490), (330, 130), links=sized({"vae": (4, 0)})),
        *sampling((2, 0), (7.5, 4.0, 1.0)),
        Node(15, "GoTJudge", (1590, 300), (400, 330), {"plan_weight": 0.5},
             {"vlm": (19, 0), "images": (14, 0), "prompt": (3, 0), "chain": (2, 0)}),
        Node(16, "SaveImage", (2030, 40), (520, 560), {"filename_prefix": "GoT/best"}, {"images": (15, 0)}),
        Node(17, "PreviewImage", (2030, 640), (520, 330), links={"images": (15, 3)}, title="scores"),
        Node(18, "PreviewImage", (1590, 680), (400, 400), links={"images": (14, 0)}, title="every candidate"),
        note(30, (390, 680), (420, 380),
             f"## GoT best of N with a judge\nThe GoT Guider renders **{CANDIDATES} candidates** at once (the Empty "
             "Latent Image's batch_size; each gets its own noise). The **GoT Judge** asks a Qwen2.5-VL (here GoT's "
             "own MLLM, loaded once) whether each image represents the prompt, and whether each box of the plan "
             "shows its object, and keeps the best: its scores are on the node and in the chart.\n\nPARM: replace "
             "the GoT Guider by the **GoT PARM Guider** (connect it to the judge's parm input too) to stop weak "
             "candidates early."),
    ]
    for node in nodes:
        if node.id == 12:
            node.widgets["batch_size"] = CANDIDATES
    return nodes


def best_of_n_reflected() -> list[Node]:
    """Best of N, then one PARM++ round: while the judge's pick scores below the threshold, the judge writes a
    correction and GoT's edit mode carries it out on the pick (the edit branch runs only then)."""
    edit_size = {"width": (WIDTH, 0), "height": (HEIGHT, 0)}
    return [
        *(node for node in best_of_n_judged() if node.id != 16),  # the pick goes on to reflection
        Node(40, "GoTReflect", (2030, 40), (400, 330), {"prompt": T2I_PROMPT, "threshold": 0.5, "plan_weight": 0.5},
             {"vlm": (19, 0), "prompt": (3, 0), "image": (15, 0), "chain": (2, 0)}),
        replace(reasoner("", "edit"), id=41, pos=(2470, 40), links={"mllm": (1, 0), "prompt": (40, 0),
                                                                    "image": (40, 1)}, title="edit by the correction"),
        plan_editor(42, (41, 0), (2930, 40), image=(40, 1), title="the correction's plan"),
        Node(43, "GoTReferenceEncoder", (2470, 660), (330, 130), links={**edit_size, "vae": (4, 0), "image": (40, 1)}),
        Node(44, "GoTSSGMConditioner", (3350, 40), (330, 200),
             links={**edit_size, "mllm": (1, 0), "chain": (42, 0), "vae": (4, 0), "reference": (43, 0)}),
        Node(45, "GoTGuider", (3350, 290), (330, 150), {"a_t": 4.0, "a_s": 3.0, "a_r": 1.5},
             {"model": (7, 0), "branches": (44, 2)}),
        Node(46, "EmptyLatentImage", (3350, 490), (300, 110), {"batch_size": 1}, dict(edit_size)),
        Node(47, "SamplerCustomAdvanced", (3720, 40), (260, 110),
             links={"noise": (9, 0), "guider": (45, 0), "sampler": (10, 0), "sigmas": (11, 0),
                    "latent_image": (46, 0)}),
        Node(48, "VAEDecode", (3720, 200), (260, 50), links={"samples": (47, 0), "vae": (4, 0)}),
        Node(49, "ImageScale", (3720, 290), (300, 130), {"upscale_method": "bicubic", "crop": "disabled"},
             {"image": (48, 0), "width": (43, 1), "height": (43, 2)}, title="back to the source's aspect ratio"),
        Node(50, "GoTReflectionRound", (4060, 40), (400, 330), links={"vlm": (19, 0), "reflection": (40, 2),
                                                                     "edited": (49, 0), "chain": (42, 0)}),
        # The round's results below the first round's, so that every result is in the first view.
        Node(51, "SaveImage", (2030, 1120), (520, 560), {"filename_prefix": "GoT/reflected"}, {"images": (50, 0)}),
        Node(52, "PreviewImage", (1590, 1120), (400, 300), links={"images": (50, 3)}, title="every round"),
        Node(53, "PreviewImage", (1590, 1460), (400, 260), links={"images": (50, 4)}, title="the rounds' scores"),
        note(31, (2930, 720), (400, 460),
             "## PARM++ reflection\nThe **GoT Reflect** judges the pick and writes one short correction (\"the "
             "pear should be green\"). While the pick scores below the threshold, the **GoT Reflection Round** "
             "asks for the edit: GoT's edit mode reasons about the pick with the correction as its instruction "
             "(the new plan is in **the correction's plan**: drag it and queue again) and renders it with the "
             "pick as reference. The round keeps the better image (every round's image, score and correction "
             "are on the node). A pick that already scores at least the threshold is kept, and the edit is not "
             "run.\n\nMore rounds: copy the nodes of this round and connect the Round's `reflection` to the next "
             "GoT Reflect's `reflection` (its image input left empty)."),
    ]


THINK_PROMPT = "The tower Gustave Eiffel built, at night, seen from the river, with the city's lights"


def think_plan_render() -> list[Node]:
    """Think-Then-Generate before GoT: the Prompt Thinker rewrites the prompt, the Reasoner plans the revision."""
    return [
        *loaders(), *size_nodes(),
        Node(41, "GoTVLMLoader", (-420, 40), (380, 90), {"model_folder": "GoT-6B", "dtype": "auto"},
             title="thinker model (the GoT MLLM itself: loaded once)"),
        Node(40, "GoTPromptThinker", (-420, 170), (380, 620), {"prompt": THINK_PROMPT, "max_new_tokens": 1024},
             {"vlm": (41, 0)}),
        replace(reasoner(THINK_PROMPT, "text-to-image"), links={"mllm": (1, 0), "prompt": (40, 0)}),
        Node(5, "GoTReferenceEncoder", (850, 490), (330, 130), links=sized({"vae": (4, 0)})),
        *sampling((2, 0), (7.5, 4.0, 1.0)),
        Node(15, "SaveImage", (1590, 300), (520, 560), {"filename_prefix": "GoT/think"}, {"images": (14, 0)}),
        *layout_preview(16, (2, 0), (850, 670), "layout of the revised prompt"),
        note(30, (-420, 830), (380, 420),
             "## GoT think, plan, render\nThe **GoT Prompt Thinker** (Think-Then-Generate) reasons step by step "
             "about what the prompt means and writes a revised prompt after `Revised Prompt:`; its thinking "
             "streams onto the node. The revision goes to the **GoT Reasoner**, which plans its layout.\n\n"
             "Any Qwen2.5-VL in models/LLM can think (the base Qwen2.5-VL-3B-Instruct, a T2G-tuned folder); "
             "here it is GoT's own MLLM, loaded once for both.\n\nOther models: connect the thinker's `prompt` "
             "output to a **CLIPTextEncode**'s `text` (SDXL, Flux, ...). Without a usable revision the original "
             "prompt goes on and the node says so."),
    ]


WORKFLOWS = {"GoT text-to-image": text_to_image, "GoT image editing": editing,
             "GoT interactive generation": interactive, "GoT best of N with a judge": best_of_n_judged,
             "GoT think, plan, render": think_plan_render, "GoT best of N, then reflect": best_of_n_reflected}


# --- conversion ---------------------------------------------------------------------------------------------

def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the order the frontend builds the node."""
    return [(name, info["input"][group][name], group == "optional")
            for group in ("required", "optional") for name in info["input_order"].get(group, [])]


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def extra_widget_values(name: str, spec: list) -> list:
    """Values of the widgets the frontend adds after a widget: seed control, image upload button."""
    options = spec[1] if len(spec) > 1 else {}
    control = options.get("control_after_generate")
    if control or (control is None and spec[0] == "INT" and name in SEED_NAMES):
        return ["fixed"]
    return ["image"] if options.get("image_upload") else []


def default_value(spec: list) -> object:
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    return choices[0] if choices else None


def widget_values(node: Node, info: dict) -> dict:
    widgets = {name: node.widgets.get(name, default_value(spec)) for name, spec, _ in ordered_inputs(info)
               if is_widget(spec)}
    unknown = set(node.widgets) - set(widgets)
    assert not unknown, f"{node.type} has no widgets {unknown}"
    return widgets


def build_ui(nodes: list[Node], object_info: dict) -> dict:
    by_id = {node.id: node for node in nodes}
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    input_slots: dict[int, list[dict]] = {}
    for node in nodes:
        if node.type in VIRTUAL_NODES:
            continue
        info = object_info[node.type]
        slots = []
        specs = ordered_inputs(info)
        for name, spec, optional in [s for s in specs if not is_widget(s[1])] + [s for s in specs if is_widget(s[1])]:
            if is_widget(spec) and name not in node.links:
                continue
            slot = {"name": name, "type": "COMBO" if isinstance(spec[0], list) else spec[0], "link": None}
            if optional:
                slot["shape"] = 7
            if is_widget(spec):
                slot["widget"] = {"name": name}
            if name in node.links:
                source, source_slot = node.links[name]
                assert source in by_id, f"{node.type}.{name} links to missing node {source}"
                link_id = len(links) + 1
                links.append([link_id, source, source_slot, node.id, len(slots), object_info[by_id[source].type]["output"][source_slot]])
                outgoing.setdefault((source, source_slot), []).append(link_id)
                slot["link"] = link_id
            slots.append(slot)
        unknown = set(node.links) - {slot["name"] for slot in slots}
        assert not unknown, f"{node.type} has no inputs {unknown}"
        input_slots[node.id] = slots
    for order, node in enumerate(nodes):
        ui_node = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                   "order": order, "mode": 0, "inputs": [], "outputs": [],
                   "properties": {"Node name for S&R": node.type}}
        if node.type in VIRTUAL_NODES:
            ui_node["widgets_values"] = [node.widgets["text"]]
        else:
            info = object_info[node.type]
            ui_node["inputs"] = input_slots[node.id]
            ui_node["outputs"] = [{"name": name, "type": kind, "links": outgoing.get((node.id, slot)) or None}
                                  for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"]))]
            values = []
            for name, value in widget_values(node, info).items():
                spec = next(s for n, s, _ in ordered_inputs(info) if n == name)
                values += [value, *extra_widget_values(name, spec)]
            ui_node["widgets_values"] = values
        if node.title:
            ui_node["title"] = node.title
        ui_nodes.append(ui_node)
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-got/" + "/".join(sorted(n.type for n in nodes)))),
            "revision": 0, "last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"ds": first_view(nodes)}, "version": 0.4}


# The canvas, in CSS pixels, a template's first view is made for: that of a 1366x768 window, the commonest laptop
# screen (frontend 1.27.10 draws 40 pixels of menu above it and of sidebar beside it).
FIRST_VIEW = (1326, 728)
VIEW_MARGIN = 24  # pixels around what the first view shows
MAX_SCALE, MIN_SCALE = 0.75, 0.6  # below 0.6 the canvas draws nodes without their widgets' text
TITLE_HEIGHT = 30  # a node's title bar, above its position
OUTPUT_NODES = {"SaveImage", "PreviewImage"}


def first_view(nodes: list[Node]) -> dict:
    """The canvas view a template opens with (extra.ds: screen = (graph + offset) * scale): every output node in
    view at FIRST_VIEW, with the Reasoner where it fits, at the largest scale up to MAX_SCALE; a layout that needs
    less than MIN_SCALE is an error."""
    outputs = [node for node in nodes if node.type in OUTPUT_NODES]
    (x0, y0, x1, y1), scale = view_of(outputs + [node for node in nodes if node.id == 2])
    if scale < MIN_SCALE:  # the Reasoner is too far from the results: the results alone
        (x0, y0, x1, y1), scale = view_of(outputs)
    if scale < MIN_SCALE:
        raise ValueError(f"the output nodes span {x1 - x0} x {y1 - y0}: too far apart for a first view of "
                         f"{FIRST_VIEW[0]} x {FIRST_VIEW[1]} at scale {MIN_SCALE}; move them closer")
    margin = VIEW_MARGIN / scale
    return {"scale": round(scale, 4), "offset": [round(margin - x0, 1), round(margin - y0, 1)]}


def view_of(shown: list[Node]) -> tuple[tuple[int, int, int, int], float]:
    """The nodes' bounding box (title bars included) and the scale that fits it into FIRST_VIEW."""
    x0 = min(node.pos[0] for node in shown)
    y0 = min(node.pos[1] - TITLE_HEIGHT for node in shown)
    x1 = max(node.pos[0] + node.size[0] for node in shown)
    y1 = max(node.pos[1] + node.size[1] for node in shown)
    width, height = (side - 2 * VIEW_MARGIN for side in FIRST_VIEW)
    return (x0, y0, x1, y1), min(MAX_SCALE, width / (x1 - x0), height / (y1 - y0))



def build_api(nodes: list[Node], object_info: dict) -> dict:
    graph = {}
    for node in sorted(nodes, key=lambda n: n.id):
        if node.type in VIRTUAL_NODES:
            continue
        info = object_info[node.type]
        inputs = {name: value for name, value in widget_values(node, info).items() if name not in node.links}
        inputs.update({name: [str(source), slot] for name, (source, slot) in node.links.items()})
        graph[str(node.id)] = {"inputs": inputs, "class_type": node.type,
                               "_meta": {"title": node.title or info["display_name"]}}
    return graph


def api_twin_path(name: str) -> Path:
    return API_DIR / f"{name}.api.json"


def main(server: str) -> None:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as response:
        object_info = json.loads(response.read())
    UI_DIR.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        nodes = make()
        (UI_DIR / f"{name}.json").write_text(json.dumps(build_ui(nodes, object_info), indent=1) + "\n")
        api_twin_path(name).write_text(json.dumps(build_api(nodes, object_info), indent=1) + "\n")
        print(f"wrote workflows/{name}.json and {api_twin_path(name).relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
