"""Schemas of the MLLM-side nodes (MLLM Loader, Reasoner, Next Turn, Chain Parser), as ComfyUI builds them from
the V3 definitions.

They live in the integration suite, as the diffusion nodes' schema tests do: `comfy_api` is ComfyUI code (not on
PyPI) that imports ComfyUI's `comfy`, `comfy_execution` and `folder_paths` at import time, so it cannot be loaded,
or honestly stubbed, without a ComfyUI checkout."""

from __future__ import annotations

import pytest

FAMILY = ("GoTMLLMLoader", "GoTReasoner", "GoTNextTurn", "GoTChainParser")


@pytest.fixture(scope="module")
def node_classes(inproc) -> dict[str, type]:
    by_id = {cls.GET_SCHEMA().node_id: cls for cls in inproc.pack_module("nodes").all_nodes()}
    return {node_id: by_id[node_id] for node_id in FAMILY}


def test_nodes_are_cached_by_their_inputs(inproc, node_classes):
    """The executor reuses a node's output while its inputs are unchanged (the loaded MLLM, an unedited chain)
    unless the node says otherwise; none of these may."""
    base = inproc.pack_module("nodes.types").io.ComfyNode
    for node_id, cls in node_classes.items():
        assert cls.GET_SCHEMA().not_idempotent is False, node_id
        assert cls.fingerprint_inputs.__func__ is base.fingerprint_inputs.__func__, f"{node_id} fingerprints inputs"


def test_streaming_nodes_ask_for_their_unique_id(inproc, node_classes):
    io = inproc.pack_module("nodes.types").io
    for node_id in ("GoTReasoner", "GoTNextTurn", "GoTChainParser"):
        assert node_classes[node_id].GET_SCHEMA().hidden == [io.Hidden.unique_id]
        assert "unique_id" in node_classes[node_id].INPUT_TYPES()["hidden"]


def test_reasoner_widgets(node_classes):
    inputs = node_classes["GoTReasoner"].INPUT_TYPES()
    required, optional = inputs["required"], inputs["optional"]
    assert required["prompt"][1]["multiline"] is True
    assert required["task"][1]["options"] == ["text-to-image", "edit"]
    assert required["sampling"][1]["default"] is False  # greedy, as the reference
    # no randomize-after-queue control on the seed: re-queueing must reuse the cached chain
    assert required["seed"][1]["control_after_generate"] is False
    assert set(optional) == {"image", "chain_start"}
    assert required["max_new_tokens"][1]["min"] == 1


def test_reasoner_refuses_an_empty_prompt_at_queue_time(node_classes):
    reasoner = node_classes["GoTReasoner"]
    assert reasoner.validate_inputs("a red ball") is True
    assert "prompt is empty" in reasoner.validate_inputs("   \n")
    assert reasoner.validate_inputs() is True  # a prompt from another node is checked when it runs


def test_loader_lists_only_model_folders(node_classes):
    loader = node_classes["GoTMLLMLoader"]
    required = loader.INPUT_TYPES()["required"]
    assert required["model_folder"][1]["options"] == ["GoT-6B"]  # the tiny converted models' LLM folder
    assert required["qwen_folder"][1]["options"][0] == "(converted: not needed)"
    assert required["dtype"][1]["options"] == ["auto", "bf16", "fp16", "fp32"]
