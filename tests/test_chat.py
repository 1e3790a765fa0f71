"""The chat runner (got_backend.chat) on the tiny models: a plain Qwen2.5-VL folder and the converted GoT MLLM,
answers steered with logits processors, first-token probabilities of a batch against one sequence at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from got_backend.chat import ChatError, ChatModel
from got_backend.reasoning.conversation import forward_sequence
from got_backend.reasoning.mllm import GoTMLLM
from got_backend.reasoning.tokens import IM_END
from got_backend.reasoning.turns import ReasoningCancelled
from got_backend.weights.mllm_files import MLLMLoadError
from tests.steering import ForceToken, steer

WORDS = ["yes", "Yes", " yes", "no"]


@pytest.fixture(scope="module")
def chat(tiny_vlm_folder: Path) -> ChatModel:
    return ChatModel.from_folder(tiny_vlm_folder, "fp32")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(5))


def test_the_question_follows_the_chat_template(chat: ChatModel, image: torch.Tensor) -> None:
    plain = chat.tokenizer.decode(list(chat.sequence("Is it red?").ids))
    assert plain == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nIs it red?"
                     "<|im_end|>\n<|im_start|>assistant\n")
    seen = chat.sequence("Is it red?", image, system="Answer in one word.")
    text = chat.tokenizer.decode(list(seen.ids))
    assert text.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|vision_end|>Is it red?<|im_end|>\n<|im_start|>assistant\n")
    assert len(seen.images) == 1 and seen.images[0].image.size == (448, 448)
    with pytest.raises(ChatError, match="empty"):
        chat.sequence("  ")


def test_a_steered_answer_stops_at_im_end_and_streams(chat: ChatModel) -> None:
    yes, end = chat.word_token("yes"), chat.tokenizer.convert_tokens_to_ids(IM_END)
    events = []
    answer = chat.generate("Is it red?", max_new_tokens=20, logits_processor=[ForceToken(1, yes), ForceToken(2, end)],
                           on_token=events.append)
    assert answer.text == "yes" and answer.stop == IM_END and answer.new_tokens == 2
    assert [e.token_id for e in events] == [yes, end] and "".join(e.text for e in events) == "yes" + IM_END
    assert answer.sequence.ids[answer.prompt_length:] == (yes, end)
    limited = chat.generate("Is it red?", max_new_tokens=3, logits_processor=steer())
    assert limited.stop == "max_tokens" and limited.new_tokens == 3


def test_greedy_is_the_argmax_of_the_model(chat: ChatModel) -> None:
    """The first greedy token is the arg-max of one plain forward over the question."""
    answer = chat.generate("Describe a cat.", max_new_tokens=1)
    logits, _ = forward_sequence(chat.model, chat.sequence("Describe a cat."), hidden=False)
    assert answer.sequence.ids[-1] == int(logits.argmax())


def test_cancel_drops_the_cache(chat: ChatModel) -> None:
    seen = []
    with pytest.raises(ReasoningCancelled):
        chat.generate("Describe a cat.", max_new_tokens=50, logits_processor=steer(),
                      on_token=seen.append, should_cancel=lambda: len(seen) >= 3)
    assert len(seen) == 3 and chat.cached_tokens == 0


def test_first_token_probabilities_of_a_batch_equal_one_at_a_time(chat: ChatModel, image: torch.Tensor) -> None:
    queries = [("Is it red?", image), ("Does this long question about a blue cube get a yes?", None),
               ("x", image), ("Is it a cube?", None)]
    scored = chat.first_token_probabilities(queries, WORDS)
    assert scored.probabilities.shape == (4, 4) and len(set(scored.token_ids)) == 4
    for row, (text, picture) in enumerate(queries):
        logits, _ = forward_sequence(chat.model, chat.sequence(text, picture), hidden=False)
        alone = logits.softmax(-1)[list(scored.token_ids)]
        torch.testing.assert_close(scored.probabilities[row], alone, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(scored.probabilities[0], scored.probabilities[1])  # the image and text matter


def test_first_token_probabilities_follow_the_logits_processor(chat: ChatModel) -> None:
    yes = chat.word_token("yes")

    def favour_yes(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, yes] += 50.0
        return scores

    scored = chat.first_token_probabilities([("Is it red?", None)], ["yes", "no"], logits_processor=[favour_yes])
    assert scored.probabilities[0, 0] > 0.99 and scored.probabilities[0, 1] < 0.01
    with pytest.raises(ReasoningCancelled):
        chat.first_token_probabilities([("Is it red?", None)], ["yes"], should_cancel=lambda: True)


def test_words_must_be_one_token_and_queries_given(chat: ChatModel) -> None:
    with pytest.raises(ChatError, match="not one"):
        chat.word_token("photosynthesis-ish")
    with pytest.raises(ChatError, match="no queries"):
        chat.first_token_probabilities([], WORDS)


def test_the_got_mllm_is_a_chat_model_without_loading_again(tiny_mllm_folder: Path) -> None:
    got = GoTMLLM.from_converted(tiny_mllm_folder, "fp32")
    chat = ChatModel.of(got)
    assert chat.model is got.model and chat.processor is got.processor
    reasoning = got.reason("a red ball", max_new_tokens=3)
    cached = got.cached_tokens
    chat.generate("Is it red?", max_new_tokens=2)
    assert got.cached_tokens == cached and chat.cached_tokens > 0  # the reasoner's cache is its own
    assert got.reason("a red ball", max_new_tokens=3).text == reasoning.text
    # the converted folder is also a Qwen2.5-VL folder: loaded as one, it answers the same
    folder_chat = ChatModel.from_folder(tiny_mllm_folder, "fp32")
    assert folder_chat.generate("Is it red?", max_new_tokens=4).text == chat.generate("Is it red?", max_new_tokens=4).text


def test_folders_that_are_not_a_qwen25_vl_are_refused(tiny_vlm_folder: Path, tiny_release, tmp_path: Path) -> None:
    with pytest.raises(MLLMLoadError, match="no safetensors weights"):
        ChatModel.from_folder(tiny_release.qwen_base, "fp32")  # config and tokenizer only
    other = tmp_path / "other"
    shutil.copytree(tiny_vlm_folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(MLLMLoadError, match="not a Qwen2.5-VL"):
        ChatModel.from_folder(other, "fp32")
    with pytest.raises(MLLMLoadError, match="does not exist"):
        ChatModel.from_folder(tmp_path / "missing", "fp32")
