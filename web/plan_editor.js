// The GoT Plan Editor on the node: the plan's boxes on a canvas (over the source image for an edit) and a list
// of its objects, both editable. Every edit writes the
// canonical chain text into the node's `plan` widget (plan_geometry.js, the one definition of the geometry),
// so the backend reads the edit with the parser it already has. nodes/plan_editor.py is the node.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import * as geo from "./plan_geometry.js";
import { element, hideWidget, keepEvents } from "./node_dom.js";

const EDITOR_NODE = "GoTPlanEditor";
const HIDDEN_WIDGETS = ["plan", "edited_from"];
const MODEL_CHAIN = "got_model_chain"; // node property: the model's last chain (kept with the workflow)
const CANVAS_SIZE = "got_canvas_size";
const HANDLE_PX = 6; // how near (CSS pixels) to an edge grabs it
const NUDGE = 1;
const NUDGE_FAST = 10;
const CSS = `
.got-plan { display: flex; flex-direction: column; gap: 4px; font: 12px sans-serif; color: #ddd;
  box-sizing: border-box; height: 100%; overflow: hidden; }
.got-plan-stage { flex: 1 1 auto; min-height: 220px; display: flex; align-items: center; justify-content: center; }
.got-plan canvas { outline: none; cursor: crosshair; touch-action: none; }
.got-plan-bar { display: flex; gap: 4px; flex-wrap: wrap; align-items: center; }
.got-plan button { font: inherit; padding: 1px 6px; cursor: pointer; }
.got-plan-banner { background: #5a4a10; padding: 3px 6px; border-radius: 3px; }
.got-plan-list { flex: 0 0 auto; max-height: 40%; overflow-y: auto; }
.got-plan-row { display: flex; gap: 4px; align-items: center; padding: 1px 2px; border-radius: 3px; }
.got-plan-row.selected { background: #3a4a6a; }
.got-plan-row input { font: inherit; background: #222; color: #eee; border: 1px solid #555; min-width: 0; }
.got-plan-row .phrase { flex: 1 1 auto; }
.got-plan-row .color { width: 80px; }
.got-plan-row .box { font-family: monospace; white-space: nowrap; }
.got-plan-swatch { width: 10px; height: 10px; border: 1px solid #999; flex: 0 0 auto; }
`;

class PlanEditor {
  constructor(node) {
    this.node = node;
    this.planWidget = node.widgets.find((w) => w.name === "plan");
    this.fromWidget = node.widgets.find((w) => w.name === "edited_from");
    HIDDEN_WIDGETS.forEach((name) => hideWidget(node.widgets.find((w) => w.name === name)));
    this.selected = -1;
    this.drag = null;
    this.source = null; // the edit's source image
    this.canvas = element("canvas", { tabIndex: 0 });
    this.canvas.dataset.gotPlanCanvas = "";
    this.stage = element("div", { className: "got-plan-stage" }, this.canvas);
    this.banner = element("div", { className: "got-plan-banner" });
    this.bar = element("div", { className: "got-plan-bar" });
    this.list = element("div", { className: "got-plan-list" });
    this.root = element("div", { className: "got-plan" }, this.banner, this.stage, this.bar, this.list);
    keepEvents(this.root);
    this.widget = node.addDOMWidget("plan_editor", "got_plan_editor", this.root, {
      serialize: false,
      getValue: () => this.text,
      setValue: () => {},
      getMinHeight: () => 380,
    });
    this.canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.pointerUp(e));
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    new ResizeObserver(() => this.draw()).observe(this.stage);
    this.render();
  }

  get modelChain() { return this.node.properties?.[MODEL_CHAIN] ?? ""; }
  get edited() { return (this.planWidget.value ?? "") !== ""; }
  get text() { return this.edited ? this.planWidget.value : this.modelChain; }
  get modelChanged() {
    return this.edited && this.fromWidget.value !== "" && this.fromWidget.value !== this.modelChain;
  }
  get size() { return this.node.properties?.[CANVAS_SIZE] ?? [1024, 1024]; }

  objects() {
    return geo.parseChain(this.text).objects;
  }

  // A new plan text from an edit: kept in the `plan` widget (with the model chain it was made from), or the
  // widget emptied again when the edit gives back the model's own chain.
  setPlan(text) {
    if (text === this.modelChain) {
      this.planWidget.value = "";
      this.fromWidget.value = "";
    } else {
      if (!this.edited) this.fromWidget.value = this.modelChain;
      this.planWidget.value = text;
    }
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
    this.render();
  }

  edit(change) {
    try {
      this.setPlan(change(this.text));
      this.error = "";
    } catch (err) {
      if (!(err instanceof geo.ChainError)) throw err;
      this.error = err.message;
      this.render();
    }
  }

  backToModel() {
    this.planWidget.value = "";
    this.fromWidget.value = "";
    this.selected = -1;
    this.render();
    this.node.setDirtyCanvas?.(true, true);
  }

  // The node ran: the model's chain (and the canvas size, the source image) arrive from the backend.
  received(message) {
    this.node.properties[MODEL_CHAIN] = message.model_chain;
    this.node.properties[CANVAS_SIZE] = [message.width, message.height];
    const [image] = message.source ?? [];
    if (image) {
      const img = new Image();
      const query = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder, type: image.type });
      img.onload = () => { this.source = img; this.draw(); };
      img.src = api.apiURL(`/view?${query}`);
    } else {
      this.source = null;
    }
    this.render();
  }

  // --- drawing ---------------------------------------------------------------------------------------------

  render() {
    const objects = this.objects();
    if (this.selected >= objects.length) this.selected = -1;
    this.renderBanner();
    this.renderBar(objects);
    this.renderList(objects);
    this.draw();
  }

  renderBanner() {
    this.banner.replaceChildren();
    if (this.modelChanged) {
      const take = element("button", { textContent: "take the model's plan", onclick: () => this.backToModel() });
      this.banner.append("The model's plan changed since your edit; your edit is used. ", take);
    } else if (!this.modelChain && !this.edited) {
      this.banner.append("Queue the workflow: the Reasoner's plan appears here.");
    }
    if (this.error) this.banner.append(element("div", { textContent: this.error }));
    this.banner.style.display = this.banner.childNodes.length ? "" : "none";
  }

  renderBar(objects) {
    const add = element("button", { textContent: "+ object", title: "Add an object (phrase, box, colour)" });
    add.onclick = () => {
      const used = new Set(objects.map((o) => o.color));
      const color = geo.PALETTE.find((c) => !used.has(c)) ?? geo.PALETTE[0];
      this.edit((text) => geo.addObject(text, { phrase: "new object", box: [400, 400, 600, 600], color }));
      this.selected = this.objects().length - 1;
      this.render();
    };
    const back = element("button", { textContent: "back to the model's plan", disabled: !this.edited });
    back.onclick = () => this.backToModel();
    const state = element("span", { textContent: this.edited ? "edited" : "the model's plan" });
    this.bar.replaceChildren(add, back, state);
  }

  renderList(objects) {
    const palette = element("datalist", { id: `got-palette-${this.node.id}` },
      ...geo.PALETTE.map((c) => element("option", { value: c })));
    const rows = objects.map((object, index) => {
      const phrase = element("input", { className: "phrase", value: object.phrase ?? "", placeholder: "(no phrase)" });
      phrase.onchange = () => this.edit((t) => geo.withObject(t, index, { phrase: phrase.value || null }));
      const color = element("input", { className: "color", value: object.color ?? "" });
      color.setAttribute("list", palette.id);
      color.onchange = () => this.edit((t) => geo.withObject(t, index, { color: color.value.trim() || null }));
      const remove = element("button", { textContent: "✕", title: "Delete this object" });
      remove.onclick = () => { this.selected = -1; this.edit((t) => geo.removeObject(t, index)); };
      const swatch = element("span", { className: "got-plan-swatch" });
      swatch.style.background = object.color ?? "transparent";
      const row = element("div", { className: `got-plan-row${index === this.selected ? " selected" : ""}` },
        element("span", { textContent: `${index + 1}.` }), swatch, phrase, color,
        element("span", { className: "box", textContent: `(${object.box.slice(0, 2)}),(${object.box.slice(2)})` }),
        remove);
      row.dataset.index = index;
      row.addEventListener("pointerdown", () => { if (this.selected !== index) this.select(index); });
      return row;
    });
    this.list.replaceChildren(palette, ...rows);
  }

  select(index) {
    this.selected = index;
    this.list.querySelectorAll(".got-plan-row").forEach((row) => {
      row.classList.toggle("selected", Number(row.dataset.index) === index);
    });
    this.draw();
  }

  canvasSize() {
    if (this.source) return [this.source.naturalWidth, this.source.naturalHeight];
    return this.size;
  }

  draw() {
    const [w, h] = this.canvasSize();
    const zoom = this.stage.getBoundingClientRect().width / (this.stage.clientWidth || 1) || 1;
    const maxW = Math.max(40, this.stage.clientWidth - 4);
    const maxH = Math.max(40, this.stage.clientHeight - 4);
    const fit = Math.min(maxW / w, maxH / h);
    const cssW = Math.round(w * fit);
    const cssH = Math.round(h * fit);
    const ratio = (window.devicePixelRatio || 1) * zoom; // sharp at the graph's zoom
    this.canvas.style.width = `${cssW}px`;
    this.canvas.style.height = `${cssH}px`;
    this.canvas.width = Math.max(1, Math.round(cssW * ratio));
    this.canvas.height = Math.max(1, Math.round(cssH * ratio));
    const ctx = this.canvas.getContext("2d");
    const W = this.canvas.width;
    const H = this.canvas.height;
    ctx.fillStyle = "#1f1f21";
    ctx.fillRect(0, 0, W, H);
    if (this.source) ctx.drawImage(this.source, 0, 0, W, H);
    ctx.strokeStyle = "rgba(255,255,255,0.08)";
    ctx.lineWidth = 1;
    for (let k = 1; k < 10; k += 1) {
      ctx.beginPath();
      ctx.moveTo(Math.floor(k / 10 * W) + 0.5, 0);
      ctx.lineTo(Math.floor(k / 10 * W) + 0.5, H);
      ctx.moveTo(0, Math.floor(k / 10 * H) + 0.5);
      ctx.lineTo(W, Math.floor(k / 10 * H) + 0.5);
      ctx.stroke();
    }
    const objects = this.objects();
    if (this.drag?.box) objects[this.drag.index] = { ...objects[this.drag.index], box: this.drag.box };
    const font = Math.max(10, Math.round(11 * ratio));
    objects.forEach((object, index) => {
      const [x1, y1, x2, y2] = geo.boxToPixels(object.box, W, H);
      const color = object.color ?? "#bfbfbf";
      ctx.globalAlpha = 0.3;
      ctx.fillStyle = color;
      ctx.fillRect(x1, y1, x2 - x1, y2 - y1);
      ctx.globalAlpha = 1;
      ctx.strokeStyle = color;
      ctx.lineWidth = (index === this.selected ? 3 : 2) * ratio;
      ctx.setLineDash(object.color ? [] : [4 * ratio, 3 * ratio]);
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      const label = `${index + 1} ${object.phrase ?? ""}`.trim();
      ctx.font = `${font}px sans-serif`;
      const tw = ctx.measureText(label).width;
      ctx.fillStyle = color;
      ctx.fillRect(x1, y1, tw + 6 * ratio, font + 4 * ratio);
      ctx.fillStyle = "#000";
      ctx.fillText(label, x1 + 3 * ratio, y1 + font);
      if (index === this.selected) {
        ctx.fillStyle = "#fff";
        const s = 4 * ratio;
        for (const [hx, hy] of [[x1, y1], [x2, y1], [x1, y2], [x2, y2], [(x1 + x2) / 2, y1], [(x1 + x2) / 2, y2],
          [x1, (y1 + y2) / 2], [x2, (y1 + y2) / 2]]) ctx.fillRect(hx - s, hy - s, 2 * s, 2 * s);
      }
    });
    this.canvas.dataset.objects = String(objects.length);
    this.canvas.dataset.plan = this.text;
  }

  // --- pointer and keys ------------------------------------------------------------------------------------

  gridPoint(event) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: (event.clientX - rect.left) / rect.width * geo.GRID, y: (event.clientY - rect.top) / rect.height * geo.GRID,
      rect };
  }

  pointerDown(event) {
    this.canvas.focus();
    const p = this.gridPoint(event);
    const reach = HANDLE_PX / p.rect.width * geo.GRID;
    const hit = geo.hitTest(this.objects(), p.x, p.y, reach);
    if (!hit) { this.select(-1); return; }
    this.canvas.setPointerCapture(event.pointerId);
    this.drag = { ...hit, start: p, startBox: this.objects()[hit.index].box, box: null };
    if (this.selected !== hit.index) this.selected = hit.index;
    this.renderList(this.objects());
    this.draw();
  }

  pointerMove(event) {
    if (!this.drag) {
      const p = this.gridPoint(event);
      const hit = geo.hitTest(this.objects(), p.x, p.y, HANDLE_PX / p.rect.width * geo.GRID);
      const cursors = { move: "move", n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize",
        nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize" };
      this.canvas.style.cursor = hit ? cursors[hit.handle] : "crosshair";
      return;
    }
    const p = this.gridPoint(event);
    const { start, startBox, handle } = this.drag;
    this.drag.box = handle === "move"
      ? geo.moveBox(startBox, geo.pixelsToGridDistance(event.clientX - this.dragClient(start).x, p.rect.width),
        geo.pixelsToGridDistance(event.clientY - this.dragClient(start).y, p.rect.height))
      : geo.resizeBox(startBox, handle, p.x, p.y);
    this.draw();
  }

  dragClient(start) {
    return { x: start.x / geo.GRID * start.rect.width + start.rect.left,
      y: start.y / geo.GRID * start.rect.height + start.rect.top };
  }

  pointerUp(event) {
    if (!this.drag) return;
    const { index, box, startBox } = this.drag;
    this.drag = null;
    this.canvas.releasePointerCapture?.(event.pointerId);
    if (box && box.some((v, i) => v !== startBox[i])) this.edit((t) => geo.withObject(t, index, { box }));
    else this.draw();
  }

  key(event) {
    const index = this.selected;
    if (index < 0) return;
    const step = event.shiftKey ? NUDGE_FAST : NUDGE;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[event.key]) {
      event.preventDefault();
      const box = geo.moveBox(this.objects()[index].box, ...moves[event.key]);
      this.edit((t) => geo.withObject(t, index, { box }));
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      this.selected = -1;
      this.edit((t) => geo.removeObject(t, index));
    }
  }
}

app.registerExtension({
  name: "comfyui-got.PlanEditor",
  async setup() {
    document.head.append(element("style", { textContent: CSS }));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === EDITOR_NODE) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = created?.apply(this, arguments);
        this.gotPlanEditor = new PlanEditor(this);
        return result;
      };
      const configured = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = configured?.apply(this, arguments);
        this.gotPlanEditor?.render();
        return result;
      };
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const result = executed?.apply(this, arguments);
        const [message] = output?.got_plan ?? [];
        if (message) this.gotPlanEditor?.received(message);
        return result;
      };
    }
  },
});
