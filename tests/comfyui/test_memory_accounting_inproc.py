"""Issue 20 inside a real ComfyUI (in-process, CPU, the tiny models): what ComfyUI's model management believes each
model weighs (its patcher's model_size and loaded_size, which decide what it evicts) is within 5% of the real
bytes of its tensors, each tensor once. Qwen2.5-VL-3B ties lm_head to embed_tokens: counted by name, as
ComfyUI's module_size does, the tied weight would count twice (bench/full_size_path.py gives the full-size
figures through a real server)."""

from __future__ import annotations

import torch

from tests.comfyui.test_thinker_nodes import loader  # noqa: F401 (the fixture: a plain Qwen2.5-VL folder listed)

TOLERANCE = 0.05


def real_bytes(module: torch.nn.Module) -> int:
    """Each parameter and buffer once (parameters() skips a tied parameter's second name)."""
    return sum(p.nbytes for p in module.parameters()) + sum(b.nbytes for b in module.buffers())


def check(patcher, extra: int = 0) -> tuple[int, int]:
    import comfy.model_management as mm

    mm.load_models_gpu([patcher], force_full_load=True)
    real = real_bytes(patcher.model) + extra
    for believed in (patcher.model_size(), patcher.loaded_size()):
        assert abs(believed - real) <= TOLERANCE * real, (type(patcher.model).__name__, believed, real)
    return patcher.model_size(), real


def test_a_tied_chat_model_counts_its_embedding_once(loader):
    vlm = loader.GoTVLMLoader.execute("Qwen2.5-VL-3B-Instruct", "auto")[0]
    model = vlm.chat.model
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as Qwen2.5-VL-3B-Instruct is
    believed, real = check(vlm.patcher)  # counted twice, the embedding (most of the tiny model) would be 2x off
    assert real_bytes(model.lm_head) > 0.5 * real


def test_the_got_mllm_with_its_kv_cache(loader):
    managed = loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "auto")[0]
    got = managed.loaded()
    got.reason("a red ball", max_new_tokens=4)
    assert got.cache_bytes > 0
    check(managed.patcher, extra=got.cache_bytes)


def test_the_unet_and_vae(inproc):
    import folder_paths
    import nodes

    unet = inproc.pack_module("nodes.unet_loader").GoTUNetLoader.execute("GoT-6B-unet.safetensors", "default")[0]
    check(unet)
    vae_name = next(n for n in folder_paths.get_filename_list("vae") if n.startswith("GoT-6B"))
    check(nodes.VAELoader().load_vae(vae_name)[0].patcher)
