// The per-conversation settings dialog: system prompt, temperature, num_ctx, thinking, reply length, the exports.
import { exportUrl } from "./api";
import type { Settings } from "./api";
import { byId, openDialog } from "./dom";
import type { Conversation } from "./types";

export type ConversationSettings = Pick<
  Conversation,
  "system_prompt" | "temperature" | "num_ctx" | "think" | "num_predict"
>;

/** What a conversation gets where it sets nothing, and the most it may ask for. */
export interface Defaults {
  numCtx: number; // the model's context size
  numPredict: number;
  maxNumPredict: number;
}

export class SettingsPanel {
  private readonly dialog = byId<HTMLDialogElement>("settings");
  private readonly system = byId<HTMLTextAreaElement>("set-system");
  private readonly temperature = byId<HTMLInputElement>("set-temperature");
  private readonly numCtx = byId<HTMLInputElement>("set-num-ctx");
  private readonly think = byId<HTMLSelectElement>("set-think");
  private readonly numPredict = byId<HTMLInputElement>("set-num-predict");
  private readonly numPredictHint = byId("set-num-predict-hint");
  private readonly exports = byId("exports");

  /** `save` resolves true when the change was stored; the dialog stays open otherwise. */
  constructor(private readonly save: (settings: Settings) => Promise<boolean>) {
    byId("settings-cancel").addEventListener("click", () => this.dialog.close());
    byId("settings-save").addEventListener("click", () => void this.submit());
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close(); // a click on the backdrop
    });
  }

  open(values: ConversationSettings, conversationId: string | null, defaults: Defaults): void {
    this.system.value = values.system_prompt;
    this.temperature.value = values.temperature == null ? "" : String(values.temperature);
    this.numCtx.value = values.num_ctx == null ? "" : String(values.num_ctx);
    this.numCtx.placeholder = `server default (${defaults.numCtx})`;
    this.think.value = values.think == null ? "" : String(values.think);
    this.numPredict.value = values.num_predict == null ? "" : String(values.num_predict);
    this.numPredict.placeholder = `server default (${defaults.numPredict})`;
    this.numPredict.max = String(defaults.maxNumPredict); // the server refuses more (400)
    this.numPredictHint.textContent =
      `A reply stops after this many tokens (at most ${defaults.maxNumPredict}); Continue goes on from there.`;
    this.exports.hidden = conversationId === null;
    if (conversationId) {
      byId<HTMLAnchorElement>("export-markdown").href = exportUrl(conversationId, "markdown");
      byId<HTMLAnchorElement>("export-json").href = exportUrl(conversationId, "json");
    }
    openDialog(this.dialog, this.system);
  }

  private async submit(): Promise<void> {
    for (const input of [this.temperature, this.numCtx, this.numPredict]) {
      if (!input.reportValidity()) return;
    }
    const settings: Settings = {
      system_prompt: this.system.value,
      temperature: this.temperature.value === "" ? null : Number(this.temperature.value),
      num_ctx: this.numCtx.value === "" ? null : Math.round(Number(this.numCtx.value)),
      think: this.think.value === "" ? null : this.think.value === "true",
      num_predict: this.numPredict.value === "" ? null : Math.round(Number(this.numPredict.value)),
    };
    if (await this.save(settings)) this.dialog.close();
  }
}
