// Connects web/template_cards.js to the frontend: the server's template list reordered where the frontend asks
// for it (api.getWorkflowTemplates, called by the template browser of 1.27 and of 1.58 when it opens), and each of
// this pack's cards given its description while the browser is open.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { element } from "./node_dom.js";
import { describeCards, ordered } from "./template_cards.js";

const MODULE = decodeURIComponent(new URL(import.meta.url).pathname.split("/").at(-2));  // our folder's name

const DONE = "gotDescribed";

function shownTexts(root) {
  const leaves = [...root.querySelectorAll("*")].filter((el) => el.childElementCount === 0 && el.textContent.trim());
  return leaves.map((el) => ({
    text: el.textContent.trim(),
    done: Boolean(el.dataset[DONE]),
    set: (text) => { el.textContent = text; },
    after: (text) => {
      const note = element("div", { className: "got-template-description", textContent: text });
      el.after(note);
    },
    markDone: () => { el.dataset[DONE] = "1"; },
  }));
}

const CSS = `.got-template-description { font-size: 12px; line-height: 1.35; opacity: 0.75; margin-top: 4px;
  white-space: normal; }`;

app.registerExtension({
  name: "comfyui-got.template-browser",
  setup() {
    document.head.append(element("style", { textContent: CSS }));
    const listed = api.getWorkflowTemplates.bind(api);
    api.getWorkflowTemplates = async () => ordered(await listed(), MODULE);
    let pending = false;
    new MutationObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        for (const dialog of document.querySelectorAll('[role="dialog"]')) describeCards(shownTexts(dialog));
      });
    }).observe(document.body, { childList: true, subtree: true });
  },
});
