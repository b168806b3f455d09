// What replies are made with: the model and settings of the open conversation, or of the one the first send creates.
import { api } from "./api";
import type { Settings } from "./api";
import { byId } from "./dom";
import type { Header } from "./header";
import type { Alert } from "./notify";
import { SettingsPanel } from "./settings";
import type { ConversationSettings, Defaults } from "./settings";
import type { Conversation, Models } from "./types";

export interface ModelSettingsHooks {
  /** The open conversation; none before the first send creates it. */
  conversation(): Conversation | null;
  /** The server's answer to a change of the open conversation. */
  changed(conversation: Conversation): void;
  /** Re-read the open conversation. */
  reload(): Promise<void>;
}

export class ModelSettings {
  private readonly settings = new SettingsPanel((settings) => this.saveSettings(settings));
  private models: Models | null = null;
  draft: Settings = {}; // settings of the conversation that the first send creates

  constructor(
    private readonly header: Header,
    private readonly alert: Alert,
    private readonly hooks: ModelSettingsHooks,
  ) {}

  async loadModels(): Promise<void> {
    try {
      this.models = await api.models();
    } catch (error) {
      this.alert.show(error);
      return;
    }
    this.syncModel();
  }

  syncModel(): void {
    if (!this.models) return;
    const selected = this.hooks.conversation()?.model ?? this.draft.model ?? this.models.default;
    this.header.setModels(this.models, selected);
    const problem = this.models.problem;
    byId("empty-model").textContent = `Chatting with ${selected}.`;
    const note = byId("empty-problem");
    note.hidden = !problem;
    note.textContent = problem ?? "";
  }

  async pickModel(name: string): Promise<void> {
    const conversation = this.hooks.conversation();
    if (!conversation) {
      this.draft.model = name;
      this.syncModel();
      return;
    }
    try {
      this.hooks.changed((await api.change(conversation.id, { model: name })).conversation);
    } catch (error) {
      this.alert.show(error);
    }
    this.syncModel();
  }

  /** The models are read again first: an admin may have changed their sizes or the reply lengths since. */
  async openSettings(): Promise<void> {
    await this.loadModels();
    const d = this.draft;
    const conversation = this.hooks.conversation();
    const values: ConversationSettings = conversation ?? {
      system_prompt: d.system_prompt ?? "",
      temperature: d.temperature ?? null,
      num_ctx: d.num_ctx ?? null,
      think: d.think ?? null,
      num_predict: d.num_predict ?? null,
    };
    this.settings.open(values, conversation?.id ?? null, this.defaults(conversation?.model ?? this.draft.model));
  }

  /** The server's defaults for a conversation with this model: its context size is the model's own (so that the
   * page and API clients load the model alike), the reply length is the platform's. */
  private defaults(model: string | undefined): Defaults {
    const models = this.models;
    const name = model ?? models?.default;
    const numCtx = models?.models.find((m) => m.name === name)?.num_ctx ?? models?.num_ctx ?? 8192;
    return { numCtx, numPredict: models?.num_predict ?? 4096, maxNumPredict: models?.max_num_predict ?? 32768 };
  }

  private async saveSettings(settings: Settings): Promise<boolean> {
    const conversation = this.hooks.conversation();
    if (!conversation) {
      this.draft = { ...this.draft, ...settings };
      return true;
    }
    try {
      this.hooks.changed((await api.change(conversation.id, settings)).conversation);
      void this.hooks.reload(); // num_ctx changes how full the context is
      return true;
    } catch (error) {
      this.alert.show(error);
      return false;
    }
  }
}
