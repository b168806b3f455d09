// Where a reply moved to another backend mid-way (a failover): a small mark at that point of the rendered text.
// The text is rendered with a private-use character at each switch's offset, which then becomes the mark; the
// names are untrusted, so they only ever reach the page as text and attribute values.
import { h } from "./dom";
import { renderMarkdown } from "./markdown";
import type { Switch } from "./types";

const PRIVATE_USE = [0xe000, 0xf8ff];

/** The reply as Markdown with a mark where each switch happened. A switch whose place the Markdown does not keep
 * as plain text (inside a code block or a link, or where a character there would change the rendering) is listed
 * after the text instead, so the marks never change what the reply renders as. */
export function renderWithSwitches(content: string, switches: readonly Switch[]): DocumentFragment {
  const ordered = [...switches].sort((a, b) => a.at - b.at);
  const plain = renderMarkdown(content);
  const sentinel = unusedCharacter(content);
  if (sentinel === null) return withList(plain, ordered);
  const places = ordered.map((s) => placeOf(content, s.at));
  let marked = "";
  let from = 0;
  for (const place of places) {
    marked += content.slice(from, place) + sentinel;
    from = place;
  }
  const fragment = renderMarkdown(marked + content.slice(from));
  if (places.includes(0) || stripped(fragment, sentinel) !== plain.textContent) return withList(plain, ordered);
  const after = placeMarks(fragment, sentinel, ordered);
  return after === null ? withList(plain, ordered) : withList(fragment, after);
}

/** Where the mark goes: after the last character that is not white space, so it never starts a line (where it
 * would turn a heading or a list item into a paragraph). */
function placeOf(content: string, at: number): number {
  let place = Math.max(0, Math.min(at, content.length));
  while (place > 0 && /\s/.test(content[place - 1])) place--;
  return place;
}

function unusedCharacter(content: string): string | null {
  for (let code = PRIVATE_USE[0]; code <= PRIVATE_USE[1]; code++) {
    const character = String.fromCharCode(code);
    if (!content.includes(character)) return character;
  }
  return null;
}

function stripped(fragment: DocumentFragment, sentinel: string): string {
  return (fragment.textContent ?? "").split(sentinel).join("");
}

/** Each sentinel in the text becomes a mark, in order; one in a code block is taken out and its switch returned
 * to be listed. Null when a sentinel is missing from the text (an address, say). */
function placeMarks(fragment: DocumentFragment, sentinel: string, ordered: Switch[]): Switch[] | null {
  const nodes: Text[] = [];
  const walker = document.createTreeWalker(fragment, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.nodeValue?.includes(sentinel)) nodes.push(node as Text);
  }
  const after: Switch[] = [];
  let next = 0;
  for (const node of nodes) {
    const parts = (node.nodeValue ?? "").split(sentinel);
    const found = ordered.slice(next, next + parts.length - 1);
    next += found.length;
    if (node.parentElement?.closest("pre, code, .code-head")) {
      node.nodeValue = parts.join(""); // a mark in code would end up in what its Copy button copies
      after.push(...found);
      continue;
    }
    const pieces: Array<Node | string> = [parts[0]];
    found.forEach((s, i) => pieces.push(mark(s), parts[i + 1]));
    node.replaceWith(...pieces);
  }
  return next === ordered.length ? after : null;
}

function mark(s: Switch, listed = false): HTMLElement {
  const where = listed ? `at character ${s.at}` : "here";
  return h("span", {
    class: "switch-mark",
    "data-testid": "switch-mark",
    "data-from": s.from,
    "data-to": s.to,
    "data-at": s.at,
    role: "note",
    title: `${s.from} stopped answering ${where}; the reply went on on ${s.to}`,
    text: `continued on ${s.to}`,
  });
}

function withList(fragment: DocumentFragment, switches: Switch[]): DocumentFragment {
  if (switches.length) {
    const list = h("p", { class: "msg-switches" });
    for (const s of switches) list.append(mark(s, true), " ");
    fragment.append(list);
  }
  return fragment;
}
