"""GoT's three-signal classifier-free guidance (docs/ALGORITHM.md §9) and the branch table it is built from.

    eps = eps_U + a_t (eps_T - eps_I) + a_s (eps_C - eps_T) + a_r (eps_I - eps_U)

is a weighted sum of the branches, eps = sum_b w_b eps_b with C: a_s, T: a_t - a_s, I: a_r - a_t, U: 1 - a_r.
A branch of weight 0 need not be run: with the text-to-image defaults (a_r = 1) that is U, a quarter of the
UNet work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from ..errors import GoTError

BRANCHES = ("C", "T", "I", "U")


class GuidanceScales(NamedTuple):
    text: float  # a_t
    spatial: float  # a_s
    reference: float  # a_r


T2I_SCALES = GuidanceScales(7.5, 4.0, 1.0)
SCALE_LIMIT = 30.0  # the GoT Guider's widgets span -30..30, also checked for linked values
EDIT_SCALES = GuidanceScales(4.0, 3.0, 1.5)


@dataclass(frozen=True)
class BranchInputs:
    """What one branch feeds the UNet: the cross-attention context (c, or the null context c0) and whether the
    reference and spatial latents are given (otherwise zeros in their 4 input channels)."""

    context: Literal["c", "c0"]
    reference: bool
    spatial: bool


BRANCH_INPUTS = {
    "C": BranchInputs("c", reference=True, spatial=True),
    "T": BranchInputs("c", reference=True, spatial=False),
    "I": BranchInputs("c0", reference=True, spatial=False),
    "U": BranchInputs("c0", reference=False, spatial=False),
}


class GuidanceError(GoTError):
    """Branch predictions that do not fit the guidance asked for."""


def check_scales(scales: GuidanceScales) -> GuidanceScales:
    """`scales` as three finite numbers (a NaN or infinite scale would make every latent NaN, found only after
    the whole render)."""
    for name, value in zip(("a_t", "a_s", "a_r"), scales):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GuidanceError(f"the guidance scale {name} is {value!r}, but it must be a finite number (GoT's "
                                f"text-to-image scales are {tuple(T2I_SCALES)}, its edit scales {tuple(EDIT_SCALES)})")
    return scales


def combine_got_cfg(eps_c: torch.Tensor, eps_t: torch.Tensor, eps_i: torch.Tensor, eps_u: torch.Tensor,
                    a_t: float, a_s: float, a_r: float) -> torch.Tensor:
    """The reference's guidance formula, term for term."""
    return eps_u + a_t * (eps_t - eps_i) + a_s * (eps_c - eps_t) + a_r * (eps_i - eps_u)


def branch_weights(a_t: float, a_s: float, a_r: float) -> dict[str, float]:
    """The weight of each branch's prediction in the guided prediction."""
    return {"C": a_s, "T": a_t - a_s, "I": a_r - a_t, "U": 1.0 - a_r}


def needed_branches(a_t: float, a_s: float, a_r: float) -> tuple[str, ...]:
    """The branches with a nonzero weight, in the order C, T, I, U (never empty: the weights sum to 1)."""
    weights = branch_weights(a_t, a_s, a_r)
    return tuple(name for name in BRANCHES if weights[name] != 0)


def combine_branches(eps: dict[str, torch.Tensor], a_t: float, a_s: float, a_r: float) -> torch.Tensor:
    """The guided prediction from the needed branches only (others in `eps` are ignored); equals
    combine_got_cfg up to float rounding."""
    weights = branch_weights(a_t, a_s, a_r)
    needed = needed_branches(a_t, a_s, a_r)
    missing = [name for name in needed if name not in eps]
    if missing:
        raise GuidanceError(f"guidance scales a_t={a_t}, a_s={a_s}, a_r={a_r} need the branch predictions "
                            f"{', '.join(needed)}, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                            f"missing; run every branch named by needed_branches()")
    total = weights[needed[0]] * eps[needed[0]]
    for name in needed[1:]:
        total = total + weights[name] * eps[name]
    return total


def cfg_pair(guided: torch.Tensor, cond: torch.Tensor, a_t: float) -> tuple[torch.Tensor, float]:
    """An uncond prediction and a scale s with uncond + s (cond - uncond) = guided, for hooks written for a
    cond/uncond pair (ComfyUI's sampler_cfg_function and post-CFG patches): plain CFG of that pair is GoT's
    guidance. s is a_t, the scale that plays CFG's role (2 where a_t is 1 and no uncond would do)."""
    scale = a_t if abs(a_t - 1.0) > 1e-3 else 2.0
    return (guided - scale * cond) / (1.0 - scale), scale
