// The pack's template cards in ComfyUI's template browser: which template to use when, text-to-image first.
// ComfyUI lists a custom node's templates by file name only, in the order the server's directory listing gives,
// and both frontends (1.27, 1.58) write that name as the card's description too. This module says, per template,
// when an artist would choose it (TEMPLATES, in the order they are shown), puts the pack's list in that order
// and writes the description into each of the pack's cards. Pure functions, no ComfyUI import (unit-tested in
// tests/js/template_cards.test.mjs); web/template_browser.js connects them to the frontend.

export const TEMPLATES = [
  ["GoT text-to-image",
   "Start here. A prompt becomes a plan (objects with their boxes, shown on the Reasoner) and an image. Use it for " +
   "any new picture."],
  ["GoT image editing",
   "Change a picture you have: load it, write what should change; GoT plans the edit over your image and renders " +
   "it at its aspect ratio."],
  ["GoT interactive generation",
   "Put things where you want them: the plan shows as boxes in the Plan Editor; drag, resize or recolour them and " +
   "queue again (only the render runs again)."],
  ["GoT think, plan, render",
   "For a short or vague prompt: a chat model thinks it through and rewrites it first, then GoT plans and renders " +
   "the rewrite."],
  ["GoT best of N with a judge",
   "When one try is not enough: several candidates, scored by a judge for how well each matches the prompt; the " +
   "best is saved and the scores are charted."],
  ["GoT best of N, then reflect",
   "For the best result at more cost: best of N, then the judge writes a correction and GoT edits the image with " +
   "it (one round; copy the round's nodes for more)."],
];

const DESCRIPTIONS = new Map(TEMPLATES);
const ORDER = new Map(TEMPLATES.map(([name], index) => [name, index]));

export function describe(name) {
  return DESCRIPTIONS.get(name);
}

// The server's template map with this pack's names in TEMPLATES' order (names it does not know go last, as given).
export function ordered(templates, module) {
  const names = templates?.[module];
  if (!Array.isArray(names)) return templates;
  const rank = (name) => ORDER.get(name) ?? TEMPLATES.length;
  const sorted = names.map((name, index) => [name, index]).sort((a, b) => rank(a[0]) - rank(b[0]) || a[1] - b[1]);
  return { ...templates, [module]: sorted.map(([name]) => name) };
}

// The template a card text names: the name itself, or the name as 1.58 writes a description (- and _ as spaces).
export function templateOf(text) {
  const spaced = (value) => value.replace(/[-_]/g, " ").trim();
  return TEMPLATES.find(([name]) => spaced(name) === spaced(text))?.[0] ?? null;
}

// How a card shows its template's description. 1.27 writes the name twice, title then description: the last of
// them gets the description. 1.58 writes the title only: the description goes after it. `texts` are the texts
// shown, in document order, each as {text, done, set(text), after(text), markDone()}; a card already described
// (its title marked done) is left alone. Returns the names described.
export function describeCards(texts) {
  const named = new Map();
  for (const text of texts) {
    const name = templateOf(text.text);
    if (name) named.set(name, [...(named.get(name) ?? []), text]);
  }
  const described = [];
  for (const [name, same] of named) {
    if (same.some((text) => text.done)) continue;
    if (same.length >= 2) same.at(-1).set(describe(name));
    else same[0].after(describe(name));
    same.forEach((text) => text.markDone());
    described.push(name);
  }
  return described;
}
