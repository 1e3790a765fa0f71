"""GoT's diffusion-side nodes through a real ComfyUI server (the `comfyui_server` fixture): what the frontend
sees in /object_info, and bad inputs that must fail one prompt without taking the server down."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from got_backend.testing.fixtures import unet_config

DIFFUSION_NODES = {"GoTUNetLoader": "GoT/loaders", "GoTMaskFromBoxes": "GoT/layout",
                   "GoTReferenceEncoder": "GoT/conditioning", "GoTSSGMConditioner": "GoT/conditioning",
                   "GoTGuider": "GoT/sampling"}


@pytest.fixture(scope="module")
def object_info(comfyui_server) -> dict:
    return comfyui_server.object_info()


def pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items() if info["python_module"].endswith("comfyui-got")}


def test_server_lists_the_diffusion_nodes(object_info):
    listed = pack_nodes(object_info)
    for name, category in DIFFUSION_NODES.items():
        assert name in listed, f"{name} missing from /object_info; the pack's nodes: {sorted(listed)}"
        assert listed[name]["category"] == category
        assert listed[name]["display_name"].startswith("GoT ")


def test_every_pack_node_has_a_description_and_tooltips(object_info):
    listed = pack_nodes(object_info)
    assert listed, "no node of the pack is listed; see the server log for the import error"
    for name, info in listed.items():
        assert info["description"].strip(), f"{name} has no description"
        for group in ("required", "optional"):
            for input_name, spec in info["input"].get(group, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip", "").strip(), f"{name}.{input_name} has no tooltip"
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]) and all(t and t.strip() for t in tooltips), \
            f"{name} outputs lack tooltips: {tooltips}"


def test_unet_loader_offers_only_model_folder_files(comfyui_server, object_info):
    kind, spec = object_info["GoTUNetLoader"]["input"]["required"]["unet_name"]
    assert kind == "COMBO" and "GoT-6B-unet.safetensors" in spec["options"]
    status, body = comfyui_server.submit({
        "1": {"class_type": "GoTUNetLoader", "inputs": {"unet_name": "../../../etc/passwd", "weight_dtype": "default"}},
        "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "diffusion_models/x"}},
    })
    assert status == 400, body
    error = body["node_errors"]["1"]["errors"][0]  # ComfyUI repeats a node's validation message per input
    assert error["type"] == "custom_validation_failed" and "not a file in ComfyUI's diffusion_models" in error["details"]


def save_graph(unet_name: str) -> dict:
    return {"1": {"class_type": "GoTUNetLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
            "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "got_test/unet"}}}


def test_a_plain_sdxl_unet_fails_its_prompt_and_the_server_goes_on(comfyui_server):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    plain = UNet2DConditionModel(**dict(unet_config(), in_channels=4)).state_dict()
    save_file({k: v.half() for k, v in plain.items()},
              str(comfyui_server.base_dir / "models" / "diffusion_models" / "plain-sdxl.safetensors"))
    failed = comfyui_server.run(save_graph("plain-sdxl.safetensors"))
    error = node_error(comfyui_server, failed)
    assert error["node_type"] == "GoTUNetLoader" and "4 input channels" in error["exception_message"]
    assert "GoT-6B-unet.safetensors" in error["exception_message"]  # says what to pick instead
    assert comfyui_server.run(save_graph("GoT-6B-unet.safetensors"))["status"]["status_str"] == "success"


def test_a_batched_source_image_is_a_node_error(comfyui_server):
    graph = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "GoT-6B-vae.safetensors"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}},
        "3": {"class_type": "GoTReferenceEncoder", "inputs": {"vae": ["1", 0], "image": ["2", 0], "width": 64, "height": 64}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "got_test/ref"}},
    }
    error = node_error(comfyui_server, comfyui_server.run(graph))
    assert error["node_type"] == "GoTReferenceEncoder" and "batch of 2 images" in error["exception_message"]
    del graph["2"], graph["3"]["inputs"]["image"]  # text-to-image: the black reference
    assert comfyui_server.run(graph)["status"]["status_str"] == "success"


def node_error(server, entry: dict) -> dict:
    error = server.execution_error(entry)
    assert error is not None, f"expected a node error, got {entry['status']}"
    return error
