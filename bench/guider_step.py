"""One sampling step of GoT's UNet inside ComfyUI: the GoT Guider against core CFGGuider, with the same MODEL.

The 12-channel SDXL UNet (full size, random weights, fp16; nothing is downloaded) becomes a ComfyUI MODEL through
the GoT UNet Loader's own code (nodes/unet_loader.build_got_unet), the conditioning through the SSGM Conditioner's
(nodes/conditioner.branch_conditionings) at 1024x1024. One step is one sampler evaluation (euler over two sigmas):
the GoT Guider runs the branches of nonzero weight as one batched UNet call (C, T, I at the text-to-image
defaults), CFGGuider runs positive (branch C) and negative (branch U). Each is timed after a warm-up (which moves
the model to the GPU), median of --repeats.

    COMFYUI_DIR=/path/to/ComfyUI python bench/guider_step.py [--json out.json]   # CUDA GPU, ComfyUI's python
    COMFYUI_DIR=/path/to/ComfyUI python bench/guider_step.py --tiny              # CPU smoke run, tiny UNet
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PACK = "comfyui_got"


def comfyui_harness():
    """tests/comfyui/conftest.py, whose import_comfyui and load_pack set ComfyUI and the pack up in-process."""
    spec = importlib.util.spec_from_file_location("got_comfyui_harness", REPO / "tests" / "comfyui" / "conftest.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test UNet on the CPU (smoke run of the script)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 1024; 64 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    root = os.environ.get("COMFYUI_DIR")
    if not root:
        parser.error("COMFYUI_DIR is not set: name a ComfyUI checkout (and run this with ComfyUI's python)")
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run on a GPU machine, or pass --tiny for a CPU smoke run")
    size = args.size or (64 if args.tiny else 1024)

    harness = comfyui_harness()
    harness.import_comfyui(Path(root), cpu=args.tiny)
    harness.load_pack()
    import comfy.samplers
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    pack = {name: importlib.import_module(f"{PACK}.{name}") for name in (
        "nodes.unet_loader", "nodes.unet_keys", "nodes.conditioner", "nodes.guider", "got_backend.ssgm.guidance",
        "got_backend.testing.fixtures")}
    sys.path.insert(0, str(REPO / "bench"))
    from end_to_end import SDXL_UNET_12CH
    from reasoner import sync

    config = pack["got_backend.testing.fixtures"].unet_config() if args.tiny else SDXL_UNET_12CH
    dtype = torch.float32 if args.tiny else torch.float16
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**config).to(dtype)
    state = pack["nodes.unet_keys"].comfy_unet_state(unet.state_dict())
    model = pack["nodes.unet_loader"].build_got_unet(state, {"dtype": dtype}, "the benchmark UNet")
    del unet, state

    scales = pack["got_backend.ssgm.guidance"].T2I_SCALES
    width = config["cross_attention_dim"]
    pooled_width = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    generator = torch.Generator().manual_seed(0)
    latent = (1, 4, size // 8, size // 8)
    context, null_context = (torch.randn(1, 64, width, generator=generator) for _ in range(2))
    pooled = torch.randn(1, pooled_width, generator=generator)
    reference, spatial, noise = (torch.randn(latent, generator=generator) for _ in range(3))
    branches = pack["nodes.conditioner"].branch_conditionings(context, null_context, pooled, reference, spatial,
                                                             size, size)
    got = pack["nodes.guider"].GoTGuider(model)
    got.set_guidance(branches, *scales)
    cfg = comfy.samplers.CFGGuider(model)
    cfg.set_conds(branches["C"], branches["U"])
    cfg.set_cfg(scales.text)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 1).cpu()
    sampler = comfy.samplers.sampler_object("euler")

    batches: list[int] = []
    hook = model.model.diffusion_model.register_forward_pre_hook(lambda module, inputs: batches.append(
        inputs[0].shape[0]))

    def step(guider) -> float:
        sync(device)
        started = time.perf_counter()
        guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, disable_pbar=True, seed=0)
        sync(device)
        return time.perf_counter() - started

    seconds, unet_batches = {}, {}
    for name, guider in (("GoT Guider", got), ("CFGGuider", cfg)):
        step(guider)  # warm-up: the model moves to the GPU, kernels are chosen
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batches.clear()
        seconds[name] = statistics.median(step(guider) for _ in range(args.repeats))
        unet_batches[name] = batches[:len(batches) // args.repeats]
    hook.remove()
    ratio = seconds["GoT Guider"] / seconds["CFGGuider"]
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"one sampling step at {size}x{size}, UNet {str(dtype)[6:]}, on {gpu}; torch {torch.__version__}")
    for name in seconds:
        print(f"{name:<12}{seconds[name]:>9.3f}s  UNet calls (batch sizes): {unet_batches[name]}")
    print(f"GoT Guider / CFGGuider: {ratio:.2f}x (GoT runs {len(got.branch_names)} branches: "
          f"{', '.join(got.branch_names)}; CFG runs 2)")
    if args.json:
        args.json.write_text(json.dumps({
            "device": gpu, "size": size, "unet_dtype": str(dtype)[6:], "got_guider_s": seconds["GoT Guider"],
            "cfg_guider_s": seconds["CFGGuider"], "ratio": ratio, "got_branches": list(got.branch_names),
            "unet_batches": unet_batches}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
