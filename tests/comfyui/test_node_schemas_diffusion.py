"""Schemas of the diffusion-side nodes, as ComfyUI builds them from the V3 definitions.

These live in the integration suite: `comfy_api` is ComfyUI code (not on PyPI) and imports ComfyUI's
`comfy`, `comfy_execution`, `folder_paths` and `av` at import time, so it cannot be loaded, or honestly stubbed,
without a ComfyUI checkout."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def node_classes(inproc) -> dict[str, type]:
    return {cls.GET_SCHEMA().node_id: cls for cls in inproc.pack_module("nodes").all_nodes()}


def test_the_reference_image_is_optional(node_classes):
    assert "image" in node_classes["GoTReferenceEncoder"].INPUT_TYPES()["optional"]


def test_guider_defaults_are_gots_text_to_image_scales(inproc, node_classes):
    scales = inproc.pack_module("got_backend.ssgm.guidance").T2I_SCALES
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
    assert loader.validate_inputs("GoT-6B-unet.safetensors") is True
    for name in ("../vae/GoT-6B-vae.safetensors", "/etc/passwd", "missing.safetensors"):
        assert "not a file in ComfyUI's diffusion_models folders" in loader.validate_inputs(name)
    with pytest.raises(ValueError, match="GoT UNet Loader: weight_dtype 'fp4' is not one of the choices"):
        loader.execute("GoT-6B-unet.safetensors", "fp4")  # checked when run, before loading
