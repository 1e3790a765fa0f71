"""Moving whole models between the CPU and the GPU between pipeline stages, fast.

GoT's stages use disjoint models (the MLLM reasons; the UNet and VAE render), so only one stage's models need
the GPU at a time. `Offloader` keeps each model's tensors in pinned CPU memory: loading copies them to the GPU
asynchronously at full PCIe speed, unloading points the model back at its CPU copy without copying anything
(inference never changes a weight). A plain `module.to("cpu")` would copy every weight back into pageable
memory on each switch.
"""

from __future__ import annotations

import torch
from torch import nn


class Offloader:
    """Stage-wise residency for modules that are only ever used for inference."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._home: dict[int, dict[str, torch.Tensor]] = {}  # id(module) -> tensor key -> CPU copy

    def load(self, module: nn.Module) -> None:
        """Put `module` on the device (a shared tensor is copied once)."""
        home = self._home_of(module)
        copies: dict[str, torch.Tensor] = {}
        for key, owner, name, _ in _tensors(module):
            if key not in copies:
                copies[key] = home[key].to(self.device, non_blocking=True)
            _assign(owner, name, copies[key])

    def unload(self, module: nn.Module) -> None:
        """Put `module` back on its CPU copy; its GPU memory is freed when nothing else holds it."""
        home = self._home_of(module)
        for key, owner, name, _ in _tensors(module):
            _assign(owner, name, home[key])

    def _home_of(self, module: nn.Module) -> dict[str, torch.Tensor]:
        if id(module) not in self._home:
            pin = torch.cuda.is_available()
            home = {}
            for key, _, _, tensor in _tensors(module):
                if key not in home:
                    copy = tensor.detach().to("cpu")
                    home[key] = copy.pin_memory() if pin else copy
            self._home[id(module)] = home
        return self._home[id(module)]


def _tensors(module: nn.Module):
    """(key, owning module, attribute name, tensor) of every parameter and buffer. A parameter keeps its
    object when its data is swapped, so it is keyed by identity (tied embeddings share one key and stay
    shared); a buffer is replaced on each swap, so it is keyed by its place in the module tree."""
    for path, owner in module.named_modules(remove_duplicate=False):
        for name, param in owner._parameters.items():
            if param is not None:
                yield f"parameter {id(param)}", owner, name, param
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                yield f"buffer {path}.{name}", owner, name, buffer


def _assign(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name].data = value
    else:
        owner._buffers[name] = value
