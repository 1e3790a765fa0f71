"""The reasoner's behaviour on the tiny converted GoT model: stops, limits, prefixes, streaming, cancel,
determinism, multi-turn editing (docs/ALGORITHM.md §10), semantic guidance (§6) with and without KV reuse, edited
chains and bad input. Stops are reached with logits processors, the public hook `reason` offers."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from got_backend.reasoning.mllm import GoTMLLM
from got_backend.reasoning.positions import mrope_positions
from got_backend.images import ImageInputError, MissingImageError
from got_backend.reasoning.prompts import PromptError, condition_image
from got_backend.reasoning.turns import ChainNotReadyError, ConversationError, ReasoningCancelled, TokenEvent
from got_backend.reasoning.sampling import SamplingError
from got_backend.reasoning.tokens import BOI, ENDOFTEXT, IM_END, VISION_START
from tests.steering import steer

PROMPT = "a red ball left of a blue cube"


@pytest.fixture(scope="module", params=["fast", "plain"])
def mllm(request: pytest.FixtureRequest, tiny_mllm_folder: Path) -> GoTMLLM:
    return GoTMLLM.from_converted(tiny_mllm_folder, "fp32", decoding=request.param)


@pytest.fixture(scope="module")
def source() -> torch.Tensor:
    """A 72x88 source image as a [1, 3, H, W] tensor in [0, 1]."""
    generator = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 72, 88, generator=generator)


def reference_hidden_states(mllm: GoTMLLM, ids: tuple[int, ...], images: list[Image.Image]) -> torch.Tensor:
    """What the reference computes for §6: one forward of the whole sequence through transformers (its own
    position logic), final hidden states at the last 64 tokens."""
    kwargs = {"input_ids": torch.tensor([ids]), "output_hidden_states": True}
    if images:
        batch = mllm.processor.image_processor(images=images, return_tensors="pt")
        kwargs.update(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        if "mm_token_type_ids" in inspect.signature(mllm.model.forward).parameters:
            kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == mllm.tokens.image_pad).long()
    with torch.no_grad():
        return mllm.model(**kwargs).hidden_states[-1][:, -64:]


def assert_projected(mllm: GoTMLLM, guidance, h: torch.Tensor) -> None:
    """context = P h, pooled = mean(P_add h), null = P 0 (docs/ALGORITHM.md §6), checked by hand."""
    w, b = mllm.output_projector.weight, mllm.output_projector.bias
    w_add, b_add = mllm.output_projector_add.weight, mllm.output_projector_add.bias
    torch.testing.assert_close(guidance.hidden_states, h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.context, h @ w.T + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.pooled, (h @ w_add.T + b_add).mean(dim=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(guidance.null_context, b.expand(1, 64, -1))


# Prompts

def test_prompt_follows_the_chat_template_with_the_image_first(mllm: GoTMLLM, source: torch.Tensor) -> None:
    t2i = mllm.reason(PROMPT, max_new_tokens=1)
    edit = mllm.reason("make the sky green", source, max_new_tokens=1)
    t2i_prompt = mllm._decode(t2i.sequence.ids[:t2i.prompt_length])
    edit_prompt = mllm._decode(edit.sequence.ids[:edit.prompt_length])
    assert t2i_prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "Follow the caption to generate an image through a chain of thought process: "
                          f"{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    pads = "<|image_pad|>" * 256
    assert edit_prompt.endswith(f"user\n<|vision_start|>{pads}<|vision_end|>Follow the instruction to edit the "
                                "given image through a chain of thought process: make the sky green<|im_end|>\n"
                                "<|im_start|>assistant\n")
    view = edit.sequence.images[0].image
    expected = Image.fromarray((source[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), "RGB")
    assert view.size == (448, 448) and view.tobytes() == expected.resize((448, 448), Image.BICUBIC).tobytes()


def test_a_pil_image_and_its_tensor_give_the_same_prompt(mllm: GoTMLLM, source: torch.Tensor) -> None:
    pil = Image.fromarray((source[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), "RGB")
    a = mllm.reason(PROMPT, source, max_new_tokens=2)
    b = mllm.reason(PROMPT, pil, max_new_tokens=2)
    assert torch.equal(a.sequence.images[0].pixel_values, b.sequence.images[0].pixel_values)
    assert a.token_ids == b.token_ids


# Stops and limits

@pytest.mark.parametrize("name, stop", [(BOI, "boi"), (VISION_START, "vision_start"), (ENDOFTEXT, "endoftext")])
def test_generation_stops_on_each_stop_token(mllm: GoTMLLM, name: str, stop: str) -> None:
    token = mllm.tokenizer.convert_tokens_to_ids(name)
    result = mllm.reason(PROMPT, max_new_tokens=50, logits_processor=steer(6, token))
    assert result.stop == stop and result.new_tokens == 6 and result.token_ids[-1] == token
    assert result.text.endswith(name) and result.ready_for_image == (stop == "boi")


def test_im_end_does_not_stop_reasoning(mllm: GoTMLLM) -> None:
    result = mllm.reason(PROMPT, max_new_tokens=12, logits_processor=steer(3, mllm.tokens.im_end))
    assert result.stop == "max_tokens" and result.new_tokens == 12 and IM_END in result.text


def test_token_limit_gives_a_clear_unfinished_result(mllm: GoTMLLM) -> None:
    result = mllm.reason(PROMPT, max_new_tokens=7, logits_processor=steer())
    assert result.stop == "max_tokens" and result.new_tokens == 7 and not result.ready_for_image
    with pytest.raises(ChainNotReadyError, match="the model's chain does not .*: it stopped at max_new_tokens"):
        mllm.semantic_guidance(result)


def test_assistant_prefix_is_continued(mllm: GoTMLLM) -> None:
    prefix = "A <|object_ref_start|>red ball<|object_ref_end|>"
    result = mllm.reason(PROMPT, assistant_prefix=prefix, max_new_tokens=5, logits_processor=steer())
    assert result.text.startswith(prefix) and result.new_tokens == 5
    assert result.token_ids[:-5] == tuple(mllm.tokenizer(prefix, add_special_tokens=False)["input_ids"])
    done = mllm.reason(PROMPT, assistant_prefix=prefix + BOI, max_new_tokens=5)
    assert done.stop == "boi" and done.new_tokens == 0 and done.stats is None


def test_on_token_streams_every_token(mllm: GoTMLLM) -> None:
    events: list[TokenEvent] = []
    result = mllm.reason(PROMPT, max_new_tokens=9, logits_processor=steer(9, mllm.tokens.boi), on_token=events.append)
    assert [e.index for e in events] == list(range(1, 10)) and all(e.max_new_tokens == 9 for e in events)
    assert tuple(e.token_id for e in events) == result.token_ids
    assert "".join(e.text for e in events) == result.text


# Determinism and sampling

def test_greedy_is_deterministic(mllm: GoTMLLM, source: torch.Tensor) -> None:
    first = mllm.reason(PROMPT, source, max_new_tokens=16)
    mllm.release_caches()
    second = mllm.reason(PROMPT, source, max_new_tokens=16)
    assert first.token_ids == second.token_ids and first.stats.seed is None


def test_sampling_is_reproducible_from_its_seed(mllm: GoTMLLM) -> None:
    settings = dict(max_new_tokens=16, do_sample=True, temperature=2.0)
    a = mllm.reason(PROMPT, seed=11, **settings)
    b = mllm.reason(PROMPT, seed=11, **settings)
    c = mllm.reason(PROMPT, seed=12, **settings)
    free = mllm.reason(PROMPT, **settings)
    again = mllm.reason(PROMPT, seed=free.stats.seed, **settings)
    assert a.token_ids == b.token_ids != c.token_ids and a.stats.seed == 11
    assert again.token_ids == free.token_ids


# Cancel

def test_cancel_between_tokens_raises_and_frees_the_cache(mllm: GoTMLLM) -> None:
    events: list[TokenEvent] = []
    with pytest.raises(ReasoningCancelled):
        mllm.reason(PROMPT, max_new_tokens=50, on_token=events.append, should_cancel=lambda: len(events) >= 4)
    assert len(events) == 4 and mllm.cached_tokens == 0
    assert mllm.reason(PROMPT, max_new_tokens=3).new_tokens == 3


def test_an_exception_from_the_cancel_check_also_frees_the_cache(mllm: GoTMLLM) -> None:
    class Interrupted(Exception):
        pass

    def interrupt() -> bool:
        if mllm.cached_tokens > 0:
            raise Interrupted
        return False

    with pytest.raises(Interrupted):
        mllm.reason(PROMPT, max_new_tokens=50, should_cancel=interrupt)
    assert mllm.cached_tokens == 0


# Semantic guidance

def test_semantic_guidance_reuses_the_cache_and_equals_a_full_forward(mllm: GoTMLLM, source: torch.Tensor) -> None:
    chain = mllm.reason("make the ball blue", source, max_new_tokens=30, logits_processor=steer(12, mllm.tokens.boi))
    guidance = mllm.semantic_guidance(chain)
    assert guidance.reused_tokens == len(chain.sequence.ids) - 1  # only <|im_gen_start|> + 64 queries ran
    ids = chain.sequence.ids + mllm.tokens.image_queries
    h = reference_hidden_states(mllm, ids, [chain.sequence.images[0].image])
    assert_projected(mllm, guidance, h)
    assert guidance.context.shape == (1, 64, mllm.context_size) and guidance.pooled.shape == (1, mllm.pooled_size)


def test_semantic_guidance_asked_twice_runs_the_queries_again(mllm: GoTMLLM) -> None:
    chain = mllm.reason(PROMPT, max_new_tokens=30, logits_processor=steer(5, mllm.tokens.boi))
    first, second = mllm.semantic_guidance(chain), mllm.semantic_guidance(chain)
    assert first.reused_tokens == len(chain.sequence.ids) - 1 and second.reused_tokens == len(chain.sequence.ids)
    assert second.context.shape == (1, 64, mllm.context_size)
    torch.testing.assert_close(first.context, second.context, rtol=1e-5, atol=1e-5)


def test_semantic_guidance_after_the_cache_moved_on_recomputes(mllm: GoTMLLM) -> None:
    chain = mllm.reason(PROMPT, max_new_tokens=30, logits_processor=steer(5, mllm.tokens.boi))
    mllm.reason("something else entirely", max_new_tokens=3)
    guidance = mllm.semantic_guidance(chain)
    assert guidance.reused_tokens < chain.prompt_length
    assert_projected(mllm, guidance, reference_hidden_states(mllm, chain.sequence.ids + mllm.tokens.image_queries, []))


def test_edited_chain_is_retokenized_and_run_in_full(mllm: GoTMLLM) -> None:
    chain = mllm.reason(PROMPT, max_new_tokens=30, logits_processor=steer(8, mllm.tokens.boi))
    edited_text = ("A <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|> (red)"
                   + BOI)
    guidance = mllm.semantic_guidance(chain, edited_text)
    edited_ids = tuple(mllm.tokenizer(edited_text, add_special_tokens=False)["input_ids"])
    ids = chain.sequence.ids[:chain.turn_start] + edited_ids + mllm.tokens.image_queries
    assert guidance.reused_tokens == 0
    assert_projected(mllm, guidance, reference_hidden_states(mllm, ids, []))
    unedited = mllm.semantic_guidance(chain, chain.text)
    assert unedited.reused_tokens > 0 and not torch.allclose(unedited.context, guidance.context)


def test_user_written_chain_for_an_edit(mllm: GoTMLLM, source: torch.Tensor) -> None:
    text = "Step 1: the source image. Step 2: the <|object_ref_start|>ball<|object_ref_end|> turns blue." + BOI
    chain = mllm.user_chain("make the ball blue", text, source)
    assert chain.edited and chain.ready_for_image and chain.text == text and chain.task == "edit"
    guidance = mllm.semantic_guidance(chain)
    h = reference_hidden_states(mllm, chain.sequence.ids + mllm.tokens.image_queries, [chain.sequence.images[0].image])
    assert guidance.reused_tokens == 0
    assert_projected(mllm, guidance, h)


def test_semantic_guidance_refuses_chains_without_im_gen_start(mllm: GoTMLLM) -> None:
    chain = mllm.reason(PROMPT, max_new_tokens=20, logits_processor=steer(4, mllm.tokens.boi))
    with pytest.raises(ChainNotReadyError, match="the edited chain does not \\(it ends with 'A red ball.'\\): fix its "
                                                 "text in the GoT Chain Parser or the GoT Plan Editor") as raised:
        mllm.semantic_guidance(chain, "A red ball.")
    assert "max_new_tokens" not in str(raised.value)  # the model's advice is wrong for an edited chain
    with pytest.raises(ChainNotReadyError, match="the model's chain does not .*: it ended the conversation"):
        mllm.semantic_guidance(mllm.reason(PROMPT, max_new_tokens=20, logits_processor=steer(4, mllm.tokens.endoftext)))
    with pytest.raises(PromptError, match="chain text is empty"):
        mllm.semantic_guidance(chain, "  \n")
    with pytest.raises(PromptError, match="image placeholder"):
        mllm.semantic_guidance(chain, "<|image_pad|>" + BOI)


# Multi-turn editing (docs/ALGORITHM.md §10)

def test_multi_turn_edit_follows_the_reference_loop(mllm: GoTMLLM, source: torch.Tensor) -> None:
    tokens = mllm.tokens
    turn1 = mllm.reason("add a hat, then make it red", source, max_new_tokens=40,
                        logits_processor=steer(6, tokens.boi))
    first = mllm.semantic_guidance(turn1)
    turn2 = mllm.continue_reasoning(turn1, max_new_tokens=40, logits_processor=steer(5, tokens.vision_start))
    assert turn2.sequence.ids[turn1.turn_start + 6:turn2.turn_start] == tokens.image_queries
    assert turn2.stop == "vision_start" and turn2.stats.reused_tokens == turn2.turn_start - 1
    rendered = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    turn3 = mllm.continue_reasoning(turn2, rendered, max_new_tokens=40, logits_processor=steer(7, tokens.boi))
    pads = turn3.sequence.ids[len(turn2.sequence.ids):turn3.turn_start]
    assert pads == (tokens.image_pad,) * 256 and len(turn3.sequence.images) == 2
    assert turn3.text == mllm._decode(turn3.token_ids) and "<|image_pad|>" not in turn3.text
    assert turn3.stats.reused_tokens == len(turn2.sequence.ids) - 1
    second = mllm.semantic_guidance(turn3)
    ids = turn3.sequence.ids + tokens.image_queries
    h = reference_hidden_states(mllm, ids, [image.image for image in turn3.sequence.images])
    assert_projected(mllm, second, h)
    assert not torch.allclose(first.context, second.context)
    turn4 = mllm.continue_reasoning(turn3, max_new_tokens=40, logits_processor=steer(3, tokens.endoftext))
    assert turn4.finished and turn4.prompt_length == turn1.prompt_length
    with pytest.raises(ConversationError, match="nothing to continue"):
        mllm.continue_reasoning(turn4)


def test_continuing_with_the_cache_equals_starting_over(mllm: GoTMLLM, source: torch.Tensor) -> None:
    turn1 = mllm.reason("add a hat", source, max_new_tokens=40, logits_processor=steer(4, mllm.tokens.vision_start))
    rendered = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    cached = mllm.continue_reasoning(turn1, rendered, max_new_tokens=12, logits_processor=steer())
    mllm.release_caches()
    fresh = mllm.continue_reasoning(turn1, rendered, max_new_tokens=12, logits_processor=steer())
    assert cached.stats.reused_tokens > 0 and fresh.stats.reused_tokens == 0
    assert cached.token_ids == fresh.token_ids
    positions, _ = mrope_positions(cached.sequence.ids, [i.grid_thw for i in cached.sequence.images],
                                   mllm.tokens.image_pad, 2)
    assert positions[0, -1] < len(cached.sequence.ids) - 400  # two images: positions far behind token count


def test_continuation_errors(mllm: GoTMLLM, source: torch.Tensor) -> None:
    asks = mllm.reason(PROMPT, max_new_tokens=20, logits_processor=steer(3, mllm.tokens.vision_start))
    with pytest.raises(MissingImageError, match="asks to see the last rendered image"):
        mllm.continue_reasoning(asks)
    ready = mllm.reason(PROMPT, max_new_tokens=20, logits_processor=steer(3, mllm.tokens.boi))
    with pytest.raises(ConversationError, match="does not ask for an image"):
        mllm.continue_reasoning(ready, source)
    limited = mllm.reason(PROMPT, max_new_tokens=4, logits_processor=steer())
    more = mllm.continue_reasoning(limited, max_new_tokens=4, logits_processor=steer())
    assert more.turn_start == len(limited.sequence.ids) and more.new_tokens == 4


def test_continuation_with_an_assistant_prefix(mllm: GoTMLLM) -> None:
    ready = mllm.reason(PROMPT, max_new_tokens=20, logits_processor=steer(3, mllm.tokens.boi))
    prefix = "<|im_gen_end|>Step 2: a hat"
    turn = mllm.continue_reasoning(ready, assistant_prefix=prefix, max_new_tokens=3, logits_processor=steer())
    assert turn.text.startswith(prefix) and turn.new_tokens == 3
    assert turn.sequence.ids[turn.turn_start - 64:turn.turn_start] == mllm.tokens.image_queries
    done = mllm.continue_reasoning(ready, assistant_prefix=prefix + BOI)
    assert done.ready_for_image and done.new_tokens == 0
    torch.testing.assert_close(mllm.semantic_guidance(done).context,
                               mllm.semantic_guidance(mllm.edit_chain(done, done.text + " ")).context,
                               rtol=1e-5, atol=1e-5)


# Bad input

@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_refused(mllm: GoTMLLM, prompt: str) -> None:
    with pytest.raises(PromptError, match="prompt is empty"):
        mllm.reason(prompt)


def test_edit_without_an_image_is_refused(mllm: GoTMLLM) -> None:
    with pytest.raises(MissingImageError, match="needs the image to edit"):
        mllm.reason("make it blue", task="edit")
    with pytest.raises(MissingImageError):
        mllm.user_chain("make it blue", "x" + BOI, task="edit")


@pytest.mark.parametrize("image, message", [
    (torch.rand(2, 3, 32, 32), "batch of 2 images"),
    (torch.rand(1, 4, 32, 32), "RGBA image; drop the alpha"),
    (torch.rand(1, 1, 32, 32), "grayscale image"),
    (torch.rand(32, 32), "expected one image shaped \\[1, 3, H, W\\]"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "expected float pixels"),
    (torch.rand(1, 3, 8, 8) * 2 - 1, "must lie in \\[0, 1\\]"),
    (torch.rand(1, 3, 8, 8) * 255, "must lie in \\[0, 1\\]"),
    (Image.new("RGBA", (32, 32)), "RGBA image"),
    (Image.new("L", (32, 32)), "L image"),
    ("picture.png", "not str"),
])
def test_bad_images_are_refused(mllm: GoTMLLM, image, message: str) -> None:
    with pytest.raises(ImageInputError, match=message):
        mllm.reason("make it blue", image)


def test_bad_settings_are_refused(mllm: GoTMLLM) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        mllm.reason(PROMPT, max_new_tokens=0)
    with pytest.raises(SamplingError, match="temperature"):
        mllm.reason(PROMPT, do_sample=True, temperature=0.0)
    with pytest.raises(SamplingError, match="top_p"):
        mllm.reason(PROMPT, do_sample=True, top_p=1.5)
    with pytest.raises(PromptError, match="unknown task"):
        mllm.reason(PROMPT, task="inpaint")
    assert condition_image(torch.rand(3, 20, 30)).size == (448, 448)
