"""Issue 19.5 through a real ComfyUI server: the GoT UNet Loader reads its file with the pack's one weight-file
reader (got_backend.weights.state_dicts.load_tensor_file), so a damaged or hostile file is a GoTError that names
it, says how to fix it, never runs a pickle's code and never advises turning weights_only off."""

from __future__ import annotations

import os
import pickle

from tests.comfyui.test_hardening_server import CodePayload, fails


def unet_graph(name: str) -> dict:
    return {"1": {"class_type": "GoTUNetLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_a_damaged_or_hostile_unet_file_is_named_and_never_run(comfyui_server, tmp_path):
    server = comfyui_server
    folder = server.base_dir / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    real = (server.models_dir / "diffusion_models" / "GoT-6B-unet.safetensors").read_bytes()
    marker = tmp_path / "pwned"
    files = {
        "truncated-unet.safetensors": (real[: len(real) // 2], ["is not a complete safetensors file",
                                                                "convert the GoT-6B release again"]),
        "garbage-unet.safetensors": (os.urandom(4096), ["convert the GoT-6B release again"]),
        "code-unet.pt": (pickle.dumps({"w": CodePayload(os.system, f"touch {marker}")}, protocol=2),
                         ["holds code the loader refused to run", "system"]),
    }
    for name, (data, phrases) in files.items():
        (folder / name).write_bytes(data)
        message = fails(server, unet_graph(name), "GoTUNetLoader", name, *phrases, within=30)
        assert "weights_only" not in message, message
    assert not marker.exists()  # the pickle's code never ran
