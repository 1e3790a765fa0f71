"""The decoders behind the reasoner: M-RoPE positions, the plain path against transformers' `generate`, the
fast (static KV) path against the plain one, prefix reuse and buffer growth. CPU, tiny converted GoT model."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from got_backend.reasoning.conversation import TokenSequence
from got_backend.reasoning.conversation import forward_sequence
from got_backend.reasoning.decoding import PREFILL_CHUNK, PlainDecoder, prefill_chunks
from got_backend.reasoning.fast_decode import MIN_CAPACITY, StaticDecoder, UnsupportedModelError
from got_backend.reasoning.mllm import GoTMLLM
from got_backend.reasoning.turns import ReasoningCancelled, generate_turn
from got_backend.reasoning.positions import PositionError, mrope_positions
from got_backend.reasoning.prompts import chat_messages, condition_image, instruction
from tests.steering import steer

PROMPT = "a red ball left of a blue cube"


@pytest.fixture(scope="module")
def plain(tiny_mllm_folder: Path) -> GoTMLLM:
    return GoTMLLM.from_converted(tiny_mllm_folder, "fp32", decoding="plain")


@pytest.fixture(scope="module")
def fast(tiny_mllm_folder: Path, plain: GoTMLLM) -> GoTMLLM:
    """The same model object, decoded by the fast path."""
    return GoTMLLM(plain.model, plain.processor, plain.output_projector, plain.output_projector_add, decoding="fast")


@pytest.fixture(scope="module")
def source_image() -> Image.Image:
    gradient = torch.linspace(0, 1, 96)
    pixels = torch.stack([gradient[None, :].expand(80, 96), gradient[:80, None].expand(80, 96),
                          torch.full((80, 96), 0.3)], dim=-1)
    return Image.fromarray((pixels * 255).round().to(torch.uint8).numpy(), "RGB")


def hf_rope_index(model, ids: torch.Tensor, grids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' get_rope_index, called the way the installed version wants it."""
    get_rope_index = getattr(model.model, "get_rope_index", None) or model.get_rope_index  # 4.49: on the outer model
    kwargs = {"image_grid_thw": grids}
    if "mm_token_type_ids" in inspect.signature(get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = (ids == pad_id).long()
    return get_rope_index(ids, **kwargs)


def test_mrope_positions_match_transformers(plain: GoTMLLM, source_image: Image.Image) -> None:
    sequence = plain.reason(PROMPT, source_image, max_new_tokens=3, logits_processor=steer()).sequence
    grids = [image.grid_thw for image in sequence.images]
    mine, delta = mrope_positions(sequence.ids, grids, plain.tokens.image_pad, 2)
    theirs, their_delta = hf_rope_index(plain.model, torch.tensor([sequence.ids]), torch.tensor(grids),
                                        plain.tokens.image_pad)
    assert grids == [(1, 32, 32)] and sequence.ids.count(plain.tokens.image_pad) == 256
    assert torch.equal(mine, theirs[:, 0]) and delta == int(their_delta) == 16 - 256


def test_mrope_positions_reject_pads_without_images() -> None:
    with pytest.raises(PositionError, match="only 0 image"):
        mrope_positions([1, 2, 9, 9], [], image_pad_id=9, merge_size=2)
    with pytest.raises(PositionError, match="needs 4 consecutive"):
        mrope_positions([1, 9, 9, 3], [(1, 4, 4)], image_pad_id=9, merge_size=2)


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_plain_decoder_matches_transformers_generate(plain: GoTMLLM, source_image: Image.Image, edit: bool,
                                                     penalty: float) -> None:
    image = source_image if edit else None
    ours = plain.reason(PROMPT, image, max_new_tokens=24, repetition_penalty=penalty, logits_processor=steer())
    chat = plain.processor.apply_chat_template(chat_messages(instruction(PROMPT, "edit" if edit else "t2i"), edit),
                                               tokenize=False, add_generation_prompt=True)
    inputs = plain.processor(text=[chat], images=[condition_image(image)] if edit else None, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == list(ours.sequence.ids[:ours.turn_start])
    with torch.no_grad():
        out = plain.model.generate(**inputs, max_new_tokens=24, do_sample=False, no_repeat_ngram_size=1,
                                   repetition_penalty=penalty, eos_token_id=list(plain.tokens.stop_ids),
                                   pad_token_id=plain.tokens.endoftext)
    theirs = tuple(out[0, ours.turn_start:].tolist())
    assert ours.token_ids == theirs and len(set(theirs)) == 24


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
def test_fast_path_gives_the_plain_path_greedy_tokens(plain: GoTMLLM, fast: GoTMLLM, source_image: Image.Image,
                                                      edit: bool) -> None:
    image = source_image if edit else None
    slow = plain.reason(PROMPT, image, max_new_tokens=40, logits_processor=steer())
    quick = fast.reason(PROMPT, image, max_new_tokens=40, logits_processor=steer())
    assert quick.stats.decoder == "static" and slow.stats.decoder == "plain"
    assert quick.token_ids == slow.token_ids and quick.text == slow.text


def test_fast_path_gives_the_plain_path_sampled_tokens(plain: GoTMLLM, fast: GoTMLLM,
                                                       source_image: Image.Image) -> None:
    settings = dict(max_new_tokens=40, do_sample=True, temperature=1.5, top_p=0.95, top_k=500, seed=7)
    slow = plain.reason(PROMPT, source_image, **settings)
    quick = fast.reason(PROMPT, source_image, **settings)
    assert quick.token_ids == slow.token_ids and len(set(slow.token_ids)) > 10


def test_static_step_logits_equal_transformers_forward(plain: GoTMLLM, source_image: Image.Image) -> None:
    """Teacher-forced through the same tokens, every step's logits agree (fp32) after an image prompt,
    whose M-RoPE delta is negative, while the buffers start too small and grow."""
    chain = plain.reason(PROMPT, source_image, max_new_tokens=20, logits_processor=steer())
    prompt = TokenSequence(chain.sequence.ids[:chain.turn_start], chain.sequence.images)
    assert len(prompt.ids) > MIN_CAPACITY
    with torch.no_grad():
        static, dynamic = StaticDecoder(plain.model, capacity=16), PlainDecoder(plain.model)
        assert static.capacity == MIN_CAPACITY
        a, b = static.feed(prompt).logits, dynamic.feed(prompt).logits
        assert static.capacity == 512 and static.delta == dynamic.delta < 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for token in chain.token_ids:
            torch.testing.assert_close(static.step(token), dynamic.step(token), rtol=1e-5, atol=1e-5)


def test_feed_reuses_the_cached_prefix_only_for_the_same_image(plain: GoTMLLM, source_image: Image.Image) -> None:
    chain = plain.reason(PROMPT, source_image, max_new_tokens=8, logits_processor=steer())
    same_pixels = plain.reason(PROMPT, source_image, max_new_tokens=1).sequence.images[0]  # equal, not identical
    with torch.no_grad():
        decoder, fresh = StaticDecoder(plain.model), PlainDecoder(plain.model)
        decoder.feed(chain.sequence)
        more = chain.sequence + (plain.tokens.boi, *plain.tokens.image_queries)
        extended = decoder.feed(more, hidden=True)
        assert extended.reused == len(chain.sequence.ids) and extended.hidden.shape[1] == 65
        torch.testing.assert_close(extended.logits, fresh.feed(more).logits, rtol=1e-5, atol=1e-5)
        other = TokenSequence(chain.sequence.ids, (same_pixels,))
        first_pad = chain.sequence.ids.index(plain.tokens.image_pad)
        assert decoder.feed(other).reused == first_pad
        decoder.release()
        assert decoder.feed(chain.sequence).reused == 0


def test_unsupported_model_falls_back_to_the_plain_decoder(tiny_mllm_folder: Path) -> None:
    mllm = GoTMLLM.from_converted(tiny_mllm_folder, "fp32")
    mllm.model.config.get_text_config().use_sliding_window = True
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        StaticDecoder(mllm.model)
    result = mllm.reason(PROMPT, max_new_tokens=3)
    assert result.stats.decoder == "plain" and "sliding-window" in mllm.decoder_note


def test_prefill_chunks_cover_the_tokens_and_never_split_an_image() -> None:
    assert prefill_chunks(0, 10, [], 4) == [(0, 4), (4, 8), (8, 10)]
    assert prefill_chunks(3, 10, [], 4) == [(3, 7), (7, 10)]
    # a run that a boundary would cut goes to the next chunk; one longer than a chunk is a chunk of its own
    assert prefill_chunks(0, 20, [(3, 6), (9, 17)], 4) == [(0, 3), (3, 7), (7, 9), (9, 17), (17, 20)]
    assert prefill_chunks(0, 2 * PREFILL_CHUNK + 1, [], PREFILL_CHUNK)[-1] == (2 * PREFILL_CHUNK, 2 * PREFILL_CHUNK + 1)


@pytest.mark.parametrize("decoder_type", [PlainDecoder, StaticDecoder])
def test_chunked_prefill_equals_one_forward(plain: GoTMLLM, source_image: Image.Image, decoder_type) -> None:
    """A prompt with an image (its 256 pads in one chunk) fed 8 tokens at a time gives the logits and hidden
    states of one forward over it, and the same greedy steps after it (docs/ALGORITHM.md, deliberate deviations)."""
    chain = plain.reason(PROMPT, source_image, max_new_tokens=12, logits_processor=steer())
    prompt = TokenSequence(chain.sequence.ids[:chain.turn_start], chain.sequence.images)
    calls = []
    with torch.no_grad():
        whole_logits, whole_states = forward_sequence(plain.model, prompt, hidden=True)
        decoder, reference = decoder_type(plain.model), PlainDecoder(plain.model)
        decoder.chunk = 8
        fed = decoder.feed(prompt, hidden=True, between_chunks=lambda: calls.append(len(decoder.ids)))
        sizes = [b - a for a, b in zip([0, *calls], [*calls, len(prompt.ids)])]
        first_pad = prompt.ids.index(plain.tokens.image_pad)
        assert sum(sizes) == len(prompt.ids) and len(sizes) > 6 and first_pad in calls
        assert sorted(sizes)[-2:] == [8, 256]  # the image's 256 pads in one chunk, every other chunk at most 8
        torch.testing.assert_close(fed.logits, whole_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fed.hidden, whole_states, rtol=1e-5, atol=1e-5)
        assert reference.feed(prompt).logits.equal(whole_logits)  # one chunk: the one forward
        for token in chain.token_ids:
            torch.testing.assert_close(decoder.step(token), reference.step(token), rtol=1e-5, atol=1e-5)


def test_cancel_lands_between_the_chunks_of_a_32k_token_prefill(plain: GoTMLLM) -> None:
    """Issue 19: a 32,768-token prompt is prefilled in chunks; a Cancel clicked 1 s into the prefill (a flag set
    by another thread, as ComfyUI's interrupt is) raises before the next chunk, within 2 s on the CPU (the tiny
    model's last chunks take about 1 s each; one forward over the whole prompt takes about 3.5 s)."""
    ids = tuple(torch.randint(100, 150_000, (32_768,), generator=torch.Generator().manual_seed(0)).tolist())
    clicked, clicked_at = threading.Event(), []

    def click() -> None:
        clicked_at.append(time.perf_counter())
        clicked.set()

    timer = threading.Timer(1.0, click)
    decoder = StaticDecoder(plain.model)
    timer.start()
    with pytest.raises(ReasoningCancelled), torch.no_grad():
        generate_turn(decoder, TokenSequence(ids, ()), lambda logits: int(logits.argmax()), {}, 1, str,
                      should_cancel=clicked.is_set)
    seconds = time.perf_counter() - clicked_at[0]
    print(f"\n[cancel] landed {seconds:.3f} s after the click, {len(decoder.ids)} of 32768 tokens prefilled")
    assert 0 < len(decoder.ids) < len(ids) and len(decoder.ids) % PREFILL_CHUNK == 0 and seconds < 2.0
