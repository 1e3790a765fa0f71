"""The chain parser against the reference's own regex (the oracle), on examples and on fuzzed text."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from got_backend.ssgm.chain import ChainError, GoTChain, GoTObject, format_chain, format_object, parse_chain

# The reference's box regex, written out here as the oracle.
REFERENCE_BOX = re.compile(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|> \((\w+)\)")

ORS, ORE, BS, BE = "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"
SPEC_EXAMPLE = (
    "A <|object_ref_start|>golden retriever<|object_ref_end|><|box_start|>(128,96),(640,999)<|box_end|> (red) "
    "sits beside a <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(652,759),(909,999)<|box_end|> (blue)."
)
fuzz_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_int(digits: str) -> int:
    """int(digits) as the reference reads it (for 4300+ digit numbers, which Python refuses, any value > 1000)."""
    if len(digits) < 4000:
        return int(digits)
    significant = digits.lstrip("0")
    return 1001 if len(significant) > 4 else int(significant or "0")


def box_position(text: str, obj: GoTObject) -> int:
    return text.find(BS, obj.span[0])


def assert_matches_reference(text: str, chain: GoTChain) -> None:
    """Every reference match is reported with its numbers and colour; every other coloured object exists only
    because of a whitespace variant the reference does not read."""
    by_position = {box_position(text, obj): obj for obj in chain.objects}
    reference_positions = set()
    for match in REFERENCE_BOX.finditer(text):
        reference_positions.add(match.start())
        obj = by_position.get(match.start())
        assert obj is not None, f"reference box at {match.start()} not reported"
        numbers = [reference_int(v) for v in match.group(1, 2, 3, 4)]
        x1, y1, x2, y2 = (min(v, 1000) for v in numbers)
        assert obj.box == (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        assert obj.color == match.group(5)
        assert ("corners_reordered" in obj.notes) == (x1 > x2 or y1 > y2)
        assert ("clamped_1000" in obj.notes) == any(v > 1000 for v in numbers)
    for obj in chain.colored:
        if box_position(text, obj) not in reference_positions:
            assert "spaces_normalised" in obj.notes, obj


def test_spec_example() -> None:
    chain = parse_chain(SPEC_EXAMPLE)
    assert [(o.phrase, o.box, o.color, o.notes) for o in chain.objects] == [
        ("golden retriever", (128, 96, 640, 999), "red", ()),
        ("red ball", (652, 759, 909, 999), "blue", ()),
    ]
    assert SPEC_EXAMPLE[slice(*chain.objects[1].span)] == (
        "<|object_ref_start|>red ball<|object_ref_end|><|box_start|>(652,759),(909,999)<|box_end|> (blue)")
    assert format_chain(chain) == SPEC_EXAMPLE
    assert chain.issues == []
    assert_matches_reference(SPEC_EXAMPLE, chain)


@pytest.mark.parametrize(("text", "box", "color", "notes"), [
    (f"{BS}( 1 , 2 ) , (3,\t4){BE} (red)", (1, 2, 3, 4), "red", ("spaces_normalised",)),
    (f"{BS}(1,2),(3,4){BE}(red)", (1, 2, 3, 4), "red", ("spaces_normalised",)),
    (f"{BS}(1,2),(3,4){BE}  ( red )", (1, 2, 3, 4), "red", ("spaces_normalised",)),
    (f"{BS}(1,2),(3,4){BE}", (1, 2, 3, 4), None, ("no_color",)),
    (f"{BS}(1,2),(3,4){BE} (light blue)", (1, 2, 3, 4), None, ("no_color",)),
    (f"{BS}(500,600),(100,200){BE} (red)", (100, 200, 500, 600), "red", ("corners_reordered",)),
    (f"{BS}(100,600),(500,200){BE} (red)", (100, 200, 500, 600), "red", ("corners_reordered",)),
    (f"{BS}(0,0),(1000,1000){BE} (red)", (0, 0, 1000, 1000), "red", ()),
    (f"{BS}(10,20),(1001,99999999999999999999){BE} (red)", (10, 20, 1000, 1000), "red", ("clamped_1000",)),
    (f"{BS}(0{'0' * 10000}7,2),(3,4){BE} (red)", (3, 2, 7, 4), "red",
     ("digits_normalised", "corners_reordered")),
    (f"{BS}(1{'0' * 10000},2),(3,4){BE} (red)", (3, 2, 1000, 4), "red", ("clamped_1000", "corners_reordered")),
    (f"{BS}(٣,2),(3,٤){BE} (red)", (3, 2, 3, 4), "red", ("digits_normalised", "zero_area")),
    (f"{BS}(5,5),(5,9){BE} (red)", (5, 5, 5, 9), "red", ("zero_area",)),
])
def test_variants(text: str, box: tuple, color: str | None, notes: tuple) -> None:
    chain = parse_chain(text)
    assert len(chain.objects) == 1
    obj = chain.objects[0]
    assert (obj.phrase, obj.box, obj.color, obj.notes) == (None, box, color, notes)
    assert obj.span == (0, len(text) - (len(" (light blue)") if "light" in text else 0))
    assert_matches_reference(text, chain)


def test_phrases() -> None:
    text = f"a {ORS}dog{ORE}  {BS}(1,2),(3,4){BE} (red) and {ORS}cat{ORE}{BS}(5,6),(7,8){BE}{BS}(9,9),(10,10){BE} (blue)"
    chain = parse_chain(text)
    assert [(o.phrase, o.color) for o in chain.objects] == [("dog", "red"), ("cat", None), (None, "blue")]
    assert chain.objects[0].span[0] == 2 and "spaces_normalised" in chain.objects[0].notes
    # A phrase is only the reference right before its box, never one that holds other markup.
    assert parse_chain(f"{ORS}a{BS}{ORE}{BS}(1,2),(3,4){BE}").objects[0].phrase is None
    assert parse_chain(f"{ORS}dog{ORE} x {BS}(1,2),(3,4){BE}").objects[0].phrase is None
    assert parse_chain(f"{ORS}{ORE}{BS}(1,2),(3,4){BE}").objects[0].phrase == ""


def test_malformed_boxes_are_issues_or_errors() -> None:
    text = f"x {BS}(1,2),(3){BE} (red) y {BS}(1,2),(3,4){BE} (red) {BS}(-1,2),(3,4){BE} {BS}(1,2"
    chain = parse_chain(text)
    assert [o.box for o in chain.objects] == [(1, 2, 3, 4)]
    assert [i.position for i in chain.issues] == [2, text.index(f"{BS}(-1"), text.rindex(BS)]
    assert "never closed" in chain.issues[2].reason
    with pytest.raises(ChainError) as err:
        parse_chain(text, strict=True)
    assert err.value.position == 2 and "at character 2" in str(err.value) and "(x1,y1),(x2,y2)" in str(err.value)
    with pytest.raises(ChainError, match="got bytes"):
        parse_chain(b"abc")  # type: ignore[arg-type]


def test_with_object() -> None:
    chain = parse_chain(SPEC_EXAMPLE)
    moved = chain.with_object(1, box=(10, 20, 30, 40), color="green")
    assert [(o.phrase, o.box, o.color) for o in moved.objects] == [
        ("golden retriever", (128, 96, 640, 999), "red"), ("red ball", (10, 20, 30, 40), "green")]
    assert moved.text == SPEC_EXAMPLE.replace("(652,759),(909,999)<|box_end|> (blue)", "(10,20),(30,40)<|box_end|> (green)")
    renamed = chain.with_object(0, phrase="puppy", color=None)
    assert renamed.objects[0].phrase == "puppy" and renamed.objects[0].color is None
    assert renamed.text.startswith(f"A {ORS}puppy{ORE}{BS}(128,96),(640,999){BE} sits")
    untouched = parse_chain(f"{ORS}a{ORE} {BS}( 1,2),(3,4){BE} (red) {BS}(5,6),(7,8){BE} (blue)").with_object(1, color="red")
    assert untouched.text == f"{ORS}a{ORE} {BS}( 1,2),(3,4){BE} (red) {BS}(5,6),(7,8){BE} (red)"
    for bad in [dict(box=(5, 5, 1, 1)), dict(box=(0, 0, 1001, 5)), dict(box=(0, 0, 1.5, 5)), dict(color="light blue"),
                dict(phrase=f"a{BE}b"), dict(color="")]:
        with pytest.raises(ChainError):
            chain.with_object(0, **bad)
    with pytest.raises(ChainError, match="no object 2"):
        chain.with_object(2, color="red")
    # Removing a colour that is followed by "(word)" text cannot be written: the word would become the colour.
    with pytest.raises(ChainError, match="read it differently"):
        parse_chain(f"{BS}(1,2),(3,4){BE} (red)(blue)").with_object(0, color=None)


# --- fuzzing -----------------------------------------------------------------------------------------------------

SPECIALS = [ORS, ORE, BS, BE, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_gen_start|>",
            "<|endoftext|>", "<|", "|>", "<"]
fragments = st.one_of(
    st.sampled_from(SPECIALS),
    st.sampled_from(["(", ")", ",", " ", "\t", "\n", "),(", " (", "(red)", " (blue)", "1000", "0", "999"]),
    st.text("0123456789", min_size=1, max_size=6),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=3),
    st.sampled_from(["red", "blue", "light", "dog", "Ünïcode", "x_1"]),
    st.text(max_size=4),
)
fuzz_text = st.lists(fragments, max_size=40).map("".join)


def reference_box_text(draw: st.DrawFn) -> str:
    numbers = [draw(st.integers(0, 1200)) for _ in range(4)]
    return f"{BS}({numbers[0]},{numbers[1]}),({numbers[2]},{numbers[3]}){BE}"


@st.composite
def boxy_text(draw: st.DrawFn) -> str:
    """Text that holds many well-formed or nearly well-formed boxes among fuzz."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        pieces.append(draw(fuzz_text))
        if draw(st.booleans()):
            pieces.append(f"{ORS}{draw(st.text(max_size=5))}{ORE}" + draw(st.sampled_from(["", " "])))
        pieces.append(reference_box_text(draw))
        pieces.append(draw(st.sampled_from(["", " (red)", " (Blue)", "(red)", "  (x_2)", " ( teal )", " (light blue)"])))
    return "".join(pieces)


@fuzz_settings
@given(st.one_of(fuzz_text, boxy_text()))
def test_fuzz_never_crashes_and_agrees_with_reference(text: str) -> None:
    chain = parse_chain(text)
    assert_matches_reference(text, chain)
    for obj in chain.objects:
        x1, y1, x2, y2 = obj.box
        assert 0 <= x1 <= x2 <= 1000 and 0 <= y1 <= y2 <= 1000
        assert text[obj.span[0]:obj.span[1]].count(BS) == 1
    spans = [obj.span for obj in chain.objects]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    try:
        strict = parse_chain(text, strict=True)
    except ChainError as err:
        assert err.position in [issue.position for issue in chain.issues]
    else:
        assert strict == chain and chain.issues == []
    # Formatting normalises without changing what the chain says, and is then a fixed point.
    canonical = parse_chain(format_chain(chain))
    assert [(o.phrase, o.box, o.color) for o in canonical.objects] == [(o.phrase, o.box, o.color) for o in chain.objects]
    assert format_chain(canonical) == format_chain(chain)
    assert parse_chain(format_chain(canonical)) == canonical


phrases = st.none() | st.text(max_size=8).filter(lambda p: not any(t in p for t in (ORS, ORE, BS, BE)))
colors = st.none() | st.from_regex(r"\w{1,8}", fullmatch=True)
boxes = st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000)).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))
gaps = st.text(st.characters(exclude_characters="<"), max_size=12)


@fuzz_settings
@given(st.lists(st.tuples(gaps, phrases, boxes, colors), max_size=6), gaps)
def test_round_trip_generated_chains(parts: list, tail: str) -> None:
    text, expected = "", []
    for gap, phrase, box, color in parts:
        # A gap must not read as part of its neighbours: as the colour of an uncoloured box before it.
        assume(not (expected and expected[-1][2] is None and re.match(r"[ \t]*\([ \t]*\w+[ \t]*\)", gap)))
        obj = GoTObject(phrase, box, color, (0, 0))
        text += gap
        expected.append((phrase, box, color, (len(text), len(text) + len(format_object(obj)))))
        text += format_object(obj)
    assume(not (expected and expected[-1][2] is None and re.match(r"[ \t]*\([ \t]*\w+[ \t]*\)", tail)))
    text += tail
    chain = parse_chain(text)
    assert [(o.phrase, o.box, o.color, o.span) for o in chain.objects] == expected
    assert format_chain(chain) == text
    assert parse_chain(format_chain(chain)) == chain
    for obj in chain.objects:
        assert set(obj.notes) <= {"zero_area", "no_color"}
