// Which GoT nodes show which text (pure: no DOM, tested by tests/js/node_text.test.mjs). Every text a GoT node
// computes for the artist comes back in its `ui.text` (nodes return ui.PreviewText) and is shown on the node by
// web/result_text.js, in the classic canvas and in Nodes 2.0; the Reasoner's chain is shown as prose.
export const PROSE_NODES = ["GoTReasoner", "GoTNextTurn"];
export const OWN_VIEW_NODES = ["GoTPlanEditor"]; // shows its result in its own editor

// "prose" (a chain), "text" (plain text) or null (not shown by result_text.js) for a node type.
export function textKind(nodeData) {
  if (!String(nodeData?.category ?? "").startsWith("GoT")) return null;
  if (PROSE_NODES.includes(nodeData.name)) return "prose";
  if (OWN_VIEW_NODES.includes(nodeData.name)) return null;
  return "text";
}

// The text of an `executed` message's output (ComfyUI sends `ui.text` as a list of strings), or null.
export function shownText(output) {
  const pieces = (output?.text ?? []).filter((piece) => typeof piece === "string");
  return pieces.length ? pieces.join("\n") : null;
}
