"""The node helpers between ComfyUI's conventions and got_backend's: image layout, text on the node, the size
widget and the VAE encode callable.

- Images: ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; the backend takes [B, C, H, W].
- VAE: got_backend.ssgm.latents wants `encode(pixels [B,3,H,W] in [-1,1]) -> unscaled VAE mode`; ComfyUI's
  `VAE.encode` takes [B,H,W,C] in [0,1] and returns exactly that kind of latent (its SDXL VAE regulariser takes
  the distribution's mode and leaves scaling to the model's `process_latent_in`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils

from ..got_backend.errors import GoTError
from ..got_backend.images import ImageInputError, check_rgb_batch, check_rgb_image
from ..got_backend.ssgm.sizes import LATENT_FACTOR, MAX_SIDE, MIN_WIDGET_SIDE


class WidgetValueError(GoTError):
    """A number outside its widget's range (or NaN/infinite) or a choice not among a Combo's, typically from a link
    or an edited workflow file."""


def checked_images(images: torch.Tensor, what: str, *, one: bool = False) -> torch.Tensor:
    """An IMAGE input [B, H, W, C] as given, checked by the backend's one image validator (at least one RGB image
    of finite values in [0, 1]; with `one`, exactly one): every IMAGE a GoT node takes passes here. The error
    names `what` (the node and its input)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageInputError(f"{what}: expected a ComfyUI IMAGE batch [B, H, W, 3], got {shape}")
    try:
        (check_rgb_image if one else check_rgb_batch)(images.movedim(-1, 1))
    except ImageInputError as err:
        raise ImageInputError(f"{what}: {err}") from err
    return images


class LatentInputError(GoTError):
    """A LATENT input that is not ComfyUI's {"samples": [B, C, H, W]} of finite values."""


def checked_latent(latent: object, what: str) -> torch.Tensor:
    """The samples of a LATENT input: ComfyUI's dict whose "samples" is a batch [B, C, H, W] of at least one finite
    latent. Every LATENT a GoT node takes passes here; the error names `what` (the node and its input)."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or not samples.is_floating_point():
        got = (f"samples of shape {list(samples.shape)} ({samples.dtype})" if isinstance(samples, torch.Tensor)
               else f"keys {sorted(latent)}" if isinstance(latent, dict) else type(latent).__name__)
        raise LatentInputError(f"{what}: expected a ComfyUI LATENT (a dict whose 'samples' is a float tensor "
                               f"[B, C, H, W]), got {got}: connect a node that outputs a LATENT")
    if samples.shape[0] == 0:
        raise LatentInputError(f"{what}: the latent batch is empty (it holds no latent): connect a node that gives "
                               "at least one")
    if not torch.isfinite(samples).all():
        raise LatentInputError(f"{what}: the latent holds NaN or infinite values: check the node that made it (an "
                               "fp16 VAE can overflow)")
    return samples


def comfy_image(image: torch.Tensor | None, what: str) -> torch.Tensor | None:
    """One IMAGE input, checked (`checked_images`), as the backend's [1, C, H, W]; None stays None."""
    return None if image is None else checked_images(image, what, one=True).movedim(-1, 1)


def show_on_node(node_id: str | None, text: str) -> None:
    """Text on the node in the frontend (its progress-text preview); nothing when run outside a prompt."""
    if node_id is not None:
        from server import PromptServer  # imported late: only a running ComfyUI server has an instance

        PromptServer.instance.send_progress_text(text, node_id)


@contextlib.contextmanager
def cancellable_forward(model: torch.nn.Module, depth: int | None = None):
    """Cancel checked before every layer of `model` while inside (down to `depth` levels of submodules; None: every
    one): one VAE pass or UNet step at 1024x1024 takes seconds on a CPU, so a check between calls is too coarse.
    The UNet takes depth 2 (its blocks: a few dozen checks a step, nothing measurable on a GPU)."""
    def check(_module, _args) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    handles = [module.register_forward_pre_hook(check) for module in _submodules(model, depth)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _submodules(model: torch.nn.Module, depth: int | None) -> list[torch.nn.Module]:
    if depth is None:
        return list(model.modules())
    level, found = [model], [model]
    for _ in range(depth):
        level = [child for module in level for child in module.children()]
        found += level
    return found


def vae_encode_fn(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """got_backend.ssgm.latents' `encode` callable over a ComfyUI VAE: [B,3,H,W] in [-1,1] -> unscaled mode latent."""
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with cancellable_forward(vae.first_stage_model):
            return vae.encode(((pixels + 1.0) / 2.0).movedim(1, -1))
    return encode


def size_input(name: str, purpose: str) -> io.Int.Input:
    """An output-size widget (docs/ALGORITHM.md §9: 1024 by default), in steps of 8 like the core Empty Latent Image."""
    return io.Int.Input(name, default=1024, min=MIN_WIDGET_SIDE, max=MAX_SIDE, step=LATENT_FACTOR,
                        tooltip=f"Output image {name} in pixels (GoT renders 1024x1024); {purpose}")


def check_widget_number(node: str, name: str, value: object, low: float, high: float, *,
                        integer: bool = False) -> None:
    """`value` as the widget allows it: a finite number (a whole one if `integer`) from `low` to `high`. ComfyUI
    checks a typed widget value against min/max (but lets NaN through) and a linked value not at all."""
    kind = "whole number" if integer else "finite number"
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not number or not math.isfinite(value) or not low <= value <= high:
        raise WidgetValueError(f"{node}: {name} is {value!r}, but it must be a {kind} from {low:g} to {high:g} (the "
                               f"widget's range): set it in that range, or fix the node linked to {name}")


def queue_time_check(check: Callable[[object], object], value: object | None) -> bool | str:
    """A validate_inputs answer for one typed value: True, or the message of the GoTError `check` raises. None is
    a value from a link, checked when the node runs."""
    try:
        if value is not None:
            check(value)
    except GoTError as err:
        return str(err)
    return True


def choice_error(name: str, value: object, allowed: Sequence[str]) -> str | None:
    """Why `value` is not one of a Combo's choices (None when it is). ComfyUI 0.3.64 does not check a V3 Combo's
    value, so a workflow file could name anything."""
    if value in allowed:
        return None
    return f"{name} {value!r} is not one of the choices ({', '.join(allowed) or 'none found'})"


def check_widget_choice(node: str, name: str, value: object, allowed: Sequence[str]) -> None:
    """`value` as the Combo allows it, checked when the node runs (before anything loads)."""
    error = choice_error(name, value, allowed)
    if error is not None:
        raise WidgetValueError(f"{node}: {error}: pick one on the node, or fix the node linked to {name}")


def cancellable_progress(node_id: str | None = None) -> Callable[[int, int], None]:
    """A (done, total) callback for work in batches: Cancel takes effect at the next batch, and the node's
    progress bar shows how far it is."""
    bars: list[comfy.utils.ProgressBar] = []

    def on_batch(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bars:
            bars.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bars[0].update_absolute(done, total)
    return on_batch
