"""The GoT MLLM under ComfyUI's model management.

The MLLM and its two projectors sit behind one `comfy.model_patcher.ModelPatcher`, so ComfyUI accounts for them,
moves them to the GPU with `load_models_gpu` before every use, offloads them when another model needs the
memory, and unloads them on "Unload models" (POST /free) like any checkpoint. Whenever ComfyUI takes the
weights off the device, the reasoner's KV cache (kept between the Reasoner and the SSGM Conditioner for reuse)
is freed too, so no VRAM stays behind. Cancel frees the cache inside `GoTMLLM` itself.
"""

from __future__ import annotations

import torch
from typing_extensions import override

import comfy.model_management
import comfy.model_patcher

from ..got_backend.ssgm.chain import GoTChain
from ..got_backend.reasoning.mllm import GoTMLLM
from ..got_backend.reasoning.semantic import SemanticGuidance
from ..got_backend.weights.mllm_files import MLLMLoadError, resolve_dtype
from .types import chain_reasoning
from ..got_backend.errors import GoTError

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


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


class MLLMWeights(torch.nn.Module):
    """The modules ComfyUI moves: the MLLM and both projectors. (ModelPatcher writes `device` and bookkeeping
    attributes on the module it manages; a transformers model's `device` is a read-only property.)"""

    def __init__(self, got: GoTMLLM) -> None:
        super().__init__()
        self.mllm = got.model
        self.output_projector = got.output_projector
        self.output_projector_add = got.output_projector_add
        self.release_caches = got.release_caches


class MLLMPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher that also frees the reasoner's KV cache whenever ComfyUI takes the weights off the device,
    partly (to make room for another model) or wholly (unload)."""

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


class ManagedMLLM:
    """The GOT_MLLM value: a GoTMLLM whose weights ComfyUI loads, offloads and evicts."""

    def __init__(self, got: GoTMLLM, name: str, load_device: torch.device, offload_device: torch.device) -> None:
        self.got, self.name = got, name
        self.patcher = MLLMPatcher(MLLMWeights(got), load_device=load_device, offload_device=offload_device)

    def loaded(self) -> GoTMLLM:
        """The GoTMLLM with all its weights on the load device (through ComfyUI, which may evict others)."""
        try:
            comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        except torch.OutOfMemoryError as err:
            raise MemoryError(
                f"the GoT MLLM {self.name!r} does not fit on {self.patcher.load_device}: free memory (Unload "
                "models), choose a smaller dtype on the GoT MLLM Loader, or start ComfyUI with --lowvram, which "
                "runs the MLLM on the CPU") from err
        devices = {p.device for p in self.patcher.model.parameters()}
        if len(devices) > 1:
            raise PartialLoadError(
                f"ComfyUI loaded the GoT MLLM {self.name!r} only partly onto {self.patcher.load_device} (its weights "
                f"are on {sorted(map(str, devices))}); free memory (Unload models) or start ComfyUI with "
                "--lowvram, which runs the MLLM on the CPU")
        return self.got

    def semantic_guidance(self, chain: GoTChain) -> SemanticGuidance:
        """docs/ALGORITHM.md §6 for a GOT_CHAIN value: the reasoner's KV cache is reused while the chain text is
        unedited; an edited chain is re-read in one full forward."""
        reasoning = chain_reasoning(chain)  # fails fast, before gigabytes move to the GPU
        return self.loaded().semantic_guidance(reasoning, chain.text)
