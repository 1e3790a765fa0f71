// The one definition of a GoT plan's geometry in the browser: chain text <-> objects <-> canvas pixels.
//
// It reads chain text exactly as got_backend/ssgm/chain.py parse_chain does (the same regex, the same phrase
// rule, the same fixes and notes) and writes an edited object as chain.py format_object / GoTChain.with_object
// do (only that object's text is rewritten, in canonical form). Pixels follow got_backend/ssgm/layout.py:
// x/1000*W, and PIL's inclusive fill of int(x1p)..int(x2p). tests/plan_cases.json holds cases that
// tests/js/plan_geometry.test.mjs and tests/test_plan_cases.py check against this module and against the
// backend, so the two can never disagree on a box. Plain ES module, no DOM: Node's test runner imports it.

export const GRID = 1000;
export const BOX_START = "<|box_start|>";
export const BOX_END = "<|box_end|>";
export const REF_START = "<|object_ref_start|>";
export const REF_END = "<|object_ref_end|>";
export const IMAGE_START = "<|im_gen_start|>";
// Colours GoT's chains use most, offered first; any one-word colour name PIL knows is accepted.
export const PALETTE = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "cyan", "brown", "gray",
  "white", "black"];

const FORBIDDEN_IN_PHRASE = [REF_START, REF_END, BOX_START, BOX_END];
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const SP = "[ \\t]*";
const NUM = `${SP}(\\p{Nd}+)${SP}`;
const POINT = `\\(${NUM},${NUM}\\)`;
// Python's \w on str is [\p{L}\p{N}_] (letters, numbers, underscore; no combining marks).
const WORD = "[\\p{L}\\p{N}_]+";
const BOX_RE = new RegExp(`${escape(BOX_START)}${SP}${POINT}${SP},${SP}${POINT}${SP}${escape(BOX_END)}` +
  `(?:${SP}\\(${SP}(${WORD})${SP}\\))?`, "uy");
const COLOR_RE = new RegExp(`^${WORD}$`, "u");
const ND_RE = /\p{Nd}/u;

export class ChainError extends Error {}

// The value of one Unicode decimal digit: Nd digits come in runs of whole 0..9 blocks.
function digitValue(ch) {
  const code = ch.codePointAt(0);
  let start = code;
  while (start > 0 && ND_RE.test(String.fromCodePoint(start - 1))) start -= 1;
  return (code - start) % 10;
}

// int(digits) capped at GRID + 1 (more than 4 significant digits is above 1000 anyway).
function decimal(digits) {
  const values = [...digits].map(digitValue);
  const first = values.findIndex((v) => v !== 0);
  const significant = first < 0 ? [] : values.slice(first);
  if (significant.length > 4) return GRID + 1;
  return significant.reduce((n, v) => n * 10 + v, 0);
}

function phraseBefore(text, boxStart, floor) {
  let end = boxStart;
  while (end > floor && (text[end - 1] === " " || text[end - 1] === "\t")) end -= 1;
  const refEnd = end - REF_END.length;
  if (refEnd < floor || !text.startsWith(REF_END, refEnd)) return [null, boxStart, false];
  const latest = refEnd - REF_START.length;  // where a REF_START ending by refEnd can begin at the latest
  const refStart = latest < floor ? -1 : text.lastIndexOf(REF_START, latest);
  if (refStart < floor) return [null, boxStart, false];
  const phrase = text.slice(refStart + REF_START.length, refEnd);
  if (FORBIDDEN_IN_PHRASE.some((token) => phrase.includes(token))) return [null, boxStart, false];
  return [phrase, refStart, end !== boxStart];
}

function hasExtraSpaces(boxText, color) {
  let exact = boxText.replace(/[ \t]/g, "");
  if (color !== null) exact = exact.slice(0, exact.length - `(${color})`.length) + ` (${color})`;
  return exact !== boxText;
}

function readObject(text, match, floor) {
  const raw = match.slice(1, 5);
  const values = raw.map((digits) => Math.min(decimal(digits), GRID));
  const digitsChanged = raw.some((d) => /[^0-9]/.test(d) || (d.length > 1 && d.startsWith("0")));
  const clamped = raw.some((d) => decimal(d) > GRID);
  const [x1, y1, x2, y2] = values;
  const box = [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)];
  const color = match[5] ?? null;
  const [phrase, start, phraseSpaced] = phraseBefore(text, match.index, floor);
  const notes = [];
  if (phraseSpaced || hasExtraSpaces(match[0], color)) notes.push("spaces_normalised");
  if (digitsChanged) notes.push("digits_normalised");
  if (clamped) notes.push("clamped_1000");
  if (box.some((v, i) => v !== values[i])) notes.push("corners_reordered");
  if (box[0] === box[2] || box[1] === box[3]) notes.push("zero_area");
  if (color === null) notes.push("no_color");
  return { phrase, box, color, span: [start, match.index + match[0].length], notes };
}

// Every object of `text` ({phrase, box [x1,y1,x2,y2], color, span [start,end) in UTF-16 units, notes}) and the
// positions of <|box_start|> markup that begins no box (`issues`), as got_backend's parse_chain reads them.
export function parseChain(text) {
  if (typeof text !== "string") throw new ChainError(`expected the chain as text, got ${typeof text}`);
  const objects = [];
  const issues = [];
  let floor = 0;
  let pos = text.indexOf(BOX_START);
  while (pos >= 0) {
    BOX_RE.lastIndex = pos;
    const match = BOX_RE.exec(text);
    if (match === null) {
      issues.push(pos);
      pos = text.indexOf(BOX_START, pos + BOX_START.length);
      continue;
    }
    objects.push(readObject(text, match, floor));
    floor = match.index + match[0].length;
    pos = text.indexOf(BOX_START, floor);
  }
  return { text, objects, issues };
}

// The canonical text of one object, as format_object writes it.
export function formatObject({ phrase, box, color }) {
  const ref = phrase === null || phrase === undefined ? "" : `${REF_START}${phrase}${REF_END}`;
  const [x1, y1, x2, y2] = box;
  const tail = color === null || color === undefined ? "" : ` (${color})`;
  return `${ref}${BOX_START}(${x1},${y1}),(${x2},${y2})${BOX_END}${tail}`;
}

function checkObject({ phrase, box, color }) {
  if (!Array.isArray(box) || box.length !== 4 || !box.every(Number.isInteger)) {
    throw new ChainError(`a box is four whole numbers (x1, y1, x2, y2) on the 0..${GRID} grid, got ${box}`);
  }
  if (!box.every((v) => v >= 0 && v <= GRID)) throw new ChainError(`box ${box} leaves the 0..${GRID} grid`);
  if (box[0] > box[2] || box[1] > box[3]) throw new ChainError(`box ${box} is inverted`);
  if (color !== null && (typeof color !== "string" || !COLOR_RE.test(color))) {
    throw new ChainError(`colour ${JSON.stringify(color)} must be one word, such as red or lightblue`);
  }
  if (phrase !== null) {
    if (typeof phrase !== "string") throw new ChainError("a phrase is text");
    const bad = FORBIDDEN_IN_PHRASE.find((token) => phrase.includes(token));
    if (bad) throw new ChainError(`a phrase cannot hold ${bad}`);
  }
}

const same = (a, b) => a.phrase === b.phrase && a.color === b.color && a.box.every((v, i) => v === b.box[i]);

// The chain text with object `index` changed ({phrase?, box?, color?}; null removes a phrase or colour): only
// that object's text is rewritten, canonically; the rest stays as written (GoTChain.with_object).
export function withObject(text, index, changes) {
  const { objects } = parseChain(text);
  if (!Number.isInteger(index) || index < 0 || index >= objects.length) {
    throw new ChainError(`there is no object ${index}; this chain has ${objects.length} objects`);
  }
  const old = objects[index];
  const wanted = { phrase: old.phrase, box: old.box, color: old.color, ...changes };
  checkObject(wanted);
  const edited = text.slice(0, old.span[0]) + formatObject(wanted) + text.slice(old.span[1]);
  const got = parseChain(edited).objects;
  if (got.length !== objects.length || !same(got[index], wanted)) {
    throw new ChainError(`object ${index} cannot be written so: the surrounding text would read it differently`);
  }
  return edited;
}

// The chain text with one more object, written before <|im_gen_start|> (or at the end).
export function addObject(text, object) {
  const wanted = { phrase: null, color: null, ...object };
  checkObject(wanted);
  const at = text.lastIndexOf(IMAGE_START) >= 0 ? text.lastIndexOf(IMAGE_START) : text.length;
  const before = text.slice(0, at);
  const joint = before === "" || /\s$/.test(before) ? "" : " ";
  const edited = `${before}${joint}${formatObject(wanted)}${text.slice(at)}`;
  const { objects } = parseChain(edited);
  if (objects.length !== parseChain(text).objects.length + 1) {
    throw new ChainError("the new object would not read back as one object");
  }
  return edited;
}

// The chain text without object `index` (with one space less where the object stood between two).
export function removeObject(text, index) {
  const { objects } = parseChain(text);
  if (!Number.isInteger(index) || index < 0 || index >= objects.length) {
    throw new ChainError(`there is no object ${index}; this chain has ${objects.length} objects`);
  }
  let [start, end] = objects[index].span;
  if (start > 0 && text[start - 1] === " " && (end === text.length || /[\s.,;:!?]/.test(text[end]) ||
      text.startsWith(IMAGE_START, end))) start -= 1;
  return text.slice(0, start) + text.slice(end);
}

// --- pixels ----------------------------------------------------------------------------------------------

// The box's corners in pixels of a width x height canvas, in the reference's order of operations (x/1000*W).
export function boxToPixels(box, width, height) {
  const [x1, y1, x2, y2] = box;
  return [x1 / GRID * width, y1 / GRID * height, x2 / GRID * width, y2 / GRID * height];
}

// The pixels PIL fills for the box, as half-open ranges [col0, row0, col1, row1] (layout.pixel_extent).
export function pixelExtent(box, width, height) {
  const [x1, y1, x2, y2] = boxToPixels(box, width, height);
  return [Math.min(Math.trunc(x1), width), Math.min(Math.trunc(y1), height),
    Math.min(Math.trunc(x2) + 1, width), Math.min(Math.trunc(y2) + 1, height)];
}

// A value on the grid: a whole number in 0..1000.
export function snap(value) {
  return Math.min(GRID, Math.max(0, Math.round(value)));
}

// The inverse of boxToPixels for one coordinate: the nearest grid value to pixel `p` of a side of `size` px.
export function pixelToGrid(p, size) {
  return snap(p / size * GRID);
}

// A distance of `d` pixels along a side of `size` pixels, in whole grid units.
export function pixelsToGridDistance(d, size) {
  return Math.round(d / size * GRID);
}

// The box moved by (dx, dy) grid units, its size kept, stopped at the grid's edges.
export function moveBox(box, dx, dy) {
  const [x1, y1, x2, y2] = box;
  const mx = Math.min(Math.max(Math.round(dx), -x1), GRID - x2);
  const my = Math.min(Math.max(Math.round(dy), -y1), GRID - y2);
  return [x1 + mx, y1 + my, x2 + mx, y2 + my];
}

// The box with the edges a handle holds ("n", "s", "e", "w" or a corner such as "nw") moved to grid point
// (gx, gy), corners reordered if the handle crossed over.
export function resizeBox(box, handle, gx, gy) {
  let [x1, y1, x2, y2] = box;
  if (handle.includes("w")) x1 = snap(gx);
  if (handle.includes("e")) x2 = snap(gx);
  if (handle.includes("n")) y1 = snap(gy);
  if (handle.includes("s")) y2 = snap(gy);
  return [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)];
}

// Which object (the topmost: last drawn) and which part of it is under grid point (gx, gy); `reach` is how
// close (in grid units) counts as on an edge. null when none.
export function hitTest(objects, gx, gy, reach) {
  for (let index = objects.length - 1; index >= 0; index -= 1) {
    const [x1, y1, x2, y2] = objects[index].box;
    if (gx < x1 - reach || gx > x2 + reach || gy < y1 - reach || gy > y2 + reach) continue;
    const ns = Math.abs(gy - y1) <= reach ? "n" : Math.abs(gy - y2) <= reach ? "s" : "";
    const ew = Math.abs(gx - x1) <= reach ? "w" : Math.abs(gx - x2) <= reach ? "e" : "";
    const inside = gx >= x1 && gx <= x2 && gy >= y1 && gy <= y2;
    if (ns || ew || inside) return { index, handle: ns + ew || "move" };
  }
  return null;
}

// --- prose -----------------------------------------------------------------------------------------------

// The chain as an artist reads it: [{text}] pieces of prose and [{object, index}] objects (phrase + box),
// other special tokens left out; an unfinished box at the end (while streaming) is {pending: true}.
export function prose(text) {
  const { objects } = parseChain(text);
  const pieces = [];
  const plain = (s) => s.replace(/<\|object_ref_(start|end)\|>/g, "").replace(/<\|[a-z_0-9]+\|>/g, "");
  let last = 0;
  objects.forEach((object, index) => {
    pieces.push({ text: plain(text.slice(last, object.span[0])) });
    pieces.push({ object, index });
    last = object.span[1];
  });
  let rest = text.slice(last);
  const open = rest.lastIndexOf(BOX_START);
  let pending = false;
  if (open >= 0 && rest.indexOf(BOX_END, open) < 0) {
    rest = rest.slice(0, open);
    pending = true;
  }
  const partial = rest.match(/<\|?[a-z_0-9]*\|?$/);  // a special token still being written
  if (partial && partial[0].startsWith("<")) rest = rest.slice(0, partial.index);
  pieces.push({ text: plain(rest) });
  if (pending) pieces.push({ pending: true });
  return pieces.filter((p) => p.text !== "");
}
