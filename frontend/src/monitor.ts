// The admin's Monitor and Usage (docs/monitoring.md): the live operations view, redrawn with each view the server
// pushes (every 2 s) while the admin view is open, and the usage rollups with a CSV export. The charts' library
// (uPlot) loads only here.
import { api, monitorEventsUrl, usageUrl } from "./api";
import { byId, h } from "./dom";
import { tokens } from "./format";
import { duration } from "./timing";
import type { MonitorView, UsageReport, WindowTable } from "./types";

type Plot = import("uplot");
const SOURCES = ["chat", "raw", "all"] as const;
const RETRY_MS = 5000;

function ms(value: number | null): string {
  return value == null ? "–" : duration(value);
}

function bytes(value: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit ? `${value.toFixed(1)} ${units[unit]}` : `${value} B`;
}

/** A chart that fits its box, drawn by uPlot (loaded on first use). */
async function chart(box: HTMLElement, series: string[], data: number[][], old: Plot | null): Promise<Plot> {
  const { default: uPlot } = await import("uplot");
  const width = Math.max(box.clientWidth, 280);
  if (old && old.series.length === series.length + 1) {
    old.setSize({ width, height: 160 });
    old.setData(data as uPlot.AlignedData);
    return old;
  }
  old?.destroy();
  const colors = ["#2563eb", "#10b981", "#f59e0b", "#a855f7"];
  return new uPlot(
    {
      width,
      height: 160,
      series: [{}, ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 1.5 }))],
      axes: [{ stroke: "#888" }, { stroke: "#888" }],
    },
    data as uPlot.AlignedData,
    box,
  );
}

export class MonitorPanel {
  private source: EventSource | null = null;
  private retry: number | undefined;
  private readonly now = byId("monitor-now");
  private readonly models = byId("monitor-models");
  private readonly table = byId("monitor-table");
  private readonly backends = byId("monitor-backends");
  private readonly chartBox = byId("monitor-chart");
  private readonly error = byId("monitor-error");
  private plot: Plot | null = null;

  /** Reads the view's event stream: the server pushes it at once and every 2 s, built once for all who watch. */
  start(): void {
    this.stop();
    const source = new EventSource(monitorEventsUrl(1));
    source.onmessage = (message: MessageEvent<string>) => {
      const event = JSON.parse(message.data) as { type: string; view?: MonitorView };
      if (event.type === "monitor" && event.view) void this.show(event.view);
    };
    source.onerror = () => void this.lost(source);
    this.source = source;
  }

  stop(): void {
    window.clearTimeout(this.retry);
    this.source?.close();
    this.source = null;
  }

  /** The browser reconnects a dropped stream by itself; one the server refused (signed out, no longer an admin) it
   * gives up on: the plain request says why, and the stream is tried again a while later. */
  private async lost(source: EventSource): Promise<void> {
    this.error.textContent = "The live view lost its connection; reconnecting…";
    this.error.hidden = false;
    if (source.readyState !== EventSource.CLOSED || source !== this.source) return;
    try {
      await api.monitor();
    } catch (error) {
      this.error.textContent = error instanceof Error ? error.message : String(error);
    }
    if (source === this.source) this.retry = window.setTimeout(() => this.start(), RETRY_MS);
  }

  private async show(view: MonitorView): Promise<void> {
    this.error.hidden = true;
    this.render(view);
    const history = view.history;
    const data = [
      history.map((p) => p.at / 1000),
      history.map((p) => p.connections),
      history.map((p) => p.running),
      history.map((p) => p.waiting),
      history.map((p) => p.tokens_per_s),
    ];
    this.plot = await chart(this.chartBox, ["connections", "running", "waiting", "tokens/s"], data, this.plot);
  }

  private render(view: MonitorView): void {
    const now = view.now;
    const open = now.open;
    this.now.textContent =
      `Open: ${open.websocket} WebSocket, ${open.sse} event streams, ${open.raw} raw · ` +
      `replies running ${now.running}, waiting ${now.waiting} · ${now.tokens_per_s.toFixed(1)} tokens/s · ` +
      `gateway CPU ${Math.round(now.cpu_percent)} %, memory ${bytes(now.rss_bytes)}`;
    const models = [...new Set([...Object.keys(now.running_by_model), ...Object.keys(now.waiting_by_model)])].sort();
    this.models.replaceChildren(
      ...models.map((model) =>
        h("li", {
          "data-model": model,
          text: `${model || "?"}: ${now.running_by_model[model] ?? 0} running, ${now.waiting_by_model[model] ?? 0} waiting`,
        }),
      ),
    );
    const rows: HTMLTableRowElement[] = [];
    for (const [name, window] of Object.entries(view.windows)) {
      for (const source of SOURCES) rows.push(windowRow(name, source, window));
    }
    this.table.replaceChildren(...rows);
    this.backends.replaceChildren(
      ...view.backends.map((b) => {
        const memory = b.server_memory.visible ? `server memory ${bytes(b.server_memory.rss_bytes ?? 0)}` : b.server_memory.why;
        const item = h("li", { "data-name": b.name }, `${b.name}: ${b.state}, ${b.running}/${b.slots} running, ${b.queued} queued · ${memory}`);
        for (const model of b.resident) {
          const where = `${model.name}: ${bytes(model.size)}, ${bytes(model.size_vram)} in GPU memory`;
          item.append(h("div", { class: model.spilled ? "monitor-warn" : "", text: model.spilled ? `${where} — partly on the CPU` : where }));
        }
        return item;
      }),
      h("li", {
        "data-testid": "monitor-gpu",
        text: view.gpu.visible
          ? view.gpu.devices.map((d) => `GPU ${d.index} ${d.name}: ${d.utilisation_percent} %, ${bytes(d.memory_used)} of ${bytes(d.memory_total)}`).join(" · ")
          : `GPU: ${view.gpu.why}`,
      }),
    );
  }
}

function windowRow(name: string, source: string, window: WindowTable): HTMLTableRowElement {
  const t = window[source as "chat" | "raw" | "all"];
  const first = source === "chat";
  return h(
    "tr",
    { "data-window": name, "data-source": source },
    h("td", { text: first ? name : "" }),
    h("td", { text: first ? `${window.connections.peak} / ${window.connections.mean}` : "" }),
    h("td", { text: source }),
    h("td", { "data-field": "requests", text: String(t.requests) }),
    h(
      "td",
      {},
      h("span", { "data-field": "failures", text: String(t.failures) }),
      h("span", {
        class: "monitor-causes",
        "data-field": "causes",
        text: t.failures ? ` (${Object.entries(t.causes).map(([cause, n]) => `${cause} ${n}`).join(", ")})` : "",
      }),
    ),
    h("td", { "data-field": "ttft", text: `${ms(t.ttft_ms.mean)} / ${ms(t.ttft_ms.p50)} / ${ms(t.ttft_ms.p99)}` }),
    h("td", { text: `${ms(t.duration_ms.mean)} / ${ms(t.duration_ms.p99)}` }),
    h("td", { "data-field": "tokens_per_s", text: t.tokens_per_s.toFixed(1) }),
  );
}

/** Everyone's usage in the admin view (`usage-…` elements), or with `own` the user's own (`my-usage-…`). */
export class UsagePanel {
  private readonly range: HTMLSelectElement;
  private readonly group: HTMLSelectElement;
  private readonly list: HTMLElement;
  private readonly csv: HTMLAnchorElement;
  private readonly chartBox: HTMLElement;
  private readonly error: HTMLElement;
  private plot: Plot | null = null;

  constructor(private readonly own = false) {
    const prefix = own ? "my-usage" : "usage";
    this.range = byId<HTMLSelectElement>(`${prefix}-range`);
    this.group = byId<HTMLSelectElement>(`${prefix}-group`);
    this.list = byId(`${prefix}-list`);
    this.csv = byId<HTMLAnchorElement>(`${prefix}-csv`);
    this.chartBox = byId(`${prefix}-chart`);
    this.error = byId(`${prefix}-error`);
    for (const select of [this.range, this.group]) select.addEventListener("change", () => void this.load());
  }

  private params(): Record<string, string> {
    const now = Date.now();
    const days = Number(this.range.value);
    return {
      from: String(now - days * 86_400_000),
      to: String(now),
      by: "day",
      group: this.group.value,
      offset: String(-new Date().getTimezoneOffset()),
    };
  }

  async load(): Promise<void> {
    const params = this.params();
    this.csv.href = usageUrl({ ...params, format: "csv" }, this.own);
    try {
      const report = await api.usage(params, this.own);
      this.error.hidden = true;
      this.render(report);
      const days = [...new Set(report.rows.map((r) => r.bucket))].sort((a, b) => a - b);
      const out = days.map((day) => report.rows.filter((r) => r.bucket === day).reduce((n, r) => n + r.output_tokens, 0));
      const into = days.map((day) => report.rows.filter((r) => r.bucket === day).reduce((n, r) => n + r.prompt_tokens, 0));
      this.plot = await chart(this.chartBox, ["tokens out", "tokens in"], [days.map((d) => d / 1000), out, into], this.plot);
    } catch (error) {
      this.error.textContent = error instanceof Error ? error.message : String(error);
      this.error.hidden = false;
    }
  }

  private render(report: UsageReport): void {
    const key = this.group.value as "user" | "model" | "key" | "backend" | "source";
    const sums = new Map<string, { requests: number; failures: number; prompt_tokens: number; output_tokens: number }>();
    for (const row of report.rows) {
      const name = String(row[key] ?? "");
      const sum = sums.get(name) ?? { requests: 0, failures: 0, prompt_tokens: 0, output_tokens: 0 };
      sum.requests += row.requests;
      sum.failures += row.failures;
      sum.prompt_tokens += row.prompt_tokens;
      sum.output_tokens += row.output_tokens;
      sums.set(name, sum);
    }
    const label = (value: string): string => {
      if (key === "user") return report.names.users[value] ?? value;
      if (key === "key") return value ? (report.names.keys[value] ?? value) : "the chat page";
      return value || "–";
    };
    this.list.replaceChildren(
      ...[...sums.entries()]
        .sort((a, b) => b[1].output_tokens - a[1].output_tokens)
        .map(([name, sum]) =>
          h(
            "tr",
            { "data-name": name },
            h("td", { text: label(name) }), // a name is a user's text: never HTML
            h("td", { "data-field": "requests", text: tokens(sum.requests) }),
            h("td", { "data-field": "failures", text: tokens(sum.failures) }),
            h("td", { "data-field": "prompt_tokens", text: tokens(sum.prompt_tokens) }),
            h("td", { "data-field": "output_tokens", text: tokens(sum.output_tokens) }),
          ),
        ),
    );
  }
}
