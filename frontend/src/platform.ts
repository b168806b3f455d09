// The admin's platform settings: reply length and time limits, model-made titles, each model's context size.
import { api, plain } from "./api";
import { byId, h } from "./dom";
import type { Toast } from "./notify";
import type { PlatformChange, PlatformSetting, PlatformSettings } from "./types";

type NumberName = "num_predict" | "max_num_predict" | "max_reply_seconds";

export class PlatformPanel {
  private readonly form = byId<HTMLFormElement>("platform-form");
  private readonly inputs: Record<NumberName, HTMLInputElement> = {
    num_predict: byId<HTMLInputElement>("platform-num-predict"),
    max_num_predict: byId<HTMLInputElement>("platform-max-num-predict"),
    max_reply_seconds: byId<HTMLInputElement>("platform-max-reply-seconds"),
  };
  private readonly titles = byId<HTMLInputElement>("platform-model-titles");
  private readonly models = byId("platform-models");
  private readonly error = byId("platform-error");
  private readonly save = byId<HTMLButtonElement>("platform-save");
  private shown: PlatformSettings | null = null;

  constructor(private readonly toast: Toast) {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.submit();
    });
  }

  async load(): Promise<void> {
    this.error.hidden = true;
    try {
      this.show(await api.platform());
    } catch (error) {
      this.fail(error);
    }
  }

  private show(platform: PlatformSettings): void {
    this.shown = platform;
    for (const [name, input] of Object.entries(this.inputs) as [NumberName, HTMLInputElement][]) {
      fill(input, platform.settings[name]);
    }
    this.titles.checked = platform.settings.model_titles.value;
    this.models.replaceChildren(
      ...platform.models.flatMap((model) => {
        const input = h("input", {
          type: "number",
          min: 256,
          max: 1048576,
          step: 256,
          inputmode: "numeric",
          "data-testid": "platform-model-num-ctx",
          "data-model": model.name,
          "aria-label": `Context size of ${model.name}`,
        });
        // Without an admin's size a model gets its Modelfile's, else --num-ctx: that is its default here.
        fill(input, { value: model.num_ctx, default: model.own ?? platform.num_ctx_default, saved: model.saved });
        return [h("span", { text: model.name, title: model.name }), input];
      }),
    );
    if (!platform.models.length) this.models.append(h("p", { class: "field-hint", text: "No models are listed." }));
  }

  /** Only what differs from what was shown is sent; an emptied field goes back to the default (null). */
  private change(shown: PlatformSettings): PlatformChange {
    const change: PlatformChange = {};
    for (const [name, input] of Object.entries(this.inputs) as [NumberName, HTMLInputElement][]) {
      const wanted = read(input);
      if (differs(wanted, shown.settings[name])) change[name] = wanted;
    }
    const titles = shown.settings.model_titles;
    if (this.titles.checked !== titles.value) change.model_titles = this.titles.checked;
    const sizes: Record<string, number | null> = {};
    for (const input of this.models.querySelectorAll<HTMLInputElement>("input")) {
      const model = shown.models.find((m) => m.name === input.dataset.model);
      const wanted = read(input);
      if (model && differs(wanted, { value: model.num_ctx, saved: model.saved })) sizes[model.name] = wanted;
    }
    if (Object.keys(sizes).length) change.num_ctx = sizes;
    return change;
  }

  private async submit(): Promise<void> {
    const shown = this.shown;
    if (!shown) return;
    for (const input of this.form.querySelectorAll<HTMLInputElement>("input[type=number]")) {
      if (!input.reportValidity()) return;
    }
    const change = this.change(shown);
    if (!Object.keys(change).length) return;
    this.save.disabled = true;
    this.error.hidden = true;
    try {
      this.show(await api.changePlatform(change));
      this.toast.show("Saved the platform settings.");
    } catch (error) {
      this.fail(error);
    } finally {
      this.save.disabled = false;
    }
  }

  private fail(error: unknown): void {
    this.error.textContent = plain(error);
    this.error.hidden = false;
  }
}

/** A saved value is shown; a default is the placeholder of an empty field. */
function fill(input: HTMLInputElement, setting: PlatformSetting<number>): void {
  input.value = setting.saved ? String(setting.value) : "";
  input.placeholder = `default (${setting.default})`;
}

function read(input: HTMLInputElement): number | null {
  return input.value === "" ? null : Number(input.value);
}

function differs(wanted: number | null, setting: Pick<PlatformSetting<number>, "value" | "saved">): boolean {
  return wanted === null ? setting.saved : !setting.saved || wanted !== setting.value;
}
