"""The thinker: a chat model asked to reason about a prompt (or an edit instruction, with its image) step by step
and then to give the revised prompt after "Revised Prompt:" (Think-Then-Generate's inference, docs/ALGORITHM.md §12)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..chat import ChatModel
from ..images import ImageInput
from ..reasoning.prompts import PromptError, check_text
from ..reasoning.sampling import ReasoningSettings
from ..reasoning.turns import ReasoningStats, TokenEvent
from .revision import MARKER, MAX_REVISION_CHARS, read_revision

T2I_SYSTEM = ("You rewrite prompts for a text-to-image model. First think step by step about what the user's "
              "prompt means: the objects it names or implies, what they look like, how many there are and where, "
              "and any world knowledge, culture, time or arithmetic it relies on. Then write the revised prompt: "
              "one explicit description of the image to draw, naming everything it must show. Write it on its "
              f"own after the marker \"{MARKER}\".")
EDIT_SYSTEM = ("You rewrite image-editing instructions for an image-editing model. Look at the image, then think "
               "step by step about what the user's instruction means for it: what must change, what it implies, "
               "and what must stay as it is. Then write the revised instruction: one explicit instruction naming "
               f"exactly what to change. Write it on its own after the marker \"{MARKER}\".")


@dataclass(frozen=True)
class Thought:
    prompt: str  # the revised prompt, or the original one when the answer gave none
    thinking: str  # the reasoning before the revision
    answer: str  # the model's whole answer
    revised: bool
    notes: tuple[str, ...]  # what went wrong reading the revision, if anything
    new_tokens: int
    stop: str  # "<|im_end|>", "<|endoftext|>" or "max_tokens"
    stats: ReasoningStats | None


def check_thinking_prompt(prompt: str) -> None:
    """A prompt the thinker can think about: not empty, and text as `check_text` reads it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("the prompt to think about is empty: write the prompt (or the edit instruction)")
    check_text(prompt, "prompt to think about")


def think(chat: ChatModel, prompt: str, image: ImageInput | None = None, *,
          settings: ReasoningSettings = ReasoningSettings(), max_revision_chars: int = MAX_REVISION_CHARS,
          on_token: Callable[[TokenEvent], None] | None = None,
          should_cancel: Callable[[], bool] | None = None, **changes) -> Thought:
    """Reason about `prompt` (an edit instruction for `image` when one is given) and read the revised prompt
    from the answer (`read_revision`). Greedy with up to 1024 new tokens unless `settings` (or `changes` to its
    fields) say otherwise; `on_token` and `should_cancel` (raises ReasoningCancelled) as in `ChatModel.generate`."""
    check_thinking_prompt(prompt)
    if not isinstance(max_revision_chars, int) or max_revision_chars < 1:
        raise PromptError(f"max_revision_chars must be a positive integer, got {max_revision_chars!r}")
    settings = replace(settings, **changes) if changes else settings
    question = f"Edit instruction: {prompt}" if image is not None else f"Prompt: {prompt}"
    answer = chat.generate(question, image, system=EDIT_SYSTEM if image is not None else T2I_SYSTEM,
                           settings=settings, on_token=on_token, should_cancel=should_cancel)
    revision = read_revision(answer.text, prompt, max_revision_chars)
    notes = (revision.note,) if revision.note else ()
    if answer.stop == "max_tokens":
        notes += (f"the answer stopped at max_new_tokens ({settings.max_new_tokens}): "
                  + ("the revision may be incomplete" if revision.revised else "raise it to let the model finish"),)
    return Thought(revision.prompt, revision.thinking, answer.text, revision.revised, notes, answer.new_tokens,
                   answer.stop, answer.stats)
