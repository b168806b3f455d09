// Building elements without HTML strings: model output never meets innerHTML unsanitised, our own text never needs to.

type Attributes = Record<string, string | number | boolean | null | undefined>;

/** `h("button", {class: "x", "data-testid": "send", text: "Send"}, child…)`; false, null or undefined: left out. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Array<Node | string>
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") element.textContent = String(value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children);
  return element;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

/** A touch screen, where focusing a text field pops the on-screen keyboard up over what the user is reading. */
export function touchScreen(): boolean {
  return window.matchMedia("(pointer: coarse)").matches;
}

/** Opens a modal dialog with the focus on `start` for a keyboard user. On a touch screen the dialog's title takes
 * the focus instead (showModal alone would give it to the first field), so no keyboard pops up until a field is
 * tapped; a screen reader starts from the title. */
export function openDialog(dialog: HTMLDialogElement, start: HTMLElement): void {
  const touch = touchScreen();
  const title = document.getElementById(dialog.getAttribute("aria-labelledby") ?? "");
  if (title) {
    // showModal focuses an autofocus descendant first (Chromium ignores autofocus on the dialog itself).
    title.tabIndex = -1;
    title.toggleAttribute("autofocus", touch);
  }
  if (!dialog.open) dialog.showModal();
  if (!touch) start.focus();
}

export function show(element: HTMLElement, visible: boolean): void {
  element.hidden = !visible;
}

/** Clipboard API where the page is a secure context; the old selection trick on plain-http LAN addresses. */
export async function copyText(text: string): Promise<void> {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea", { class: "offscreen", readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

/** Briefly swap a button's label to confirm an action ("Copied"). */
export function flash(button: HTMLElement, label: string): void {
  const text = button.querySelector<HTMLElement>(".label") ?? button;
  const before = text.textContent;
  text.textContent = label;
  window.setTimeout(() => (text.textContent = before), 1200);
}
