"""Guidance: the formula of docs/ALGORITHM.md §9, its branch weights, and skipping branches of weight zero."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from got_backend.ssgm.guidance import (BRANCH_INPUTS, BRANCHES, EDIT_SCALES, T2I_SCALES, GuidanceError, GuidanceScales,
                                  branch_weights, combine_branches, combine_got_cfg, needed_branches)


def random_eps(seed: int, shape: tuple = (2, 4, 8, 8), dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator).to(dtype) for name in BRANCHES}


def test_formula_on_known_values() -> None:
    c, t, i, u = (torch.tensor([v]) for v in (1.0, 2.0, 4.0, 8.0))
    # 8 + 7.5 * (2 - 4) + 4 * (1 - 2) + 1 * (4 - 8)
    assert combine_got_cfg(c, t, i, u, 7.5, 4.0, 1.0).item() == 8 - 15 - 4 - 4
    assert combine_got_cfg(c, t, i, u, 1.0, 1.0, 1.0).item() == 1.0  # all scales 1: the fully conditioned branch


def test_default_scales() -> None:
    assert T2I_SCALES == (7.5, 4.0, 1.0) and EDIT_SCALES == (4.0, 3.0, 1.5)
    assert T2I_SCALES.text == 7.5 and EDIT_SCALES.reference == 1.5
    assert branch_weights(*T2I_SCALES) == {"C": 4.0, "T": 3.5, "I": -6.5, "U": 0.0}
    assert needed_branches(*T2I_SCALES) == ("C", "T", "I")
    assert needed_branches(*EDIT_SCALES) == ("C", "T", "I", "U")
    assert needed_branches(4.0, 4.0, 4.0) == ("C", "U")
    assert needed_branches(0.0, 0.0, 1.0) == ("I",)


@settings(max_examples=200, deadline=None)
@given(st.floats(-20, 20), st.floats(-20, 20), st.floats(-20, 20), st.integers(0, 2**31 - 1))
def test_weights_and_needed_branches_equal_the_formula(a_t: float, a_s: float, a_r: float, seed: int) -> None:
    eps = random_eps(seed)
    reference = combine_got_cfg(eps["C"], eps["T"], eps["I"], eps["U"], a_t, a_s, a_r)
    weights = branch_weights(a_t, a_s, a_r)
    assert sum(weights.values()) == pytest.approx(1.0)
    needed = needed_branches(a_t, a_s, a_r)
    only_needed = {name: eps[name] for name in needed}
    scale = 1 + abs(a_t) + abs(a_s) + abs(a_r)
    assert torch.allclose(combine_branches(only_needed, a_t, a_s, a_r), reference, atol=2e-6 * scale, rtol=1e-5)
    assert torch.allclose(combine_branches(eps, a_t, a_s, a_r), reference, atol=2e-6 * scale, rtol=1e-5)


@pytest.mark.parametrize("scales", [T2I_SCALES, EDIT_SCALES, (1.0, 1.0, 1.0), (5.0, 5.0, 5.0)])
def test_combine_branches_with_defaults(scales: tuple) -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        eps = random_eps(3, dtype=dtype)
        reference = combine_got_cfg(*(eps[n].double() for n in BRANCHES), *scales)
        needed = {name: eps[name] for name in needed_branches(*scales)}
        combined = combine_branches(needed, *scales)
        assert combined.dtype == dtype and combined.shape == (2, 4, 8, 8)
        tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-1}[dtype]
        assert torch.allclose(combined.double(), reference, atol=tolerance)


def test_missing_branch_is_an_error() -> None:
    eps = random_eps(0)
    del eps["I"]
    with pytest.raises(GuidanceError, match=r"need the branch predictions C, T, I, but I is missing"):
        combine_branches(eps, *T2I_SCALES)
    del eps["U"]
    with pytest.raises(GuidanceError, match="I, U are missing"):
        combine_branches(eps, *EDIT_SCALES)


def test_branch_inputs_table() -> None:
    table = {name: (b.context, b.reference, b.spatial) for name, b in BRANCH_INPUTS.items()}
    assert table == {"C": ("c", True, True), "T": ("c", True, False), "I": ("c0", True, False),
                     "U": ("c0", False, False)}
    assert tuple(BRANCH_INPUTS) == BRANCHES


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "7.5", None])
def test_render_settings_refuse_a_scale_that_is_not_a_finite_number(bad) -> None:
    from got_backend.pipeline import RenderSettings

    with pytest.raises(GuidanceError, match=r"a_r is .* must be a finite number"):
        RenderSettings(width=64, height=64, scales=GuidanceScales(7.5, 4.0, bad))
    assert RenderSettings(width=64, height=64, scales=GuidanceScales(-30, 0, 30)).scales == (-30, 0, 30)
