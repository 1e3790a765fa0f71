// Every text a GoT node computes, shown on that node (web/node_text.js says which): the judge's scores, the
// reflection's correction, the rounds' report, the thinker's revision, the parser's boxes as plain text, the
// Reasoner's chain as prose (each object's phrase in its colour, its box as a small tag) while it streams.
// Plain text goes into a read-only core multiline text widget, which every frontend draws in the classic canvas
// and in Nodes 2.0 (1.27's Vue nodes draw no extension DOM widget); the prose is a DOM widget. Neither is
// serialized, so saved workflows keep their widget values.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import * as geo from "./plan_geometry.js";
import { element, hideWidget, keepEvents } from "./node_dom.js";
import { shownText, textKind } from "./node_text.js";

const CSS = `
.got-prose { font: 12px sans-serif; color: #ddd; overflow-y: auto; height: 100%; white-space: pre-wrap;
  box-sizing: border-box; padding: 2px; user-select: text; }
.got-prose .phrase { font-weight: bold; }
.got-prose .tag { font: 10px monospace; color: #aaa; border: 1px solid #666; border-radius: 3px;
  padding: 0 2px; margin-left: 2px; }
`;

function renderProse(target, text) {
  const pieces = geo.prose(text).map((piece) => {
    if (piece.text !== undefined) return document.createTextNode(piece.text);
    if (piece.pending) return element("span", { className: "tag", textContent: "…" });
    const { phrase, box, color } = piece.object;
    const name = element("span", { className: "phrase", textContent: phrase ?? `object ${piece.index + 1}` });
    name.style.color = color ?? "#bfbfbf";
    const tag = element("span", { className: "tag", textContent: `${piece.index + 1}: ${box.join(",")}` });
    return element("span", {}, name, tag);
  });
  target.replaceChildren(...pieces);
}

const RESULT_WIDGET = "got_result";

function unserialized(widget) {
  widget.serialize = false;
  widget.options = { ...(widget.options ?? {}), serialize: false };
  return widget;
}

function proseView(node) {
  if (!node.gotProse) {
    const view = element("div", { className: "got-prose" });
    view.dataset.gotResult = "prose";
    keepEvents(view);
    unserialized(node.addDOMWidget(RESULT_WIDGET, "got_prose", view, { serialize: false, getValue: () => "",
      setValue: () => {}, getMinHeight: () => 120 }));
    node.gotProse = view;
  }
  return node.gotProse;
}

function textWidget(node) {
  let widget = node.widgets?.find((w) => w.name === RESULT_WIDGET);
  if (!widget) {
    widget = unserialized(ComfyWidgets.STRING(node, RESULT_WIDGET, ["STRING", { multiline: true }], app).widget);
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.dataset.gotResult = "text";
    }
    widget.options.read_only = true;
  }
  return widget;
}

// The frontend's own progress-text preview shows the raw tokens: the view replaces it on GoT's nodes.
function show(node, kind, text) {
  if (kind === "prose") renderProse(proseView(node), text);
  else textWidget(node).value = text;
  for (const widget of node.widgets ?? []) {
    if (widget.name === "$$node-text-preview") hideWidget(widget);
  }
  const [width, height] = node.size ?? [0, 0];
  const needed = node.computeSize?.() ?? [width, height];
  if (needed[1] > height) node.setSize?.([Math.max(width, needed[0]), needed[1]]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "comfyui-got.ResultText",
  async setup() {
    document.head.append(element("style", { textContent: CSS }));
    api.addEventListener("progress_text", ({ detail }) => {
      const node = app.graph?.getNodeById(detail.nodeId);
      const kind = node?.gotTextKind;
      if (kind) queueMicrotask(() => show(node, kind, detail.text));
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = textKind(nodeData);
    if (!kind) return;
    nodeType.prototype.gotTextKind = kind;
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = executed?.apply(this, arguments);
      const text = shownText(output);
      if (text !== null) show(this, kind, text);
      return result;
    };
  },
});
