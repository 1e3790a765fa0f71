"""The pack's own ComfyUI socket types, shared by every node family, and the GOT_CHAIN value.

- GOT_MLLM carries a `model_management.ManagedMLLM` (the MLLM under ComfyUI's model management).
- GOT_VLM carries a `model_management.ManagedVLM`: any Qwen2.5-VL as a chat model (got_backend.chat), for the
  Prompt Thinker and the judge; the GoT MLLM itself when its loader names the same folder (one load).
- GOT_CHAIN carries a `ReasonedChain`: the chain of the current turn as parsed text (a got_backend GoTChain, so
  layout code takes it as is) plus the Reasoning it belongs to, which semantic guidance needs (prompt, image,
  earlier turns; and the KV cache to reuse while the text is unedited).
- GOT_BRANCHES carries the four guidance-branch conditionings of the SSGM Conditioner.
- GOT_REFLECTION carries a `reflect.ReflectionState`: the PARM++ rounds so far, from GoT Reflect to GoT
  Reflection Round and on to the next round's GoT Reflect.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..got_backend.ssgm.chain import GoTChain, parse_chain
from ..got_backend.ssgm.typed_plan import read_typed_plan
from ..got_backend.reasoning.turns import Reasoning
from ..got_backend.errors import GoTError

MLLMSocket = io.Custom("GOT_MLLM")
VLMSocket = io.Custom("GOT_VLM")
ChainSocket = io.Custom("GOT_CHAIN")
BranchesSocket = io.Custom("GOT_BRANCHES")
ReflectionSocket = io.Custom("GOT_REFLECTION")

ComfyConditioning = list[list]  # ComfyUI's CONDITIONING value: [[cross_attn, {extra conds}], ...]


class ChainWithoutReasoningError(GoTError):
    """A chain typed with no GoT Reasoner upstream was used where the prompt it answers is needed."""


@dataclass(frozen=True)
class ReasonedChain(GoTChain):
    # None: typed into the Chain Parser with no reasoner upstream (layout works; semantic tokens cannot).
    reasoning: Reasoning | None = None


def reasoned_chain(text: str, reasoning: Reasoning | None) -> ReasonedChain:
    """A model's chain `text` parsed, with its Reasoning."""
    return _with_reasoning(parse_chain(text, drawn_after=_breaks(reasoning)), reasoning)


def typed_chain(text: str, reasoning: Reasoning | None) -> ReasonedChain:
    """A whole plan a person typed or edited, read and checked as got_backend's typed_plan reads it (a mistake is
    a ChainError saying where), with the Reasoning it is read with."""
    return _with_reasoning(read_typed_plan(text, drawn_after=_breaks(reasoning)), reasoning)


def _breaks(reasoning: Reasoning | None) -> tuple[str, ...]:
    return reasoning.layout_breaks if reasoning else ()


def _with_reasoning(chain: GoTChain, reasoning: Reasoning | None) -> ReasonedChain:
    return ReasonedChain(chain.text, chain.objects, chain.issues, chain.drawn_after, reasoning)


def chain_reasoning(chain: GoTChain) -> Reasoning:
    """The Reasoning a GOT_CHAIN value belongs to (the prompt, image and earlier turns its text goes with)."""
    reasoning = getattr(chain, "reasoning", None)
    if reasoning is None:
        raise ChainWithoutReasoningError(
            "this chain was typed into a GoT Chain Parser with no GoT Reasoner connected, so there is no prompt "
            "to read it with: connect the Reasoner's chain output to the Chain Parser's `chain` input (your "
            "typed text then replaces the reasoner's chain)")
    return reasoning
