"""Parameter names and shapes: a model built on the meta device (no memory), and a state dict accounted
against it. Every strict load and every checkpoint check of the pack compares through `state_mismatch`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

Model = TypeVar("Model", bound=torch.nn.Module)


def meta_model(build: Callable[..., Model], *args, **kwargs) -> Model:
    """`build(*args, **kwargs)` on the meta device: the structure (names, shapes) without allocating weights."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    """Each tensor's shape, by name (of a state dict, or of `model.state_dict()`)."""
    return {name: tensor.shape for name, tensor in state.items()}


@dataclass(frozen=True)
class StateMismatch:
    """How a state dict differs from what a model needs; each caller words it for its own context."""

    missing: list[str]  # needed, absent
    unexpected: list[str]  # present, needed by nothing
    misshaped: list[tuple[str, torch.Size, torch.Size]]  # (name, shape found, shape needed)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)


def state_mismatch(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor],
                   optional: frozenset[str] = frozenset()) -> StateMismatch:
    """Compare `state` with the names and shapes a model `expected`; names in `optional` may be absent."""
    return StateMismatch(
        missing=[name for name in expected if name not in state and name not in optional],
        unexpected=[name for name in state if name not in expected],
        misshaped=[(name, state[name].shape, shape) for name, shape in expected.items()
                   if name in state and state[name].shape != shape])
