"""Issue 13 inside a real ComfyUI (in-process, CPU, the tiny converted GoT): the reasoner's KV cache is counted in
the MLLM patcher's size that ComfyUI's model management reads, and follows the cache as it grows and is freed;
the spatial latent's box canvases are encoded in bounded batches with Cancel checked between them."""

from __future__ import annotations

import pytest
import torch

from got_backend.reasoning.tokens import BOI
from got_backend.ssgm.chain import parse_chain
from tests.steering import ForceToken


@pytest.fixture(scope="module")
def managed(inproc):
    loader = inproc.pack_module("nodes.mllm_loader")
    return loader.GoTMLLMLoader.execute("GoT-6B", loader.NO_QWEN, "auto")[0]


def test_the_kv_cache_counts_in_the_patcher_size(inproc, managed):
    import comfy.model_management as mm

    got = managed.loaded()
    got.release_caches()
    weights_only = managed.patcher.model_size()
    assert got.cache_bytes == 0 and weights_only > 0
    boi = got.tokenizer.convert_tokens_to_ids(BOI)
    # A long max_new_tokens reserves a long cache even though the turn stops at once (forced <|im_gen_start|>).
    got.reason("a red ball", max_new_tokens=8000, logits_processor=(ForceToken(1, boi),))
    grown = got.cache_bytes
    assert grown > 0
    assert managed.patcher.model_size() == weights_only + grown
    assert managed.patcher.loaded_size() >= grown
    loaded = next(m for m in mm.current_loaded_models if m.model is managed.patcher)
    assert loaded.model_memory() == weights_only + grown  # what free_memory weighs when it picks what to evict
    got.reason("a red ball", max_new_tokens=4, logits_processor=(ForceToken(1, boi),))
    assert got.cache_bytes == grown  # a shorter turn keeps the buffers: the size still counts them
    mm.unload_all_models()  # ComfyUI's Unload models: the weights go, and the cache with them
    assert got.cache_bytes == 0 and managed.patcher.model_size() == weights_only


def test_box_canvases_are_encoded_in_bounded_batches_and_cancel_between_them(inproc):
    import comfy.model_management as mm

    latents = inproc.pack_module("got_backend.ssgm.latents")
    chain = parse_chain("".join(f"<|box_start|>(0,0),({i + 1},500)<|box_end|> (red) " for i in range(40)) + BOI)
    seen: list[int] = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(len(pixels))
        return pixels[:, :, ::8, ::8].mean(dim=1, keepdim=True).expand(-1, 4, -1, -1)

    width = height = 1024
    full = latents.spatial_latent(chain, encode, width, height)
    assert seen == [4] * 10  # four 1024x1024 canvases at a time (BATCH_CANVASES, BATCH_PIXELS), never all 40
    single = latents.spatial_latent(chain, encode, width, height, batch_size=1)
    assert torch.allclose(full, single, atol=1e-6)  # the accumulated mean does not depend on the batches

    bridge = inproc.pack_module("nodes.comfy_bridge")
    seen.clear()
    on_batch = bridge.cancellable_progress()

    def cancel_after_two(done: int, total: int) -> None:
        if len(seen) == 2:
            mm.interrupt_current_processing()
        on_batch(done, total)

    with pytest.raises(mm.InterruptProcessingException):
        latents.spatial_latent(chain, encode, width, height, on_batch=cancel_after_two)
    assert seen == [4, 4]  # Cancel took effect before the third batch
    assert not mm.processing_interrupted()  # and was consumed, as ComfyUI's own check does
