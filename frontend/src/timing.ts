// Where a reply's time went (the stored `timing`, docs/monitoring.md): a bar of its parts and their figures, shown
// under the reply when its stats line is clicked.
import { h } from "./dom";
import type { Timing } from "./types";

type Part = keyof Omit<Timing, "ttft_ms" | "total_ms">;

/** The parts in the order they happened, named as a user reads them; `model`: the model server's share. */
const PARTS: Array<{ key: Part; label: string; hint: string; model: boolean }> = [
  { key: "gateway_ms", label: "Gateway", hint: "clawdbot before the request went to the model server", model: false },
  { key: "queue_ms", label: "Queue", hint: "waiting for a free slot on the model server", model: false },
  { key: "model_load_ms", label: "Model load", hint: "the model server loading the model", model: true },
  { key: "prompt_eval_ms", label: "Reading the prompt", hint: "the model reading the conversation", model: true },
  { key: "first_token_ms", label: "First token", hint: "the rest of the wait for the first token", model: true },
  { key: "relay_ms", label: "To you", hint: "clawdbot passing the first token on", model: false },
  { key: "generation_ms", label: "Writing", hint: "the rest of the reply, token by token", model: true },
  { key: "finish_ms", label: "Finishing", hint: "clawdbot ending and storing the reply", model: false },
];

export function duration(ms: number): string {
  if (ms < 1) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return ms < 10_000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`;
}

/** The panel: a bar with a segment per part (its width its share of the whole), then each part's figure, and the
 * two sums the user felt: the first token and the whole reply. */
export function timingPanel(timing: Timing): HTMLElement {
  const total = timing.total_ms || 1;
  const bar = h("div", { class: "timing-bar", "aria-hidden": true });
  const rows = h("dl", { class: "timing-parts" });
  for (const part of PARTS) {
    const ms = timing[part.key];
    if (ms == null) continue;
    const segment = h("span", { class: `timing-seg timing-${part.key.replace("_ms", "")}`, title: part.label });
    segment.style.flexGrow = String(Math.max(ms / total, 0.004)); // a sliver stays visible
    bar.append(segment);
    const name = h("dt", { title: part.hint }, h("span", { class: `timing-dot timing-${part.key.replace("_ms", "")}` }));
    name.append(part.label);
    rows.append(name, h("dd", { "data-part": part.key, "data-ms": ms, text: duration(ms) }));
  }
  const sums = h("p", { class: "timing-sums" });
  if (timing.ttft_ms != null) sums.append(`First token after ${duration(timing.ttft_ms)} · `);
  sums.append(`${duration(timing.total_ms)} in all`);
  const model = PARTS.filter((p) => p.model).reduce((sum, p) => sum + (timing[p.key] ?? 0), 0);
  sums.append(` · ${Math.round((model / total) * 100)}% of it the model server's`);
  return h("div", { class: "timing-body" }, bar, rows, sums);
}
