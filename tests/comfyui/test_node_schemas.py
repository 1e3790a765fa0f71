"""What every node of the pack owes the user, checked on the schemas ComfyUI builds from the V3 definitions:
its outputs' types and names as the frontend wires and shows them, a GoT category and display name, a
description, a tooltip on every input and output; and every node module's nodes collected once. The node
families' own widgets and validation are tested beside this file (test_node_schemas_*.py).

They live in the integration suite: `comfy_api` is ComfyUI code (not on PyPI) that imports ComfyUI's `comfy`,
`comfy_execution`, `folder_paths` and `av` at import time, so it cannot be loaded, or honestly stubbed, without a
ComfyUI checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

NODES_DIR = Path(__file__).resolve().parents[2] / "nodes"
OUTPUTS = {  # node id -> (V1 RETURN_TYPES, RETURN_NAMES)
    "GoTMLLMLoader": (("GOT_MLLM",), ("mllm",)),
    "GoTVLMLoader": (("GOT_VLM",), ("vlm",)),
    "GoTPromptThinker": (("STRING", "STRING"), ("prompt", "thinking")),
    "GoTReasoner": (("GOT_CHAIN", "STRING"), ("chain", "text")),
    "GoTNextTurn": (("GOT_CHAIN", "STRING"), ("chain", "text")),
    "GoTChainParser": (("GOT_CHAIN", "STRING", "STRING"), ("chain", "boxes", "text")),
    "GoTPlanEditor": (("GOT_CHAIN", "STRING", "STRING"), ("chain", "boxes", "text")),
    "GoTMaskFromBoxes": (("MASK", "IMAGE"), ("masks", "layout")),
    "GoTUNetLoader": (("MODEL",), ("model",)),
    "GoTReferenceEncoder": (("LATENT", "INT", "INT"), ("reference", "final_width", "final_height")),
    "GoTSSGMConditioner": (("CONDITIONING", "CONDITIONING", "GOT_BRANCHES"), ("positive", "negative", "branches")),
    "GoTGuider": (("GUIDER",), ("guider",)),
    "GoTDDPMSchedule": (("SIGMAS",), ("sigmas",)),
    "GoTDDPMSampler": (("SAMPLER",), ("sampler",)),
    "GoTJudge": (("IMAGE", "INT", "STRING", "IMAGE"), ("best", "index", "scores", "chart")),
    "GoTPARMGuider": (("GUIDER",), ("guider",)),
    "GoTReflect": (("STRING", "IMAGE", "GOT_REFLECTION"), ("correction", "image", "reflection")),
    "GoTReflectionRound": (("IMAGE", "GOT_REFLECTION", "STRING", "IMAGE", "IMAGE"),
                           ("best", "reflection", "report", "rounds", "chart")),
}


@pytest.fixture(scope="module")
def pack_nodes(inproc) -> list[type]:
    return inproc.pack_module("nodes").all_nodes()


def test_every_node_is_documented(pack_nodes):
    for cls in pack_nodes:
        schema = cls.GET_SCHEMA()  # also ComfyUI's own schema validation (unique ids)
        node_id = schema.node_id
        assert schema.category.startswith("GoT/") and schema.display_name.startswith("GoT "), node_id
        assert len(schema.description) > 40, node_id
        for item in schema.inputs + schema.outputs:
            assert item.tooltip and len(item.tooltip) > 15, f"{node_id}.{item.id} lacks a tooltip"
        assert all(output.display_name for output in schema.outputs), f"{node_id}: outputs need readable names"


def test_v1_view_the_frontend_gets(pack_nodes):
    outputs = {cls.GET_SCHEMA().node_id: (tuple(cls.RETURN_TYPES), tuple(cls.RETURN_NAMES)) for cls in pack_nodes}
    assert outputs == OUTPUTS
    for cls in pack_nodes:
        node_id = cls.GET_SCHEMA().node_id
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), node_id
        assert all(spec[1].get("tooltip") for group in cls.INPUT_TYPES().values() for spec in group.values()
                   if len(spec) > 1), node_id


def test_the_pack_collects_every_node_module_once(inproc, pack_nodes):
    """all_nodes() lists every node that a module of nodes/ defines (in NODES), each once."""
    modules = [inproc.pack_module(f"nodes.{path.stem}") for path in sorted(NODES_DIR.glob("[!_]*.py"))]
    defined = [cls for module in modules for cls in getattr(module, "NODES", [])]
    assert set(pack_nodes) == set(defined) and len(pack_nodes) == len(defined)
    ids = [cls.GET_SCHEMA().node_id for cls in pack_nodes]
    assert len(ids) == len(set(ids)) == len(pack_nodes)
