"""Issues 19.4 and 19.5 through a real ComfyUI server: the GoT UNet Loader reads its file with the pack's one
weight-file reader (got_backend.weights.state_dicts.load_tensor_file), so a damaged or hostile file is a GoTError
that names it, says how to fix it, never runs a pickle's code and never advises turning weights_only off; the GoT
VLM Loader reads its folder's JSON files with the one JSON reader."""

from __future__ import annotations

import os
import pickle
import shutil

from tests.comfyui.test_hardening_server import CodePayload, fails, llm_dir


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


def vlm_graph(folder: str) -> dict:
    return {"1": {"class_type": "GoTVLMLoader", "inputs": {"model_folder": folder, "dtype": "auto"}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_a_damaged_json_file_of_a_vlm_folder_is_named(comfyui_server, tiny_vlm_folder):
    """Issue 19.4: the GoT VLM Loader reads every JSON file of its folder with the pack's one reader, so a
    malformed tokenizer.json, config.json or generation_config.json, config.json = [1, 2, 3] and a broken
    preprocessor_config.json each fail under the loader, naming the file."""
    server = comfyui_server
    damages = {"tokenizer.json": ('{"version": "1.0", "truncation"', "is not valid JSON (line 1, column 32"),
               "config.json": ("[1, 2, 3]", "holds a JSON list, not the object"),
               "generation_config.json": ("{'eos_token_id': 151645}", "is not valid JSON (line 1, column 2"),
               "preprocessor_config.json": ('{"min_pixels": 3136,,}', "is not valid JSON (line 1, column 21")}
    for name, (text, what) in damages.items():
        folder = llm_dir(server) / f"vlm-bad-{name.split('.')[0]}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tiny_vlm_folder, folder)
        (folder / name).write_text(text)
        fails(server, vlm_graph(folder.name), "GoTVLMLoader", str(folder / name), what,
              "Download the folder's files again", within=30)
