// The sticky bar: model picker, connection state and how full the context is.
import { byId } from "./dom";
import { modelLabel, plural, tokens } from "./format";
import type { LinkState } from "./link";
import type { ContextUse, Models } from "./types";

export class Header {
  readonly picker = byId<HTMLSelectElement>("model");
  private readonly meter = byId("context");
  private readonly fill = byId("context-fill");
  private readonly text = byId("context-text");
  private readonly omitted = byId("omitted");
  private readonly link = byId("link-state");

  constructor(onModel: (name: string) => void) {
    this.picker.addEventListener("change", () => onModel(this.picker.value));
  }

  setModels(models: Models, selected: string): void {
    const options = models.models.map((model) => new Option(modelLabel(model), model.name));
    if (!models.models.some((model) => model.name === selected)) {
      options.unshift(new Option(`${selected} (not available)`, selected)); // a conversation keeps its model
    }
    this.picker.replaceChildren(...options);
    this.picker.value = selected;
    this.picker.title = models.reachable ? "Model" : "The model server cannot be reached";
  }

  setContext(context: ContextUse | null): void {
    const used = context?.in_use;
    this.meter.hidden = context === null || used == null;
    if (context && used != null) {
      const share = Math.min(used / context.num_ctx, 1);
      this.fill.style.width = `${(share * 100).toFixed(1)}%`;
      this.meter.classList.toggle("is-full", share > 0.85);
      this.text.textContent = `${tokens(used)} / ${tokens(context.num_ctx)}`;
      this.meter.title = `${tokens(used)} of ${tokens(context.num_ctx)} context tokens in use`;
    }
    const omitted = context?.omitted_turns ?? 0;
    this.omitted.hidden = omitted === 0;
    const turns = plural(omitted, "earlier turn", "earlier turns");
    this.omitted.textContent = omitted ? `${turns} left out of the context` : "";
  }

  setLink(state: LinkState): void {
    this.link.hidden = state !== "reconnecting"; // the first connection takes milliseconds: no flicker for it
    this.link.textContent = "Reconnecting…";
  }
}
