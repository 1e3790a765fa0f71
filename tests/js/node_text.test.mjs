// web/node_text.js: which GoT nodes show their text, and which text. Run: node --test tests/js/*.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { shownText, textKind } from "../../web/node_text.js";

test("every GoT node shows its text; the reasoners as prose, the editor in its own view", () => {
  assert.equal(textKind({ name: "GoTJudge", category: "GoT/judge" }), "text");
  assert.equal(textKind({ name: "GoTReflectionRound", category: "GoT/judge" }), "text");
  assert.equal(textKind({ name: "GoTReasoner", category: "GoT/reasoning" }), "prose");
  assert.equal(textKind({ name: "GoTNextTurn", category: "GoT/reasoning" }), "prose");
  assert.equal(textKind({ name: "GoTPlanEditor", category: "GoT/reasoning" }), null);
  assert.equal(textKind({ name: "SaveImage", category: "image" }), null);
  assert.equal(textKind(undefined), null);
});

test("the text of an executed message", () => {
  assert.equal(shownText({ text: ["0: 0.4821 #1", "1: 0.4790 #2"] }), "0: 0.4821 #1\n1: 0.4790 #2");
  assert.equal(shownText({ text: [] }), null);
  assert.equal(shownText({ images: [] }), null);
  assert.equal(shownText(null), null);
  assert.equal(shownText({ text: [3, "round 0"] }), "round 0");
});
