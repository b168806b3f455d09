// Errors, said plainly, above the composer; the latest replaces the previous one.
import { plain } from "./api";
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
    this.text.textContent = plain(error);
    this.box.hidden = false;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.hide(), SHOWN_MS);
  }

  hide(): void {
    this.box.hidden = true;
  }
}
