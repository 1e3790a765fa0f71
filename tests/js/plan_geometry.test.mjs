// web/plan_geometry.js against tests/plan_cases.json (which tests/test_plan_cases.py checks against
// got_backend), plus the editor-only operations. Run: node --test tests/js/*.test.mjs (or tests/test_js_units.py)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  addObject, boxToPixels, ChainError, formatObject, hitTest, moveBox, parseChain, pixelExtent, pixelToGrid,
  pixelsToGridDistance, prose, removeObject, resizeBox, withObject, BOX_START, IMAGE_START,
} from "../../web/plan_geometry.js";

const CASES = JSON.parse(readFileSync(new URL("../plan_cases.json", import.meta.url), "utf8"));
// Python counts code points, JavaScript UTF-16 units.
const codePoints = (text, units) => [...text.slice(0, units)].length;

for (const c of CASES.chains) {
  test(`chain: ${c.name}`, () => {
    const chain = parseChain(c.text);
    const got = chain.objects.map((o) => ({ phrase: o.phrase, box: o.box, color: o.color,
      span: o.span.map((u) => codePoints(c.text, u)), notes: o.notes }));
    assert.deepEqual(got, c.objects);
    assert.deepEqual(chain.issues.map((u) => codePoints(c.text, u)), c.issues);
  });
}

for (const c of CASES.edits) {
  test(`edit: ${c.name}`, () => {
    if (c.expected === null) {
      assert.throws(() => withObject(c.text, c.index, c.changes), ChainError);
    } else {
      assert.equal(withObject(c.text, c.index, c.changes), c.expected);
    }
  });
}

for (const c of CASES.pixels) {
  test(`pixels: ${c.box} on ${c.width}x${c.height}`, () => {
    assert.deepEqual(boxToPixels(c.box, c.width, c.height), c.corners);
    assert.deepEqual(pixelExtent(c.box, c.width, c.height), c.extent);
  });
}

for (const c of CASES.drags) {
  test(`drag: ${c.box} by (${c.dx},${c.dy}) px on ${c.width}x${c.height}`, () => {
    const moved = moveBox(c.box, pixelsToGridDistance(c.dx, c.width), pixelsToGridDistance(c.dy, c.height));
    assert.deepEqual(moved, c.moved);
  });
}

test("moving a box changes only that box's numbers in the text", () => {
  const text = CASES.edits[0].text;
  const box = parseChain(text).objects[0].box;
  const edited = withObject(text, 0, { box: moveBox(box, 7, -3) });
  const diff = [...edited].filter((ch, i) => ch !== text[i]);
  assert.ok(diff.every((ch) => /[0-9]/.test(ch)), `non-digit changed: ${diff}`);
  assert.deepEqual(parseChain(edited).objects[0].box, [107, 297, 487, 797]);
  assert.deepEqual(parseChain(edited).objects[1], parseChain(text).objects[1]);
});

test("the inverse rounding gives back every grid value on a canvas of 1000 px or more", () => {
  for (const size of [1000, 1024, 1216, 2048]) {
    for (let g = 0; g <= 1000; g += 1) {
      assert.equal(pixelToGrid(boxToPixels([g, g, g, g], size, size)[0], size), g);
    }
  }
  for (const size of [64, 96, 333]) {  // smaller: the nearest grid value, never off the grid
    for (let p = -5; p <= size + 5; p += 0.5) {
      const g = pixelToGrid(p, size);
      assert.ok(Number.isInteger(g) && g >= 0 && g <= 1000);
      if (p >= 0 && p <= size) assert.ok(Math.abs(g / 1000 * size - p) <= size / 2000 + 1e-9);
    }
  }
});

test("moves stop at the grid's edges and keep the size; resizes snap and reorder", () => {
  assert.deepEqual(moveBox([100, 100, 300, 200], -500, 2000), [0, 900, 200, 1000]);
  assert.deepEqual(moveBox([100, 100, 300, 200], 0.4, 0.6), [100, 101, 300, 201]);
  assert.deepEqual(resizeBox([100, 100, 300, 200], "se", 400.4, 250.6), [100, 100, 400, 251]);
  assert.deepEqual(resizeBox([100, 100, 300, 200], "w", 350, 0), [300, 100, 350, 200]);
  assert.deepEqual(resizeBox([100, 100, 300, 200], "n", 0, -20), [100, 0, 300, 200]);
});

test("hit testing finds the topmost box, its edges and corners", () => {
  const objects = [{ box: [0, 0, 500, 500] }, { box: [400, 400, 600, 600] }];
  assert.deepEqual(hitTest(objects, 450, 450, 5), { index: 1, handle: "move" });
  assert.deepEqual(hitTest(objects, 100, 100, 5), { index: 0, handle: "move" });
  assert.deepEqual(hitTest(objects, 602, 598, 5), { index: 1, handle: "se" });
  assert.deepEqual(hitTest(objects, 250, 2, 5), { index: 0, handle: "n" });
  assert.equal(hitTest(objects, 800, 100, 5), null);
});

test("add and remove objects", () => {
  const text = CASES.edits[0].text;
  const added = addObject(text, { phrase: "knife", box: [10, 20, 30, 40], color: "gray" });
  assert.ok(added.endsWith(`. ${formatObject({ phrase: "knife", box: [10, 20, 30, 40], color: "gray" })}${IMAGE_START}`));
  assert.equal(parseChain(added).objects.length, 3);
  const removed = removeObject(added, 2);
  assert.equal(removed, text);
  const first = removeObject(text, 0);
  assert.equal(parseChain(first).objects.length, 1);
  assert.ok(first.startsWith("A and a "));
  assert.throws(() => addObject(text, { phrase: "x", box: [5, 5, 1, 1], color: "red" }), ChainError);
});

test("prose: phrases as objects, markup left out, an unfinished box pending", () => {
  const pieces = prose(CASES.edits[0].text);
  assert.deepEqual(pieces.map((p) => p.text ?? p.object.phrase), ["A ", "red apple", " and a ", "green pear", "."]);
  const streaming = prose(`A <|object_ref_start|>cat<|object_ref_end|>${BOX_START}(100,3`);
  assert.deepEqual(streaming, [{ text: "A cat" }, { pending: true }]);
  assert.deepEqual(prose("A <|object_ref_sta"), [{ text: "A " }]);
});
