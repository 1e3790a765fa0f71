"""Turning a (possibly PEFT-wrapped) state dict into plain model weights, one tensor at a time.

PEFT saves a LoRA-tuned model as `base_model.model.<name>` with, per adapted linear layer,
`<module>.base_layer.{weight,bias}`, `<module>.lora_A.default.weight` [r, in] and `<module>.lora_B.default.weight`
[out, r]; and, per fully-trained module, `<module>.original_module.<param>` beside the trained
`<module>.modules_to_save.default.<param>`. The pieces of one layer may sit in different shards, so pieces are
held until their layer is complete, merged at once, and the pieces dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

PEFT_PREFIX = "base_model.model."
GOT_LORA_ALPHA = 32.0  # docs/ALGORITHM.md §1: r=32, alpha=32

_PIECE = re.compile(
    r"^(?P<module>.+)\.(?:"
    r"base_layer\.(?P<base>weight|bias)"
    r"|lora_(?P<ab>[AB])\.default\.weight"
    r"|original_module\.(?P<original>.+)"
    r"|modules_to_save\.default\.(?P<saved>.+))$"
)


@dataclass
class _LoraLayer:
    base: torch.Tensor | None = None
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    sources: list[str] = field(default_factory=list)


@dataclass
class MergeStats:
    peft_wrapped: int = 0
    unwrapped: int = 0
    lora_pairs_merged: int = 0
    lora_ranks: set[int] = field(default_factory=set)
    modules_to_save_taken: int = 0
    originals_dropped: int = 0
    originals_used: int = 0


class PeftMerger:
    """Feed it `(key, tensor, source)` in any order with `add`; `finish` returns the plain state dict.

    W = W_base + (alpha / r) * (B @ A), computed in float32 and cast back to W_base's dtype; r is lora_A's
    row count. A `modules_to_save` copy replaces its `original_module`.
    """

    def __init__(self, lora_alpha: float = GOT_LORA_ALPHA) -> None:
        self.lora_alpha = lora_alpha
        self.state: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}  # plain name -> the key it was read as (for error messages)
        self.problems: list[str] = []
        self.stats = MergeStats()
        self._layers: dict[str, _LoraLayer] = {}
        self._originals: dict[str, tuple[torch.Tensor, str]] = {}
        self._saved: set[str] = set()

    def add(self, key: str, tensor: torch.Tensor, source: str) -> None:
        if key.startswith(PEFT_PREFIX):
            key = key[len(PEFT_PREFIX):]
            self.stats.peft_wrapped += 1
        else:
            self.stats.unwrapped += 1
        piece = _PIECE.match(key)
        if piece is None:
            self._place(key, tensor, source)
        elif piece["base"] == "bias":
            self._place(f"{piece['module']}.bias", tensor, source)
        elif piece["base"] or piece["ab"]:
            self._add_lora_piece(piece["module"], piece["ab"] or "base", tensor, source)
        elif piece["original"]:
            name = f"{piece['module']}.{piece['original']}"
            if name in self._saved:
                self.stats.originals_dropped += 1
            else:
                self._originals[name] = (tensor, source)
        else:
            name = f"{piece['module']}.{piece['saved']}"
            self._saved.add(name)
            if self._originals.pop(name, None) is not None:
                self.stats.originals_dropped += 1
            self.stats.modules_to_save_taken += 1
            self._place(name, tensor, source)

    def finish(self) -> dict[str, torch.Tensor]:
        for name, (tensor, source) in self._originals.items():
            self.stats.originals_used += 1
            self._place(name, tensor, source)
        self._originals.clear()
        for module, layer in self._layers.items():
            pieces = {"base_layer.weight": layer.base, "lora_A": layer.a, "lora_B": layer.b}
            have = [n for n, t in pieces.items() if t is not None]
            lacking = [n for n, t in pieces.items() if t is None]
            self.problems.append(f"LoRA layer {module} is incomplete: has {', '.join(have)} "
                                 f"({', '.join(layer.sources)}) but no {', '.join(lacking)}")
        self._layers.clear()
        if self.stats.peft_wrapped and self.stats.unwrapped:
            self.problems.append(f"{self.stats.unwrapped} MLLM tensor(s) lack the PEFT prefix {PEFT_PREFIX!r} that "
                                 f"the other {self.stats.peft_wrapped} have")
        return self.state

    def _add_lora_piece(self, module: str, role: str, tensor: torch.Tensor, source: str) -> None:
        layer = self._layers.setdefault(module, _LoraLayer())
        setattr(layer, role.lower(), tensor)
        layer.sources.append(source)
        if layer.base is not None and layer.a is not None and layer.b is not None:
            del self._layers[module]
            self._place(f"{module}.weight", self._merge(module, layer), ", ".join(layer.sources))

    def _merge(self, module: str, layer: _LoraLayer) -> torch.Tensor:
        base, a, b = layer.base, layer.a, layer.b
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(base.shape):
            self.problems.append(f"LoRA layer {module} has mismatched shapes: base {tuple(base.shape)}, "
                                 f"lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}")
            return base
        self.stats.lora_pairs_merged += 1
        self.stats.lora_ranks.add(rank)
        merged = base.float() + (self.lora_alpha / rank) * (b.float() @ a.float())
        return merged.to(base.dtype)

    def _place(self, name: str, tensor: torch.Tensor, source: str) -> None:
        if name in self.state:
            self.problems.append(f"{name} is given twice ({self.sources[name]} and {source})")
            return
        self.state[name] = tensor
        self.sources[name] = source
