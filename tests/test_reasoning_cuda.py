"""The CUDA-graph decode step on a GPU (these tests do not run without one; the step's logic is covered on
the CPU by test_reasoning_decoders.py, which runs the same step eagerly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from got_backend.reasoning.mllm import GoTMLLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPT = "a red ball left of a blue cube"


@pytest.fixture(scope="module")
def plain(tiny_models_dir: Path) -> GoTMLLM:
    return GoTMLLM.from_converted(tiny_models_dir / "LLM" / "GoT-6B", "fp32", "cuda", decoding="plain")


@pytest.fixture(scope="module")
def fast(plain: GoTMLLM) -> GoTMLLM:
    return GoTMLLM(plain.model, plain.processor, plain.output_projector, plain.output_projector_add, decoding="fast")


def test_graph_replay_gives_the_plain_tokens(plain: GoTMLLM, fast: GoTMLLM) -> None:
    image = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    for source in (None, image):
        slow = plain.reason(PROMPT, source, max_new_tokens=40, logits_processor=[NoRepeatNGramLogitsProcessor(1)])
        quick = fast.reason(PROMPT, source, max_new_tokens=40, logits_processor=[NoRepeatNGramLogitsProcessor(1)])
        assert quick.stats.decoder == "cuda_graph", fast.decoder_note
        assert quick.token_ids == slow.token_ids


def test_capture_happens_once_and_survives_the_weights_moving(fast: GoTMLLM) -> None:
    fast.release_caches()
    first = fast.reason(PROMPT, max_new_tokens=8)
    second = fast.reason("another prompt", max_new_tokens=8)
    assert first.stats.capture_seconds > 0 and second.stats.capture_seconds == 0
    fast.model.to("cpu").to("cuda")  # as ComfyUI's offload and reload: new storage, graph must not read the old
    moved = fast.reason(PROMPT, max_new_tokens=8)
    assert moved.stats.decoder == "cuda_graph" and moved.token_ids == first.token_ids


def test_release_returns_the_cache_memory(fast: GoTMLLM) -> None:
    fast.reason(PROMPT, max_new_tokens=600)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    fast.release_caches()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() < held and fast.cached_tokens == 0
