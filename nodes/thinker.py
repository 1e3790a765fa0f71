"""GoT Prompt Thinker: a Qwen2.5-VL chat model thinks about the prompt step by step and rewrites it
(Think-Then-Generate, docs/ALGORITHM.md §12), for the GoT Reasoner or any text encoder (core CLIPTextEncode).

The thinking streams onto the node with a token progress bar, as the Reasoner's chain does (its ChainStream);
when it is done the node shows the thinking, the revised prompt and any note (no revision found, so the original
prompt went on; a revision cut to the limit). Cancel stops it between tokens (reasoner.reason_or_interrupt).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

import comfy.model_management

from ..got_backend.thinking import MARKER, Thought, think
from ..got_backend.thinking.thinker import check_thinking_prompt
from ..got_backend.thinking.revision import MAX_REVISION_CHARS
from .comfy_bridge import check_widget_number, comfy_image, queue_time_check
from .model_management import ManagedVLM
from .reasoner import ChainStream, reason_or_interrupt, reasoning_settings, sampling_inputs
from .types import VLMSocket

NODE = "GoT Prompt Thinker"
REVISION_RANGE = (16, 20000)  # the max_revision_chars widget's range, also checked when run (a linked value)


def shown(thought: Thought) -> str:
    """What the node shows when the thinker is done."""
    notes = "".join(f"\n[{note}]" for note in thought.notes)
    return f"{thought.thinking}\n\n{MARKER} {thought.prompt}{notes}"


class GoTPromptThinker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTPromptThinker",
            display_name="GoT Prompt Thinker",
            category="GoT/reasoning",
            description="Think, then rewrite (Think-Then-Generate): a Qwen2.5-VL model reasons step by step about "
                        "what the prompt means (implied objects, world knowledge, counts, culture) and writes a "
                        f"revised prompt after \"{MARKER}\". Feed the revision to the GoT Reasoner's prompt, or to "
                        "any text encoder (CLIPTextEncode's text). The thinking streams onto the node; Cancel "
                        "stops it. Without a usable revision the original prompt goes on, and the node says so.",
            inputs=[
                VLMSocket.Input("vlm", tooltip="The chat model from the GoT VLM Loader (the base "
                                            "Qwen2.5-VL-3B-Instruct, a T2G-tuned folder, or the GoT MLLM)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt to think about (with an image: the edit instruction)."),
                *sampling_inputs(),
                io.Int.Input("max_revision_chars", default=MAX_REVISION_CHARS, min=REVISION_RANGE[0],
                             max=REVISION_RANGE[1],
                             tooltip="A longer revision is cut to this many characters (at a word boundary), "
                                     "with a note on the node."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional: the image an edit instruction is about (one RGB image, shown "
                                       "to the model squashed to 448x448); the instruction is then rewritten."),
            ],
            outputs=[
                io.String.Output("revised_prompt", display_name="prompt",
                                 tooltip="The revised prompt (the original prompt when the model gave none), "
                                         "for the GoT Reasoner's prompt or CLIPTextEncode's text."),
                io.String.Output("thinking", display_name="thinking",
                                 tooltip="The model's step-by-step thinking before the revised prompt."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompt: str | None = None) -> bool | str:
        """At queue time: a non-empty prompt (a prompt from another node is checked when run)."""
        return queue_time_check(check_thinking_prompt, prompt)

    @classmethod
    def execute(cls, vlm: ManagedVLM, prompt: str, max_new_tokens: int, sampling: bool, seed: int,
                temperature: float, top_p: float, max_revision_chars: int,
                image: torch.Tensor | None = None) -> io.NodeOutput:
        check_thinking_prompt(prompt)  # before loading, like the numbers
        settings = reasoning_settings(max_new_tokens, sampling, seed, temperature, top_p, NODE)  # before loading
        check_widget_number(NODE, "max_revision_chars", max_revision_chars, *REVISION_RANGE, integer=True)
        view = comfy_image(image, f"{NODE}'s image")
        stream = ChainStream(cls.hidden.unique_id, max_new_tokens)
        chat = vlm.loaded()
        thought = reason_or_interrupt(lambda: think(
            chat, prompt, view, settings=settings, max_revision_chars=max_revision_chars,
            on_token=stream,
            should_cancel=comfy.model_management.processing_interrupted))
        stream.bar.update_absolute(stream.bar.total)
        text = shown(thought)
        stream.show(text)
        return io.NodeOutput(thought.prompt, thought.thinking, ui=ui.PreviewText(text))


NODES: list[type[io.ComfyNode]] = [GoTPromptThinker]
