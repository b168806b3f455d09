// The sticky bar: model picker, connection state and how full the context is.
import { byId, h } from "./dom";
import { fewTokens, modelLabel, plural, tokens } from "./format";
import type { LinkState } from "./link";
import type { ContextUse, Models } from "./types";

const EXPLAINED =
  "How much of this conversation's context window (num_ctx) the last reply filled: the system prompt and the " +
  "turns sent with it, plus its answer, as the model counted them. The next message adds to it; when it would " +
  "not fit, the oldest turns are left out (never the system prompt).";

export class Header {
  readonly picker = byId<HTMLSelectElement>("model");
  private readonly meter = byId("context");
  private readonly fill = byId("context-fill");
  private readonly text = byId("context-text");
  private readonly info = byId("context-info");
  private readonly omitted = byId("omitted");
  private readonly link = byId("link-state");
  private reachable = true;

  constructor(onModel: (name: string) => void) {
    this.picker.addEventListener("change", () => {
      this.nameModel();
      onModel(this.picker.value);
    });
  }

  setModels(models: Models, selected: string): void {
    // Where each model runs is said once there is a choice of backends; a lone server is not worth naming.
    const names = new Set(models.models.flatMap((model) => model.backends ?? []));
    const where = names.size > 1 || models.models.some((model) => model.backends?.length === 0);
    const options = models.models.map((model) => {
      const option = new Option(modelLabel(model, where), model.name);
      // A model no backend serves now stays listed, marked and not chosen by mistake; a conversation on it keeps it.
      const unavailable = model.backends?.length === 0;
      option.disabled = unavailable && model.name !== selected;
      option.dataset.unavailable = String(unavailable);
      if (model.backends) {
        option.dataset.backends = model.backends.join(",");
        option.title = unavailable ? "No backend serves this model now" : `Runs on ${model.backends.join(", ")}`;
      }
      return option;
    });
    if (!models.models.some((model) => model.name === selected)) {
      options.unshift(new Option(`${selected} (not available)`, selected)); // a conversation keeps its model
    }
    this.picker.replaceChildren(...options);
    this.picker.value = selected;
    this.reachable = models.reachable;
    this.nameModel();
  }

  /** A long name is cut short with an ellipsis where there is little room: the tooltip has all of it. */
  private nameModel(): void {
    const label = this.picker.selectedOptions[0]?.text ?? "";
    this.picker.title = this.reachable ? `Model: ${label}` : `${label}: the model server cannot be reached`;
  }

  /** How full the context window was at the end of the last reply (context.py's in_use: that reply's prompt,
   * which is the system prompt and the turns sent, plus its answer, as the backend counted them). */
  setContext(context: ContextUse | null): void {
    const used = context?.in_use;
    const omitted = context?.omitted_turns ?? 0;
    const turns = plural(omitted, "earlier turn", "earlier turns");
    this.meter.hidden = context === null || used == null;
    if (context && used != null) {
      const share = Math.min(used / context.num_ctx, 1);
      this.fill.style.width = `${(share * 100).toFixed(1)}%`;
      this.meter.classList.toggle("is-full", share > 0.85);
      this.text.textContent = `${fewTokens(used)} / ${fewTokens(context.num_ctx)}`;
      const left = omitted ? ` · ${turns} left out` : "";
      const said = `Context: ${tokens(used)} of ${tokens(context.num_ctx)} tokens (the last reply's prompt and answer)`;
      this.meter.title = said + left;
      this.info.replaceChildren(
        h("p", { class: "context-info-head", text: said + left }),
        h("p", { text: EXPLAINED }),
      );
    }
    this.omitted.hidden = omitted === 0;
    this.omitted.textContent = omitted ? `${turns} left out of the context` : "";
  }

  setLink(state: LinkState): void {
    this.link.hidden = state !== "reconnecting"; // the first connection takes milliseconds: no flicker for it
    this.link.textContent = "Reconnecting…";
  }
}
