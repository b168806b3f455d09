// Model output to DOM: marked (GFM) → DOMPurify → highlight.js, always from the whole text so far.
// Rendering the full text each time makes the result independent of where the stream's chunks were cut; only the
// message being written is rendered again (once per frame), and its finished code blocks come from a cache.
import DOMPurify from "dompurify";
import type { Config } from "dompurify";
import { Marked } from "marked";
import { h } from "./dom";
import { highlight, languageOf } from "./highlight";

// Raw HTML in a reply is shown as the text it is (as most chat apps do): a model writing `<img onerror=…>` is
// usually showing an example. Parsing it as HTML would also make Chromium log a CSP violation for every
// inline handler it meets, even in DOMPurify's inert document. DOMPurify still cleans what marked makes.
const marked = new Marked({
  gfm: true,
  breaks: false,
  async: false,
  renderer: {
    html: ({ text, block }) => (block ? `<p>${escape(text)}</p>` : escape(text)),
  },
});

const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

// Only what marked makes from Markdown, in HTML's namespace. Raw HTML reaches this escaped, so this is the second
// line, and it must hold alone: DOMPurify's defaults keep elements and attributes that load from elsewhere by
// themselves (<video poster>, <table background>, <picture><source srcset>), SVG and MathML (the home of
// namespace-confusion mXSS), forms and inline styles.
const PURIFY: Config & { RETURN_DOM_FRAGMENT: true } = {
  RETURN_DOM_FRAGMENT: true,
  ALLOWED_TAGS: [
    ...["p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "input"],
    ...["table", "thead", "tbody", "tr", "th", "td", "pre", "code", "em", "strong", "del", "a", "img"],
  ],
  ALLOWED_ATTR: ["href", "title", "src", "alt", "class", "start", "align", "type", "checked", "disabled"],
  SANITIZE_NAMED_PROPS: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (!(node instanceof Element)) return;
  // Links in a reply open elsewhere and tell the target nothing about this page.
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  // Only an image has a source (replaceImages vets it), and an input is a task list's checkbox, nothing else.
  if (node.tagName !== "IMG") node.removeAttribute("src");
  if (node.tagName === "INPUT") {
    node.setAttribute("type", "checkbox");
    node.setAttribute("disabled", "");
  }
});

export function renderMarkdown(text: string): DocumentFragment {
  const html = marked.parse(text) as string;
  const fragment = DOMPurify.sanitize(html, PURIFY);
  replaceImages(fragment);
  decorateCode(fragment);
  for (const table of fragment.querySelectorAll("table")) {
    const wrap = h("div", { class: "table-wrap" }); // wide tables scroll on their own, not the page
    table.replaceWith(wrap);
    wrap.append(table);
  }
  return fragment;
}

/** A model can name any URL as an image; loading it would tell that host who reads the reply. */
function replaceImages(root: DocumentFragment): void {
  for (const image of root.querySelectorAll("img")) {
    const src = image.getAttribute("src") ?? "";
    if (/^data:image\/(png|jpe?g|gif|webp);/i.test(src)) continue;
    const label = `[image: ${image.getAttribute("alt") || "untitled"}]`;
    const replacement = /^https?:\/\//i.test(src)
      ? h("a", { href: src, target: "_blank", rel: "noopener noreferrer", class: "image-link", text: label })
      : h("span", { class: "image-link", text: label });
    image.replaceWith(replacement);
  }
}

function decorateCode(root: DocumentFragment): void {
  for (const code of root.querySelectorAll<HTMLElement>("pre > code")) {
    const pre = code.parentElement as HTMLElement;
    const language = (/(?:^|\s)language-([\w+#.-]{1,32})/.exec(code.className)?.[1] ?? "").toLowerCase();
    const known = languageOf(language);
    const highlighted = known && highlight(code.textContent ?? "", known);
    if (highlighted) {
      code.innerHTML = highlighted; // highlight.js escapes the code it wraps in spans
      code.classList.add("hljs");
    } else if (known) {
      code.dataset.highlight = known; // painted when the language arrives
    }
    const head = h(
      "div",
      { class: "code-head" },
      h("span", { class: "code-lang", "data-testid": "code-lang", text: language || "code" }),
      h(
        "button",
        { type: "button", class: "code-copy", "data-action": "copy-code", "data-testid": "code-copy" },
        h("span", { class: "label", text: "Copy" }),
      ),
    );
    const block = h("div", { class: "code-block", "data-testid": "code-block" }, head);
    pre.replaceWith(block);
    block.append(pre);
  }
}

/** What a screen reader should hear of a rendered reply: its text without the code blocks' buttons. */
export function plainText(rendered: HTMLElement): string {
  const copy = rendered.cloneNode(true) as HTMLElement;
  for (const head of copy.querySelectorAll(".code-head")) head.remove();
  return (copy.textContent ?? "").replace(/\n{3,}/g, "\n\n").trim();
}
