// DOM helpers for GoT's node widgets (web/plan_editor.js, web/result_text.js).

export function element(tag, attributes = {}, ...children) {
  const el = document.createElement(tag);
  Object.assign(el, attributes);
  el.append(...children);
  return el;
}

export function hideWidget(widget) {
  widget.hidden = true;
  widget.options = { ...(widget.options ?? {}), hidden: true };
  widget.computeSize = () => [0, -4]; // older frontends size hidden widgets by computeSize
  if (widget.element) widget.element.style.display = "none";
}

// Keys and pointer events inside a GoT widget are the widget's, not the graph canvas's (Delete must not delete
// the node, a drag must not move it).
export function keepEvents(el) {
  for (const type of ["pointerdown", "pointermove", "pointerup", "wheel", "keydown", "keyup", "contextmenu",
    "mousedown", "mouseup", "click", "dblclick"]) {
    el.addEventListener(type, (event) => event.stopPropagation());
  }
}

