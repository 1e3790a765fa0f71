"""Schemas of the diffusion-side nodes, as ComfyUI builds them from the V3 definitions.

These live in the integration suite: `comfy_api` is ComfyUI code (not on PyPI) and imports ComfyUI's
`comfy`, `comfy_execution`, `folder_paths` and `av` at import time, so it cannot be loaded, or honestly stubbed,
without a ComfyUI checkout."""

from __future__ import annotations

import pytest

MODULES = ("nodes.unet_loader", "nodes.layout", "nodes.reference", "nodes.guider")
RETURN_TYPES = {
    "GoTUNetLoader": ("MODEL",),
    "GoTMaskFromBoxes": ("MASK", "IMAGE"),
    "GoTReferenceEncoder": ("LATENT", "INT", "INT"),
    "GoTSSGMConditioner": ("CONDITIONING", "CONDITIONING", "GOT_BRANCHES"),
    "GoTGuider": ("GUIDER",),
}


@pytest.fixture(scope="module")
def node_classes(inproc) -> dict[str, type]:
    return {cls.GET_SCHEMA().node_id: cls for module in MODULES for cls in inproc.pack_module(module).NODES}


def test_each_node_is_documented(node_classes):
    assert set(node_classes) == set(RETURN_TYPES)
    for node_id, cls in node_classes.items():
        schema = cls.GET_SCHEMA()  # also ComfyUI's own schema validation (unique ids)
        assert schema.category.startswith("GoT/") and schema.display_name.startswith("GoT ")
        assert len(schema.description) > 40, node_id
        for item in schema.inputs + schema.outputs:
            assert item.tooltip and len(item.tooltip) > 15, f"{node_id}.{item.id} lacks a tooltip"


def test_v1_view_the_frontend_gets(node_classes):
    for node_id, cls in node_classes.items():
        assert tuple(cls.RETURN_TYPES) == RETURN_TYPES[node_id]
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        assert all(spec[1].get("tooltip") for group in cls.INPUT_TYPES().values() for spec in group.values()
                   if len(spec) > 1)
    assert "image" in node_classes["GoTReferenceEncoder"].INPUT_TYPES()["optional"]


def test_guider_defaults_are_gots_text_to_image_scales(inproc, node_classes):
    scales = inproc.pack_module("got_backend.guidance").T2I_SCALES
    inputs = node_classes["GoTGuider"].INPUT_TYPES()["required"]
    assert [inputs[name][1]["default"] for name in ("a_t", "a_s", "a_r")] == [7.5, 4.0, 1.0] == list(scales)
    for name, edit in (("a_t", 4.0), ("a_s", 3.0), ("a_r", 1.5)):
        assert f"{edit} for editing" in inputs[name][1]["tooltip"]


def test_size_widgets_default_to_1024_in_latent_steps(node_classes):
    for node_id in ("GoTMaskFromBoxes", "GoTReferenceEncoder", "GoTSSGMConditioner"):
        inputs = node_classes[node_id].INPUT_TYPES()["required"]
        for name in ("width", "height"):
            assert inputs[name][0] == "INT"
            assert {k: inputs[name][1][k] for k in ("default", "step", "min")} == {"default": 1024, "step": 8, "min": 64}


def test_unet_loader_offers_and_accepts_only_model_folder_files(node_classes):
    loader = node_classes["GoTUNetLoader"]
    options = loader.INPUT_TYPES()["required"]["unet_name"][1]["options"]
    assert "GoT-6B-unet.safetensors" in options
    assert loader.validate_inputs("GoT-6B-unet.safetensors", "default") is True
    for name in ("../vae/GoT-6B-vae.safetensors", "/etc/passwd", "missing.safetensors"):
        assert "not a file in ComfyUI's diffusion_models folders" in loader.validate_inputs(name, "default")
    assert "weight_dtype" in loader.validate_inputs("GoT-6B-unet.safetensors", "fp4")


def test_the_pack_collects_the_diffusion_nodes(inproc, node_classes):
    collected = inproc.pack_module("nodes").all_nodes()
    assert set(node_classes.values()) <= set(collected)
    ids = [cls.GET_SCHEMA().node_id for cls in collected]
    assert len(ids) == len(set(ids))
