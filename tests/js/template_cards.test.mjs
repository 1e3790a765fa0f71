// web/template_cards.js: the pack's template cards in the order an artist needs them, each saying when to use it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { TEMPLATES, describe, describeCards, ordered, templateOf } from "../../web/template_cards.js";

test("text-to-image comes first, and every template says when to use it (not its title again)", () => {
  assert.equal(TEMPLATES[0][0], "GoT text-to-image");
  for (const [name, description] of TEMPLATES) {
    assert.ok(description.length > 60 && !description.includes(name), name);
    assert.equal(describe(name), description);
  }
});

test("the pack's list is put in that order; other packs and unknown names are left as they were", () => {
  const server = { comfyui_got: ["GoT best of N, then reflect", "zzz mine", "GoT text-to-image", "GoT image editing"],
                   other_pack: ["b", "a"] };
  const got = ordered(server, "comfyui_got");
  assert.deepEqual(got.comfyui_got, ["GoT text-to-image", "GoT image editing", "GoT best of N, then reflect", "zzz mine"]);
  assert.deepEqual(got.other_pack, ["b", "a"]);
  assert.equal(ordered({ other_pack: ["b"] }, "comfyui_got").comfyui_got, undefined);
  assert.deepEqual(server.comfyui_got[0], "GoT best of N, then reflect");  // the server's answer is not changed
});

function shown(...texts) {
  return texts.map((text) => ({ text, done: false, added: null, set(value) { this.text = value; },
                                after(value) { this.added = value; }, markDone() { this.done = true; } }));
}

test("1.27's cards: the last of a template's two names becomes its description (with spaces, as 1.58 writes)", () => {
  const cards = shown("GoT think, plan, render", "GoT think, plan, render", "2 min", "GoT text-to-image",
                      "GoT text to image", "Image Generation", "Image Generation");
  assert.deepEqual(describeCards(cards), ["GoT think, plan, render", "GoT text-to-image"]);
  assert.deepEqual(cards.map((c) => c.text), ["GoT think, plan, render", describe("GoT think, plan, render"), "2 min",
    "GoT text-to-image", describe("GoT text-to-image"), "Image Generation", "Image Generation"]);
  assert.ok(cards.every((c) => c.added === null));
  assert.deepEqual(describeCards(cards), []);  // described cards are left alone
});

test("1.58's cards: a title shown alone gets its description after it, once", () => {
  const cards = shown("Node graph", "GoT image editing", "Node graph", "GoT best of N, then reflect");
  assert.deepEqual(describeCards(cards), ["GoT image editing", "GoT best of N, then reflect"]);
  assert.equal(cards[1].added, describe("GoT image editing"));
  assert.equal(cards[1].text, "GoT image editing");
  assert.deepEqual(describeCards(cards), []);
  assert.equal(templateOf("GoT text to image"), "GoT text-to-image");
  assert.equal(templateOf("Image Generation"), null);
});
