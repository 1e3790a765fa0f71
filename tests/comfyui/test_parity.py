"""The ComfyUI graph against the reference pipeline (got_backend.pipeline) on the same tiny weights.

A real ComfyUI server runs GoT's nodes (MLLM Loader -> Reasoner -> SSGM Conditioner -> GoT Guider ->
SamplerCustomAdvanced with GoT DDPM Sampler, GoT DDPM Schedule and RandomNoise) and saves the final latent;
this process runs the pipeline. Same chain text, and the same final latents within LATENT_TOLERANCE.

Tolerance: both sides are fp32 on the CPU and take the same DDPM steps from the same random numbers, but not
by the same arithmetic: ComfyUI's own UNet implementation (not diffusers'), the DDPM step written with sigmas
(alpha_cumprod recomputed as 1 / (1 + sigma^2), from a float64-built schedule) instead of diffusers' float32
alphas_cumprod, the guidance combined on denoised predictions instead of eps, and the semantic tokens from the
KV cache instead of one full forward. Each differs by float32 rounding (~1e-6 relative); the 3-scale guidance
multiplies the UNet's differences by up to |a_t| + |a_s| + |a_r| over 50 steps, and the tiny random UNet's
latents reach |x| ~ 60. Measured: max difference 1.2e-4 to 1.8e-4 (text to image, varying run to run) and 9e-5 (edit) at 64x64, 50 steps.
LATENT_TOLERANCE = 2e-3 absolute (~3e-5 of the latents' range) leaves room for other CPUs and BLAS builds and
still fails for any real deviation: another timestep, start noise, step noise or branch changes them by > 0.1
(test_another_seed_is_another_result shows the scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from got_backend.ssgm.guidance import EDIT_SCALES, T2I_SCALES, GuidanceScales
from got_backend.pipeline import GoTPipeline, ReasoningSettings, RenderSettings

SDXL_SCALING = 0.13025  # ComfyUI's LATENTs are unscaled; the pipeline's final latents are scaled
LATENT_TOLERANCE = 2e-3
SIZE, STEPS = 64, 50
PROMPT = "a red apple on a blue plate"
CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,120),(500,600)<|box_end|> (red) on a "
         "<|object_ref_start|>plate<|object_ref_end|><|box_start|>(50,500),(950,990)<|box_end|> (blue).<|im_gen_start|>")


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


def reasoner_graph(prompt: str, max_new_tokens: int, chain_start: str = "", image: str | None = None) -> dict:
    graph = {
        "1": {"class_type": "GoTMLLMLoader",
              "inputs": {"model_folder": "GoT-6B", "qwen_folder": "(converted: not needed)", "dtype": "auto"}},
        "2": {"class_type": "GoTReasoner",
              "inputs": {"mllm": ["1", 0], "prompt": prompt, "task": "edit" if image else "text-to-image",
                         "max_new_tokens": max_new_tokens, "sampling": False, "seed": 0, "temperature": 1.0,
                         "top_p": 1.0, "chain_start": chain_start}},
    }
    if image is not None:
        graph["20"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        graph["2"]["inputs"]["image"] = ["20", 0]
    return graph


def render_graph(chain: str, scales: GuidanceScales, seed: int, prefix: str, image: str | None = None) -> dict:
    graph = reasoner_graph(PROMPT, 8, chain, image)
    size = {"width": SIZE, "height": SIZE}
    graph.update({
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "GoT-6B-vae.safetensors"}},
        "4": {"class_type": "GoTUNetLoader", "inputs": {"unet_name": "GoT-6B-unet.safetensors", "weight_dtype": "default"}},
        "5": {"class_type": "GoTReferenceEncoder", "inputs": {"vae": ["3", 0], **size}},
        "6": {"class_type": "GoTSSGMConditioner",
              "inputs": {"mllm": ["1", 0], "chain": ["2", 0], "vae": ["3", 0], "reference": ["5", 0], **size}},
        "7": {"class_type": "GoTGuider", "inputs": {"model": ["4", 0], "branches": ["6", 2], "a_t": scales.text,
                                                    "a_s": scales.spatial, "a_r": scales.reference}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "9": {"class_type": "GoTDDPMSampler", "inputs": {}},
        "10": {"class_type": "GoTDDPMSchedule", "inputs": {"model": ["4", 0], "steps": STEPS}},
        "11": {"class_type": "EmptyLatentImage", "inputs": {**size, "batch_size": 1}},
        "12": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["8", 0], "guider": ["7", 0], "sampler": ["9", 0], "sigmas": ["10", 0],
                          "latent_image": ["11", 0]}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": f"got_parity/{prefix}"}},
    })
    if image is not None:
        graph["5"]["inputs"]["image"] = ["20", 0]
    return graph


def saved_latent(server, prefix: str) -> torch.Tensor:
    (path,) = sorted((server.base_dir / "output" / "got_parity").glob(f"{prefix}_*.latent"))[-1:]
    return load_file(str(path))["latent_tensor"]


def succeeded(server, entry: dict) -> dict:
    assert entry["status"]["status_str"] == "success", server.execution_error(entry) or server.log()[-3000:]
    return entry


def test_reasoner_node_writes_the_pipelines_chain(comfyui_server, pipeline: GoTPipeline) -> None:
    graph = reasoner_graph(PROMPT, 24)
    graph["3"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}  # an output node, so the graph runs
    entry = succeeded(comfyui_server, comfyui_server.run(graph))
    (text,) = entry["outputs"]["2"]["text"]
    ours = pipeline.reason(PROMPT, settings=ReasoningSettings(max_new_tokens=24))
    assert ours.new_tokens == 24 and text == ours.text


@pytest.mark.parametrize("task", ["t2i", "edit"])
def test_graph_reproduces_the_pipelines_final_latents(comfyui_server, pipeline: GoTPipeline, task: str) -> None:
    scales, seed, image, source = T2I_SCALES, 42, None, None
    if task == "edit":
        scales, seed, image = EDIT_SCALES, 7, "got_parity_source.png"
        source = Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8))
        (comfyui_server.base_dir / "input").mkdir(exist_ok=True)
        source.save(comfyui_server.base_dir / "input" / image)
    succeeded(comfyui_server, comfyui_server.run(render_graph(CHAIN, scales, seed, task, image)))
    theirs = saved_latent(comfyui_server, task) * SDXL_SCALING

    result = pipeline.render_chain(PROMPT, CHAIN, source, render=RenderSettings(SIZE, SIZE, STEPS, seed, scales),
                                   reasoning=ReasoningSettings(max_new_tokens=1))
    ours = result.renders[0].latents
    assert result.turns[0].task == ("edit" if image else "t2i") and ours.shape == theirs.shape
    difference = (ours - theirs).abs().max().item()
    print(f"{task}: max |pipeline - ComfyUI| = {difference:.2e} on latents up to {ours.abs().max().item():.1f}")
    assert ours.abs().max() > 0.5 and difference <= LATENT_TOLERANCE


def test_another_seed_is_another_result(comfyui_server, pipeline: GoTPipeline) -> None:
    """The tolerance is tight enough to tell runs apart: seeds 42 and 43 differ far beyond it."""
    succeeded(comfyui_server, comfyui_server.run(render_graph(CHAIN, T2I_SCALES, 43, "seed43")))
    other = saved_latent(comfyui_server, "seed43") * SDXL_SCALING
    ours = pipeline.render_chain(PROMPT, CHAIN, render=RenderSettings(SIZE, SIZE, STEPS, 42),
                                 reasoning=ReasoningSettings(max_new_tokens=1)).renders[0].latents
    assert (ours - other).abs().max() > 100 * LATENT_TOLERANCE
