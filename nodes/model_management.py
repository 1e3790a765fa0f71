"""The GoT MLLM and chat models (any Qwen2.5-VL) under ComfyUI's model management.

The MLLM and its two projectors sit behind one `comfy.model_patcher.ModelPatcher`, so ComfyUI accounts for them,
moves them to the GPU with `load_models_gpu` before every use, offloads them when another model needs the
memory, and unloads them on "Unload models" (POST /free) like any checkpoint. Whenever ComfyUI takes the
weights off the device, the KV caches of everything that runs on those weights (the reasoner's, kept between
the Reasoner and the SSGM Conditioner for reuse, and a chat model's) are freed too, so no VRAM stays behind.
Cancel frees the cache inside `GoTMLLM` / `ChatModel` itself.

A chat model (GOT_VLM, `ManagedVLM`) is either its own folder behind its own patcher, or the GoT MLLM itself:
then it shares the MLLM's patcher and weights. `shared_model` keeps one managed model per (folder, dtype) while
anything holds it, so the GoT MLLM Loader and the GoT VLM Loader on the same folder load it once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from typing_extensions import override

import comfy.model_management
import comfy.model_patcher

from ..got_backend.chat import ChatModel
from ..got_backend.ssgm.chain import GoTChain
from ..got_backend.reasoning.mllm import GoTMLLM
from ..got_backend.reasoning.semantic import SemanticGuidance
from ..got_backend.weights.mllm_files import MLLMLoadError, resolve_dtype
from .types import chain_reasoning
from ..got_backend.errors import GoTError

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


class ModelMemoryError(GoTError, torch.OutOfMemoryError, MemoryError):
    """A model does not fit in its device's memory. Also a torch.OutOfMemoryError, the exception ComfyUI's executor
    treats as out of memory (it adds its tip and unloads all models), and a MemoryError."""


class PartialLoadError(GoTError):
    """ComfyUI placed only part of the MLLM on its device; a transformers model cannot run split like that."""


def mllm_devices() -> tuple[torch.device, torch.device]:
    """(load, offload) devices, chosen by ComfyUI as for its text encoders (the CPU under --lowvram/--novram,
    which keeps the whole MLLM on one device)."""
    return comfy.model_management.text_encoder_device(), comfy.model_management.text_encoder_offload_device()


def mllm_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The dtype for a dtype choice; "auto" is bf16 where the device supports it, else fp32. Never fp16 by
    itself: Qwen2.5-VL's activations overflow fp16 and the chain comes out as garbage, with no error."""
    if choice not in DTYPE_CHOICES:
        raise MLLMLoadError(f"unknown MLLM dtype {choice!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    if choice != "auto":
        return resolve_dtype(choice)
    if comfy.model_management.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


class ManagedWeights(torch.nn.Module):
    """The modules ComfyUI moves (the MLLM and both projectors, or a chat model), and whatever keeps KV caches
    on them. (ModelPatcher writes `device` and bookkeeping attributes on the module it manages; a transformers
    model's `device` is a read-only property.)"""

    def __init__(self, cache_owner: GoTMLLM | ChatModel, **modules: torch.nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
        self.cache_owners = [cache_owner]

    def release_caches(self) -> None:
        for owner in self.cache_owners:
            owner.release_caches()

    def cache_bytes(self) -> int:
        return sum(owner.cache_bytes for owner in self.cache_owners)


def weight_bytes(module: torch.nn.Module) -> int:
    """The bytes of `module`'s weights, each tensor once. ComfyUI's `module_size` sums the state dict, which lists
    a tied weight under both its names: Qwen2.5-VL-3B's lm_head is its embed_tokens (311 M parameters, 0.6 GB
    in bf16, 8% of the model, counted twice)."""
    tensors = {(t.device, t.data_ptr()): t.nbytes for t in module.state_dict(keep_vars=True).values()}
    return sum(tensors.values())


class MLLMPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher that also frees the reasoner's KV cache whenever ComfyUI takes the weights off the device,
    partly (to make room for another model) or wholly (unload). The KV caches count in its size: they stay on
    the load device between prompts (their capacity follows the largest max_new_tokens asked for), so ComfyUI
    must see them to know what unloading this model frees. Tied weights count once (`weight_bytes`)."""

    @override
    def model_size(self) -> int:
        if self.size <= 0:
            self.size = weight_bytes(self.model)
        return self.size + self.model.cache_bytes()

    @override
    def loaded_size(self) -> int:
        weights = self.model_size() - self.model.cache_bytes()
        return min(super().loaded_size(), weights) + self.model.cache_bytes()

    @override
    def partially_unload(self, device_to: torch.device, memory_to_free: int = 0) -> int:
        self.model.release_caches()
        return super().partially_unload(device_to, memory_to_free)

    @override
    def detach(self, unpatch_all: bool = True) -> torch.nn.Module:
        # Not when the patcher is merely garbage-collected (its __del__ detaches with unpatch_all=False): the
        # cache then goes with the model, and torch must not run during interpreter shutdown.
        if unpatch_all:
            self.model.release_caches()
        return super().detach(unpatch_all)


def load_fully(patcher: comfy.model_patcher.ModelPatcher, what: str) -> None:
    """All of `patcher`'s weights on its load device, through ComfyUI (which may evict other models)."""
    try:
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    except torch.OutOfMemoryError as err:
        raise ModelMemoryError(
            f"the {what} does not fit on {patcher.load_device}: free memory (Unload models), choose a smaller "
            "dtype on its loader, or start ComfyUI with --lowvram, which runs it on the CPU") from err
    devices = {p.device for p in patcher.model.parameters()}
    if len(devices) > 1:
        raise PartialLoadError(
            f"ComfyUI loaded the {what} only partly onto {patcher.load_device} (its weights are on "
            f"{sorted(map(str, devices))}); free memory (Unload models) or start ComfyUI with --lowvram, which "
            "runs it on the CPU")


class ManagedVLM:
    """The GOT_VLM value: a ChatModel whose weights ComfyUI loads, offloads and evicts."""

    def __init__(self, chat: ChatModel, name: str, patcher: comfy.model_patcher.ModelPatcher,
                 shares: ManagedMLLM | None = None) -> None:
        self.chat, self.name, self.patcher = chat, name, patcher
        self.shares = shares  # the GoT MLLM whose weights these are, kept alive for `shared_model`

    @classmethod
    def standalone(cls, chat: ChatModel, name: str, load_device: torch.device,
                   offload_device: torch.device) -> ManagedVLM:
        """A chat model behind a patcher of its own."""
        weights = ManagedWeights(chat, vlm=chat.model)
        return cls(chat, name, MLLMPatcher(weights, load_device=load_device, offload_device=offload_device))

    def loaded(self) -> ChatModel:
        """The ChatModel with all its weights on the load device."""
        load_fully(self.patcher, f"chat model {self.name!r}")
        return self.chat


class ManagedMLLM:
    """The GOT_MLLM value: a GoTMLLM whose weights ComfyUI loads, offloads and evicts."""

    def __init__(self, got: GoTMLLM, name: str, load_device: torch.device, offload_device: torch.device) -> None:
        self.got, self.name = got, name
        weights = ManagedWeights(got, mllm=got.model, output_projector=got.output_projector,
                                 output_projector_add=got.output_projector_add)
        self.patcher = MLLMPatcher(weights, load_device=load_device, offload_device=offload_device)
        self._chat: ManagedVLM | None = None

    def loaded(self) -> GoTMLLM:
        """The GoTMLLM with all its weights on the load device (through ComfyUI, which may evict others)."""
        load_fully(self.patcher, f"GoT MLLM {self.name!r}")
        return self.got

    def as_chat(self) -> ManagedVLM:
        """This MLLM as a chat model: the same weights behind the same patcher (one load), its own KV cache,
        which ComfyUI's unloads free with the reasoner's."""
        if self._chat is None:
            chat = ChatModel.of(self.got)
            self.patcher.model.cache_owners.append(chat)
            self._chat = ManagedVLM(chat, self.name, self.patcher, shares=self)
        return self._chat

    def semantic_guidance(self, chain: GoTChain) -> SemanticGuidance:
        """docs/ALGORITHM.md §6 for a GOT_CHAIN value: the reasoner's KV cache is reused while the chain text is
        unedited; an edited chain is re-read in one full forward."""
        reasoning = chain_reasoning(chain)  # fails fast, before gigabytes move to the GPU
        return self.loaded().semantic_guidance(reasoning, chain.text)

    def check_chain(self, chain: GoTChain) -> None:
        """What `semantic_guidance` would refuse (no reasoning, no <|im_gen_start|>, too many tokens), found by
        the tokenizer alone: before the weights move or any other work starts."""
        self.got.semantic_input(chain_reasoning(chain), chain.text)


Managed = TypeVar("Managed", ManagedMLLM, ManagedVLM)
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shared_model(folders: tuple[Path, ...], dtype: torch.dtype, load: Callable[[], Managed]) -> Managed:
    """The managed model already loaded from `folders` in `dtype` (while any node output still holds it), else
    `load()`'s, remembered for the next loader."""
    key = (*(str(folder.resolve()) for folder in folders), dtype)
    found = _SHARED.get(key)
    if found is None:
        found = _SHARED[key] = load()
    return found
