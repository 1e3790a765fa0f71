"""The prompt thinker (got_backend.thinking) on the tiny Qwen2.5-VL chat model, its answers written with a logits
processor so the revision is known: reading the revision (marker present, absent, repeated, empty, quoted, too
long), streaming, Cancel, and the image path for edit instructions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from got_backend.chat import ChatModel
from got_backend.reasoning.prompts import PromptError
from got_backend.reasoning.tokens import IM_END
from got_backend.reasoning.turns import ReasoningCancelled
from got_backend.thinking import MARKER, read_revision, think
from got_backend.thinking.thinker import EDIT_SYSTEM, T2I_SYSTEM
from tests.steering import ForceToken, steer

PROMPT = "the tower Gustave Eiffel built, at night, seen from the river"


@pytest.fixture(scope="module")
def chat(tiny_vlm_folder: Path) -> ChatModel:
    return ChatModel.from_folder(tiny_vlm_folder, "fp32")


def writes(chat: ChatModel, answer: str) -> list:
    """A processor that makes the model answer `answer` and stop (<|im_end|>)."""
    ids = chat.tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [ForceToken(1, ids + [chat.tokenizer.convert_tokens_to_ids(IM_END)])]


@pytest.mark.parametrize("answer, prompt, thinking, revised, note", [
    ("Eiffel built the Eiffel Tower in Paris.\nRevised Prompt: The Eiffel Tower lit at night, seen from the Seine",
     "The Eiffel Tower lit at night, seen from the Seine", "Eiffel built the Eiffel Tower in Paris.", True, None),
    ("It is in Paris. Revised Prompt: the Tower. More thoughts.\n**Revised Prompt:** \"The Eiffel Tower at night\"",
     "The Eiffel Tower at night", "It is in Paris. Revised Prompt: the Tower. More thoughts.", True, None),
    ("I think it is the Eiffel Tower.", PROMPT, "I think it is the Eiffel Tower.", False, "no \"Revised Prompt:\""),
    ("The Eiffel Tower.\nRevised Prompt:  \"\" ", PROMPT, "The Eiffel Tower.", False, "is empty"),
])
def test_the_revision_is_read_from_the_generated_answer(chat, answer, prompt, thinking, revised, note) -> None:
    thought = think(chat, PROMPT, max_new_tokens=200, logits_processor=writes(chat, answer))
    assert thought.answer == answer and thought.stop == IM_END
    assert (thought.prompt, thought.thinking, thought.revised) == (prompt, thinking, revised)
    assert (note is None and thought.notes == ()) or note in thought.notes[0]


@pytest.mark.parametrize("answer, expected", [
    ("Revised Prompt: `a red fox in snow`", "a red fox in snow"),
    ("revised prompt: \u201ca red fox in snow\u201d", "a red fox in snow"),
    ("## Revised Prompt:\n**'a red fox\nin snow'**", "a red fox in snow"),
    ("Revised Prompt:\n```\na red fox in snow\n```", "a red fox in snow"),
])
def test_quotes_and_markup_around_the_revision_are_stripped(answer: str, expected: str) -> None:
    assert read_revision(answer, "original").prompt == expected


def test_a_long_revision_is_cut_with_a_note(chat: ChatModel) -> None:
    answer = "Thoughts. Revised Prompt: " + "a very tall tower " * 8
    thought = think(chat, PROMPT, max_new_tokens=200, max_revision_chars=40, logits_processor=writes(chat, answer))
    assert thought.prompt == "a very tall tower a very tall tower a" and thought.revised
    assert "cut to 40" in thought.notes[0]


def test_the_token_limit_is_noted(chat: ChatModel) -> None:
    thought = think(chat, PROMPT, max_new_tokens=5, logits_processor=steer())
    assert thought.stop == "max_tokens" and thought.new_tokens == 5 and thought.prompt == PROMPT
    assert "max_new_tokens (5)" in thought.notes[-1]


def test_the_question_is_the_t2g_instruction_and_the_prompt(chat: ChatModel) -> None:
    thought = think(chat, PROMPT, max_new_tokens=2)
    question = chat.tokenizer.decode(list(chat.sequence(f"Prompt: {PROMPT}", system=T2I_SYSTEM).ids))
    assert MARKER in T2I_SYSTEM and "step by step" in T2I_SYSTEM
    assert thought.stats is not None and question.startswith(f"<|im_start|>system\n{T2I_SYSTEM}<|im_end|>")


class Question:
    """A logits processor that only records what the model was asked (the ids before the first new token)."""

    ids: list[int] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.ids = input_ids[0].tolist() if self.ids is None else self.ids
        return scores


def test_an_edit_instruction_is_thought_about_with_its_image(chat: ChatModel) -> None:
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    answer = "The hat goes on the head. Revised Prompt: Put a red hat on the girl's head, keep the rest"
    asked = Question()
    thought = think(chat, "add a hat", image, max_new_tokens=100, logits_processor=[asked, *writes(chat, answer)])
    assert thought.prompt == "Put a red hat on the girl's head, keep the rest"
    question = chat.tokenizer.decode(asked.ids)
    assert asked.ids.count(chat.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 256  # 448x448 -> 256 pads
    assert question.startswith(f"<|im_start|>system\n{EDIT_SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert question.endswith("<|vision_end|>Edit instruction: add a hat<|im_end|>\n<|im_start|>assistant\n")


def test_streaming_and_cancel(chat: ChatModel) -> None:
    answer = "Paris. Revised Prompt: the Eiffel Tower at night"
    events = []
    think(chat, PROMPT, max_new_tokens=100, logits_processor=writes(chat, answer), on_token=events.append)
    assert "".join(e.text for e in events) == answer + IM_END  # token by token, the stop token last
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    events.clear()
    with pytest.raises(ReasoningCancelled):
        think(chat, PROMPT, max_new_tokens=100, logits_processor=steer(), on_token=events.append,
              should_cancel=lambda: len(events) >= 4)
    assert [e.index for e in events] == [1, 2, 3, 4] and all(e.max_new_tokens == 100 for e in events)
    assert chat.cached_tokens == 0


def test_bad_input_is_refused(chat: ChatModel) -> None:
    with pytest.raises(PromptError, match="empty"):
        think(chat, "  ")
    with pytest.raises(PromptError, match="max_revision_chars"):
        think(chat, PROMPT, max_revision_chars=0)
