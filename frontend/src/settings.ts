// The per-conversation settings dialog: system prompt, temperature, num_ctx, thinking, and the exports.
import { exportUrl } from "./api";
import type { Settings } from "./api";
import { byId } from "./dom";
import type { Conversation } from "./types";

export type ConversationSettings = Pick<Conversation, "system_prompt" | "temperature" | "num_ctx" | "think">;

export class SettingsPanel {
  private readonly dialog = byId<HTMLDialogElement>("settings");
  private readonly system = byId<HTMLTextAreaElement>("set-system");
  private readonly temperature = byId<HTMLInputElement>("set-temperature");
  private readonly numCtx = byId<HTMLInputElement>("set-num-ctx");
  private readonly think = byId<HTMLSelectElement>("set-think");
  private readonly exports = byId("exports");

  /** `save` resolves true when the change was stored; the dialog stays open otherwise. */
  constructor(private readonly save: (settings: Settings) => Promise<boolean>) {
    byId("settings-cancel").addEventListener("click", () => this.dialog.close());
    byId("settings-save").addEventListener("click", () => void this.submit());
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close(); // a click on the backdrop
    });
  }

  open(values: ConversationSettings, conversationId: string | null, defaultNumCtx: number): void {
    this.system.value = values.system_prompt;
    this.temperature.value = values.temperature == null ? "" : String(values.temperature);
    this.numCtx.value = values.num_ctx == null ? "" : String(values.num_ctx);
    this.numCtx.placeholder = `server default (${defaultNumCtx})`;
    this.think.value = values.think == null ? "" : String(values.think);
    this.exports.hidden = conversationId === null;
    if (conversationId) {
      byId<HTMLAnchorElement>("export-markdown").href = exportUrl(conversationId, "markdown");
      byId<HTMLAnchorElement>("export-json").href = exportUrl(conversationId, "json");
    }
    this.dialog.showModal();
    this.system.focus();
  }

  private async submit(): Promise<void> {
    for (const input of [this.temperature, this.numCtx]) {
      if (!input.reportValidity()) return;
    }
    const settings: Settings = {
      system_prompt: this.system.value,
      temperature: this.temperature.value === "" ? null : Number(this.temperature.value),
      num_ctx: this.numCtx.value === "" ? null : Math.round(Number(this.numCtx.value)),
      think: this.think.value === "" ? null : this.think.value === "true",
    };
    if (await this.save(settings)) this.dialog.close();
  }
}
