"""tests/plan_cases.json against got_backend: the plan editor's geometry module (web/plan_geometry.js, checked
against the same file by tests/js) and the backend read, write and draw every box the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from got_backend.ssgm.chain import ChainError, parse_chain
from got_backend.ssgm.layout import box_to_pixels, pixel_extent

CASES = json.loads((Path(__file__).parent / "plan_cases.json").read_text())


def case_id(case: dict) -> str:
    return case.get("name") or json.dumps(case["box"])


@pytest.mark.parametrize("case", CASES["chains"], ids=case_id)
def test_chain_reads_as_the_case_says(case):
    chain = parse_chain(case["text"])
    got = [{"phrase": o.phrase, "box": list(o.box), "color": o.color, "span": list(o.span), "notes": list(o.notes)}
           for o in chain.objects]
    assert got == case["objects"]
    assert [issue.position for issue in chain.issues] == case["issues"]


@pytest.mark.parametrize("case", CASES["edits"], ids=case_id)
def test_edit_writes_what_the_case_says(case):
    changes = {key: tuple(value) if key == "box" else value for key, value in case["changes"].items()}
    chain = parse_chain(case["text"])
    if case["expected"] is None:
        with pytest.raises(ChainError):
            chain.with_object(case["index"], **changes)
        return
    edited = chain.with_object(case["index"], **changes)
    assert edited.text == case["expected"]
    before, after = chain.objects[case["index"]], edited.objects[case["index"]]
    assert edited.text[:before.span[0]] == case["text"][:before.span[0]]  # the text before the object is kept
    assert edited.text[after.span[1]:] == case["text"][before.span[1]:]  # and the text after it


@pytest.mark.parametrize("case", CASES["pixels"], ids=case_id)
def test_box_pixels_are_what_the_case_says(case):
    box, width, height = tuple(case["box"]), case["width"], case["height"]
    assert list(box_to_pixels(box, width, height)) == case["corners"]
    assert list(pixel_extent(box, width, height)) == case["extent"]


@pytest.mark.parametrize("case", CASES["drags"], ids=case_id)
def test_a_drag_moves_the_drawn_box_by_the_dragged_pixels(case):
    """The layout the backend draws from the dragged box moved by the drag on a canvas of the same size, to
    within the one pixel of the 0..1000 grid's rounding (or stopped at the canvas edge)."""
    before = pixel_extent(tuple(case["box"]), case["width"], case["height"])
    after = pixel_extent(tuple(case["moved"]), case["width"], case["height"])
    for axis, drag, size in ((0, case["dx"], case["width"]), (1, case["dy"], case["height"])):
        start, end = before[axis], before[axis + 2]
        if 0 <= start + drag and end + drag <= size:  # not stopped at the canvas edge
            assert abs(after[axis] - start - drag) <= 1 + size / 1000, (axis, after, before, drag)
        assert abs((after[axis + 2] - after[axis]) - (end - start)) <= 1  # the size is kept
