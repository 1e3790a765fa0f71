"""The per-node help pages the frontend asks for (`/extensions/comfyui-got/docs/<NodeId>.md`, served from
web/docs/): one per node, made from the node's own schema (what it is for, what goes in, what comes out) plus
a typical wiring written here. `GOT_WRITE_NODE_DOCS=1 pytest tests/comfyui/test_node_docs.py` rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
WIRING = {
    "GoTMLLMLoader": "GoT MLLM Loader → `mllm` of GoT Reasoner, GoT Next Turn and GoT SSGM Conditioner.",
    "GoTVLMLoader": "GoT VLM Loader → `vlm` of GoT Prompt Thinker or GoT Judge (the same folder and dtype as the "
                    "GoT MLLM Loader share one load).",
    "GoTPromptThinker": "GoT VLM Loader → GoT Prompt Thinker (your prompt) → `prompt` of GoT Reasoner.",
    "GoTReasoner": "GoT MLLM Loader → GoT Reasoner → `chain` into GoT Chain Parser / GoT Plan Editor (to edit), "
                   "GoT Mask from Boxes and GoT SSGM Conditioner; for an edit, Load Image → `image`.",
    "GoTNextTurn": "the previous turn's `chain` and its decoded image (VAE Decode) → GoT Next Turn → `chain` of a "
                   "second GoT SSGM Conditioner (multi-turn editing).",
    "GoTChainParser": "GoT Reasoner `chain` → GoT Chain Parser (paste and edit the text) → `chain` of GoT SSGM "
                      "Conditioner and GoT Mask from Boxes.",
    "GoTPlanEditor": "GoT Reasoner `chain` → GoT Plan Editor (drag the boxes) → `chain` of GoT SSGM Conditioner.",
    "GoTMaskFromBoxes": "a GoT chain → GoT Mask from Boxes → `masks` to inpainting or regional nodes, `layout` "
                        "to Preview Image.",
    "GoTUNetLoader": "GoT UNet Loader → `model` (optionally through LoRA or model patches such as RescaleCFG) → "
                     "GoT Guider or KSampler.",
    "GoTReferenceEncoder": "Load Image (edit) or nothing (text to image) and the VAE → GoT Reference Encoder → "
                           "`reference` of GoT SSGM Conditioner; `final_width`/`final_height` to Image Scale.",
    "GoTSSGMConditioner": "GoT MLLM Loader, a GoT chain, the VAE and GoT Reference Encoder → GoT SSGM "
                          "Conditioner → `branches` to GoT Guider (or `positive`/`negative` to KSampler).",
    "GoTGuider": "GoT UNet Loader `model` and GoT SSGM Conditioner `branches` → GoT Guider → `guider` of "
                 "SamplerCustomAdvanced (with GoT DDPM Sampler and GoT DDPM Schedule).",
    "GoTDDPMSchedule": "GoT UNet Loader `model` → GoT DDPM Schedule → `sigmas` of SamplerCustomAdvanced.",
    "GoTDDPMSampler": "GoT DDPM Sampler → `sampler` of SamplerCustomAdvanced.",
    "GoTJudge": "several decoded candidates (an IMAGE batch) and the prompt → GoT Judge → `best` to Save Image, "
                "`chart` to Preview Image.",
    "GoTPARMGuider": "in place of GoT Guider before SamplerCustomAdvanced, with a GoT VLM Loader judging the "
                     "intermediate images.",
    "GoTReflect": "GoT Judge `best` (and the chain) → GoT Reflect → `correction` to the `prompt` of a GoT Reasoner "
                  "(task edit) and `image` to its `image` and a GoT Reference Encoder; render the edit → GoT "
                  "Reflection Round.",
    "GoTReflectionRound": "GoT Reflect `reflection` and the edit's VAE Decode → GoT Reflection Round → `best` to "
                          "Save Image, `rounds` and `chart` to Preview Image; `reflection` to the next round's GoT "
                          "Reflect.",
}


def io_type(item) -> str:
    kind = item.get_io_type()
    return kind if isinstance(kind, str) else "COMBO"


def page(schema) -> str:
    def rows(items, optional_mark: bool) -> list[str]:
        lines = []
        for item in items:
            name = getattr(item, "display_name", None) or item.id
            extra = " (optional)" if optional_mark and getattr(item, "optional", False) else ""
            lines.append(f"- **{name}** (`{io_type(item)}`){extra}: {item.tooltip}")
        return lines or ["- (none)"]

    return "\n".join([
        f"# {schema.display_name}", "", schema.description, "",
        "## Inputs", "", *rows(schema.inputs, True), "",
        "## Outputs", "", *rows(schema.outputs, False), "",
        "## Typical wiring", "", WIRING.get(schema.node_id, "(not written yet)"), "",
        f"Category: {schema.category}. How GoT works: docs/ALGORITHM.md in the pack.", "",
    ])


@pytest.fixture(scope="module")
def schemas(inproc) -> dict:
    return {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA() for cls in inproc.pack_module("nodes").all_nodes()}


def test_every_node_has_its_help_page(schemas):
    if os.environ.get("GOT_WRITE_NODE_DOCS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        for node_id, schema in schemas.items():
            (DOCS / f"{node_id}.md").write_text(page(schema), encoding="utf-8")
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(schemas)
    for node_id, schema in schemas.items():
        assert node_id in WIRING, f"write the typical wiring of {node_id} in WIRING"
        text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        assert text == page(schema), f"web/docs/{node_id}.md is stale: rerun with GOT_WRITE_NODE_DOCS=1"


def test_the_server_serves_the_help_pages(comfyui_server, schemas):
    """The URL the frontend asks for: the pack's web folder is served under its folder's name."""
    import urllib.request

    with urllib.request.urlopen(comfyui_server.url + "/extensions/comfyui-got/docs/GoTReasoner.md") as response:
        assert response.status == 200 and response.read().decode() == page(schemas["GoTReasoner"])
