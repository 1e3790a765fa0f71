"""GoT Reasoner and GoT Next Turn: the MLLM writes the reasoning chain, streamed onto the node as it grows.

Both show a token progress bar (total = max_new_tokens), stream the chain text to the node (the frontend's
progress-text preview) and stop on Cancel: the backend checks ComfyUI's interrupt flag between tokens, drops
its KV cache, and the node raises ComfyUI's InterruptProcessingException outside the exception handler, so no
traceback keeps the cache's tensors alive.

Multi-turn editing (docs/ALGORITHM.md §10) unrolls in the graph: Reasoner -> render -> Next Turn (with the rendered image)
-> render -> ...; a graph has a fixed number of turns, so a conversation that ends earlier stops the next turn
with an error saying so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.utils

from ..got_backend.reasoning.prompts import PromptError, check_prompt, instruction
from ..got_backend.reasoning.sampling import ReasoningSettings
from ..got_backend.reasoning.turns import UNFINISHED_ADVICE, Reasoning, ReasoningCancelled, TokenEvent
from ..got_backend.ssgm.typed_plan import read_typed_plan
from .comfy_bridge import check_widget_number, comfy_image, queue_time_check, show_on_node
from .model_management import ManagedMLLM
from .types import ChainSocket, MLLMSocket, ReasonedChain, chain_reasoning, reasoned_chain
from ..got_backend.errors import GoTError

TASKS = {"text-to-image": "t2i", "edit": "edit"}
STREAM_INTERVAL = 0.1  # seconds between two updates of the streamed text


class TaskImageError(GoTError):
    """The task and the image input do not go together."""


def check_chain_start(text: str) -> None:
    """The start of a chain the user typed, read as strictly as the Chain Parser reads an edited chain."""
    if text.strip():
        read_typed_plan(text, whole=False)


class ChainStream:
    """Per new token: the progress bar and (at most every STREAM_INTERVAL seconds) the text so far on the node."""

    def __init__(self, node_id: str | None, max_new_tokens: int) -> None:
        self.node_id, self.text, self.shown_at = node_id, "", 0.0
        self.bar = comfy.utils.ProgressBar(max_new_tokens, node_id=node_id)

    def __call__(self, event: TokenEvent) -> None:
        self.bar.update_absolute(event.index)
        self.text += event.text
        if time.monotonic() - self.shown_at >= STREAM_INTERVAL:
            self.show(self.text)

    def show(self, text: str) -> None:
        self.shown_at = time.monotonic()
        show_on_node(self.node_id, text)

    def finish(self, reasoning: Reasoning) -> None:
        self.bar.update_absolute(self.bar.total)
        note = "" if reasoning.ready_for_image else f"\n\n[{UNFINISHED_ADVICE[reasoning.stop]}]"
        self.show(reasoning.text + note)


def reason_or_interrupt(work: Callable[[], Reasoning]) -> Reasoning:
    """Run `work`; Cancel becomes a fresh InterruptProcessingException raised after the handler, so no traceback
    keeps the generation's frames (and the KV cache they hold) alive, then the freed memory goes back to the
    device. Cancel arrives either as the backend's ReasoningCancelled (its check between tokens) or as ComfyUI's
    own interrupt, which the server's progress-bar hook raises inside a token callback."""
    try:
        return work()
    except (ReasoningCancelled, comfy.model_management.InterruptProcessingException):
        pass
    comfy.model_management.soft_empty_cache()
    raise comfy.model_management.InterruptProcessingException()


# The widgets' ranges, also checked at run time (a linked value, or NaN in a workflow file, skips ComfyUI's check).
SAMPLING_RANGES = {"max_new_tokens": (1, 8192), "seed": (0, 0xFFFFFFFFFFFFFFFF), "temperature": (0.01, 5.0),
                   "top_p": (0.01, 1.0)}


def sampling_inputs() -> list[io.Input]:
    ranges = SAMPLING_RANGES
    return [
        io.Int.Input("max_new_tokens", default=1024, min=ranges["max_new_tokens"][0], max=ranges["max_new_tokens"][1],
                     tooltip="Most tokens to write; the progress bar counts up to it. Reasoning usually stops "
                             "earlier, at <|im_gen_start|> (ready to render)."),
        io.Boolean.Input("sampling", default=False,
                         tooltip="Off: greedy decoding (deterministic, as GoT's reference). On: sample with the "
                                 "temperature, top_p and seed below."),
        # No "randomize after queueing" control (the frontend adds one to any `seed` unless told not to): a
        # changed seed would make every queue reason again, and editing the chain relies on the cached one.
        io.Int.Input("seed", default=0, min=ranges["seed"][0], max=ranges["seed"][1], control_after_generate=False,
                     tooltip="Sampling seed (used only with sampling on). It stays fixed, so re-queueing reuses "
                             "the cached chain instead of reasoning again."),
        io.Float.Input("temperature", default=1.0, min=ranges["temperature"][0], max=ranges["temperature"][1], step=0.05,
                       tooltip="Sampling temperature (sampling on only); lower is more conservative."),
        io.Float.Input("top_p", default=1.0, min=ranges["top_p"][0], max=ranges["top_p"][1], step=0.01,
                       tooltip="Nucleus sampling: keep the most likely tokens up to this total probability "
                               "(sampling on only; 1 keeps all)."),
    ]


def reasoning_settings(max_new_tokens: int, sampling: bool, seed: int, temperature: float,
                       top_p: float, node: str = "GoT Reasoner") -> ReasoningSettings:
    values = {"max_new_tokens": max_new_tokens, "seed": seed, "temperature": temperature, "top_p": top_p}
    for name, (low, high) in SAMPLING_RANGES.items():
        check_widget_number(node, name, values[name], low, high, integer=name in ("max_new_tokens", "seed"))
    return ReasoningSettings(max_new_tokens=max_new_tokens, do_sample=sampling, seed=seed if sampling else None,
                             temperature=temperature, top_p=top_p)


CHAIN_OUTPUTS = [
    ChainSocket.Output("reasoned_chain", display_name="chain",
                    tooltip="The reasoning chain with its object boxes, for the GoT Chain Parser (to edit it), "
                            "GoT Mask from Boxes and the GoT SSGM Conditioner."),
    io.String.Output("chain_text", display_name="text",
                     tooltip="The chain as text, special tokens included (what you would paste into a GoT "
                             "Chain Parser to edit it)."),
]


def chain_output(reasoning: Reasoning) -> io.NodeOutput:
    chain = reasoned_chain(reasoning.text, reasoning)
    return io.NodeOutput(chain, chain.text, ui=ui.PreviewText(chain.text))


class GoTReasoner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTReasoner",
            display_name="GoT Reasoner",
            category="GoT/reasoning",
            description="GoT's MLLM reasons about the prompt (and, for an edit, the source image) and writes a "
                        "chain of thought that places every object with a box and a colour. The chain is streamed "
                        "onto the node while it grows; Cancel stops it.",
            inputs=[
                MLLMSocket.Input("mllm", tooltip="The GoT MLLM from the GoT MLLM Loader."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Text-to-image: the caption of the image. Edit: the instruction, e.g. "
                                        "'replace the cat with a dog'."),
                io.Combo.Input("task", options=list(TASKS), default="text-to-image",
                               tooltip="text-to-image: reason from the prompt alone. edit: reason about the "
                                       "connected image and the instruction (needs the image)."),
                *sampling_inputs(),
                io.Image.Input("image", optional=True,
                               tooltip="Edit only: the one RGB image to edit (shown to the MLLM squashed to "
                                       "448x448)."),
                io.String.Input("chain_start", multiline=True, default="", optional=True,
                                tooltip="Optional text the chain must begin with; the MLLM continues it (e.g. "
                                        "the first object with its box). A whole chain ending with "
                                        "<|im_gen_start|> is used as is, without reasoning."),
            ],
            outputs=CHAIN_OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    # ComfyUI files validate_inputs' one message under each of its arguments, so it takes only `prompt`: an
    # empty prompt is reported once, blaming prompt. The task and chain_start are checked when the node runs,
    # before anything is loaded (ComfyUI 0.8.0 also checks the task Combo at queue time; 0.3.64 checks only V1
    # Combos).
    @classmethod
    def validate_inputs(cls, prompt: str | None = None) -> bool | str:
        """At queue time: a usable prompt (a prompt from another node is checked when run)."""
        return queue_time_check(check_prompt, prompt)

    @classmethod
    def execute(cls, mllm: ManagedMLLM, prompt: str, task: str, max_new_tokens: int, sampling: bool, seed: int,
                temperature: float, top_p: float, image: torch.Tensor | None = None,
                chain_start: str = "") -> io.NodeOutput:
        if task not in TASKS:
            raise PromptError(f"task {task!r} is not one of {', '.join(TASKS)}: choose one on the node, or fix "
                              "the node linked to task")
        task_id = TASKS[task]
        if task_id == "t2i" and image is not None:
            raise TaskImageError("an image is connected but the task is text-to-image, which would ignore it: "
                                 "choose the edit task, or disconnect the image")
        instruction(prompt, task_id)  # an empty prompt fails here, before the MLLM is loaded
        settings = reasoning_settings(max_new_tokens, sampling, seed, temperature, top_p)
        check_chain_start(chain_start)
        view = comfy_image(image, "GoT Reasoner's image")  # checked before the MLLM is loaded
        stream = ChainStream(cls.hidden.unique_id, max_new_tokens)
        got = mllm.loaded()
        reasoning = reason_or_interrupt(lambda: got.reason(
            prompt, view, task=task_id, assistant_prefix=chain_start, on_token=stream,
            settings=settings, should_cancel=comfy.model_management.processing_interrupted))
        stream.finish(reasoning)
        return chain_output(reasoning)


class GoTNextTurn(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GoTNextTurn",
            display_name="GoT Next Turn",
            category="GoT/reasoning",
            description="Continues a multi-turn GoT reasoning (docs/ALGORITHM.md §10) after its image was rendered: the "
                        "conversation goes on, the rendered image is shown to the MLLM when it asks for it, and "
                        "the next turn's chain comes out (its boxes only). Chain several for several turns.",
            inputs=[
                MLLMSocket.Input("mllm", tooltip="The GoT MLLM that wrote the previous turn."),
                ChainSocket.Input("chain", tooltip="The previous turn's chain (from a GoT Reasoner, Next Turn or "
                                                "Chain Parser; an edited chain is continued as edited)."),
                io.Image.Input("image", tooltip="The image rendered from the previous turn (one RGB image); the "
                                                "MLLM sees it when it writes <|vision_start|>."),
                *sampling_inputs(),
            ],
            outputs=CHAIN_OUTPUTS,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, mllm: ManagedMLLM, chain: ReasonedChain, image: torch.Tensor, max_new_tokens: int,
                sampling: bool, seed: int, temperature: float, top_p: float) -> io.NodeOutput:
        reasoning = chain_reasoning(chain)  # fails fast, before gigabytes move to the GPU
        settings = reasoning_settings(max_new_tokens, sampling, seed, temperature, top_p, "GoT Next Turn")
        rendered = comfy_image(image, "GoT Next Turn's image")
        got = mllm.loaded()
        previous = got.edit_chain(reasoning, chain.text)
        stream = ChainStream(cls.hidden.unique_id, max_new_tokens)

        def turn(reasoning: Reasoning, shown: torch.Tensor | None) -> Reasoning:
            return reason_or_interrupt(lambda: got.continue_reasoning(
                reasoning, shown, settings=settings, on_token=stream,
                should_cancel=comfy.model_management.processing_interrupted))

        if previous.stop != "vision_start":  # e.g. after <|im_gen_start|>: go on after the 64 image queries
            previous = turn(previous, None)
        if previous.stop == "vision_start":  # the model asks to see the image rendered from the last turn
            previous = turn(previous, rendered)
        stream.finish(previous)
        return chain_output(previous)


NODES: list[type[io.ComfyNode]] = [GoTReasoner, GoTNextTurn]
