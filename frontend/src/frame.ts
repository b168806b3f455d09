// The frame around the thread: its buttons, the conversations drawer on narrow screens, and Escape.
import { byId } from "./dom";
import { toggleTheme } from "./theme";

export interface FrameHooks {
  newChat(): void;
  openSettings(): void;
  /** Whether a reply is being written, which Escape stops. */
  busy(): boolean;
  stop(): void;
}

export function wireFrame(hooks: FrameHooks): void {
  byId("new-chat").addEventListener("click", () => hooks.newChat());
  byId("theme").addEventListener("click", () => toggleTheme());
  byId("settings-open").addEventListener("click", () => hooks.openSettings());
  byId("drawer-open").addEventListener("click", () => drawer(true));
  byId("drawer-close").addEventListener("click", () => drawer(false));
  byId("backdrop").addEventListener("click", () => drawer(false));
  byId("sidebar").addEventListener("click", (event) => {
    if ((event.target as Element).closest("a.conv-link")) drawer(false);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    if (document.querySelector("dialog[open], :popover-open")) return; // Escape closes that, and only that
    if (document.body.classList.contains("drawer-open")) drawer(false);
    else if (hooks.busy()) hooks.stop();
  });
}

export function drawer(open: boolean): void {
  document.body.classList.toggle("drawer-open", open);
  byId("drawer-open").setAttribute("aria-expanded", String(open));
}
