// Errors, said plainly, above the composer; the latest replaces the previous one.
import { ApiError, plain } from "./api";
import { byId } from "./dom";

const SHOWN_MS = 10_000;

export class Alert {
  private readonly box = byId("alert");
  private readonly text = byId("alert-text");
  private timer: number | undefined;

  constructor() {
    byId("alert-close").addEventListener("click", () => this.hide());
  }

  show(error: unknown): void {
    // Signed out: the login view says so, and the chat is hidden until the next sign-in.
    if (error instanceof ApiError && (error.status === 401 || error.code === "disabled")) return;
    this.text.textContent = plain(error);
    this.box.hidden = false;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.hide(), SHOWN_MS);
  }

  hide(): void {
    this.box.hidden = true;
  }
}

/** A short confirmation that is no error ("Password changed"), read out by screen readers. */
export class Toast {
  private readonly box = byId("toast");
  private timer: number | undefined;

  show(text: string): void {
    this.box.textContent = text;
    this.box.hidden = false;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => (this.box.hidden = true), 4000);
  }
}
