"""Multi-turn reasoning (docs/ALGORITHM.md §10) against GoT's released loop, as it ships: the PEFT-wrapped MLLM
unmerged (its vision tower's LoRA included), Hugging Face's `generate` over the whole conversation at every call,
the processor re-run over every input image. Token by token, turn by turn, and the semantic conditioning of each
rendered turn within 1e-4, for text to image (the fed-back render is the first image the conversation sees) and
for an edit (it is the second), with both decoders and both ways of loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from got_backend.pipeline import GoTPipeline, RenderSettings
from got_backend.reasoning.mllm import GoTMLLM
from tests.got_release_reference import ReleasedLoop, raw_state
from tests.steering import steer
from tests.test_vision_lora import vision_lora_modules

PROMPT = "a red apple on a blue plate"
SMALL = RenderSettings(width=64, height=64, steps=2)


@pytest.fixture(scope="module")
def released(tiny_release) -> ReleasedLoop:
    return ReleasedLoop(tiny_release.got_release, tiny_release.qwen_base)


@pytest.fixture(scope="module")
def renderer(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


def source_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(11).integers(0, 256, (72, 96, 3), dtype=np.uint8))


@pytest.mark.parametrize("task, loading, decoding", [("t2i", "converted", "fast"), ("t2i", "converted", "plain"),
                                                     ("t2i", "release", "fast"), ("edit", "converted", "fast")])
def test_multi_turn_matches_the_released_loop(task: str, loading: str, decoding: str, tiny_release,
                                              tiny_mllm_folder: Path, renderer: GoTPipeline,
                                              released: ReleasedLoop) -> None:
    assert vision_lora_modules(raw_state(tiny_release.got_release))  # the vision tower's LoRA is in play
    mllm = (GoTMLLM.from_converted(tiny_mllm_folder, "fp32", decoding=decoding) if loading == "converted" else
            GoTMLLM.from_release(tiny_release.got_release, tiny_release.qwen_base, "fp32", decoding=decoding))
    tokens = mllm.tokens
    source = source_image() if task == "edit" else None

    # Ours: render, the model asks to look (<|vision_start|>), the render is fed back, the model writes on.
    first = mllm.reason(PROMPT if task == "t2i" else "put a hat on it", source, max_new_tokens=40,
                        logits_processor=steer(6, tokens.boi))
    render = renderer.render_turn(first, source, SMALL).image
    asks = mllm.continue_reasoning(first, max_new_tokens=40, logits_processor=steer(4, tokens.vision_start))
    after = mllm.continue_reasoning(asks, render, max_new_tokens=40, logits_processor=steer(9, tokens.boi))
    ours = [mllm.semantic_guidance(turn) for turn in (first, after)]

    # The released loop on the same prompt, fed the same render.
    loop = released.start(first.sequence.ids[:first.turn_start], source)
    assert loop.generate(steer(6, tokens.boi), 40) == first.token_ids
    reference = [loop.semantic()]
    loop.add_image_queries()
    assert loop.generate(steer(4, tokens.vision_start), 40) == asks.token_ids
    loop.show(render)
    assert tuple(loop.ids) == after.sequence.ids[:after.turn_start]
    assert loop.generate(steer(9, tokens.boi), 40) == after.token_ids  # the tokens after the fed-back image
    reference.append(loop.semantic())
    assert len(after.sequence.images) == (1 if task == "t2i" else 2)
    for guidance, (context, pooled) in zip(ours, reference):
        torch.testing.assert_close(guidance.context, context, rtol=0, atol=1e-4)
        torch.testing.assert_close(guidance.pooled, pooled, rtol=0, atol=1e-4)
