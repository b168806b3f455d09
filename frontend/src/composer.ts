// The message box docked at the bottom: Enter sends, Shift+Enter adds a line, the button turns into Stop.
import { byId, touchScreen } from "./dom";

export interface ComposerHooks {
  /** Resolves true when the message was accepted; the text stays in the box otherwise. */
  send(text: string): Promise<boolean>;
  stop(): void;
}

const MAX_HEIGHT_PX = 240;

export class Composer {
  readonly input = byId<HTMLTextAreaElement>("input");
  private readonly sendButton = byId<HTMLButtonElement>("send");
  private readonly stopButton = byId<HTMLButtonElement>("stop");
  private sending = false;

  constructor(private readonly hooks: ComposerHooks) {
    this.input.addEventListener("input", () => this.resize());
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        void this.submit();
      }
    });
    this.sendButton.addEventListener("click", () => void this.submit());
    this.stopButton.addEventListener("click", () => hooks.stop());
  }

  setBusy(busy: boolean): void {
    this.stopButton.hidden = !busy;
    this.sendButton.hidden = busy;
  }

  focus(): void {
    // On a phone, focusing would pop the keyboard up over the reply being read.
    if (!touchScreen()) this.input.focus();
  }

  private async submit(): Promise<void> {
    const text = this.input.value;
    if (!text.trim() || this.sending) return;
    this.sending = true;
    this.resize();
    try {
      if (await this.hooks.send(text)) {
        if (this.input.value === text) this.input.value = "";
        this.resize();
      }
    } finally {
      this.sending = false;
      this.resize();
    }
  }

  /** Grow with the text up to a limit (CSSOM styles are allowed by the page's CSP; style attributes are not). */
  private resize(): void {
    const input = this.input;
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, MAX_HEIGHT_PX)}px`;
    this.sendButton.disabled = this.sending || !input.value.trim();
  }
}
