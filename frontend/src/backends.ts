// The admin's Backends panel: every model server of the fleet with its state and load, and Drain / Bring back.
import { api, plain } from "./api";
import { byId, h } from "./dom";
import type { Toast } from "./notify";
import type { BackendReport } from "./types";

const STATES: Record<BackendReport["state"], string> = {
  healthy: "healthy",
  half_open: "trying again",
  draining: "draining",
  out: "out",
};

export class BackendsPanel {
  private readonly list = byId("backends-list");
  private readonly error = byId("backends-error");
  private backends: BackendReport[] = [];

  constructor(private readonly toast: Toast) {
    byId("backends-refresh").addEventListener("click", () => void this.load());
    this.list.addEventListener("click", (event) => {
      const button = (event.target as Element).closest<HTMLButtonElement>("button[data-action=drain]");
      const backend = this.backends.find((b) => b.name === button?.closest<HTMLElement>("tr")?.dataset.name);
      if (button && backend) void this.drain(backend, button);
    });
  }

  async load(): Promise<void> {
    this.error.hidden = true;
    try {
      this.backends = (await api.backends()).backends;
      this.render();
    } catch (error) {
      this.fail(error);
    }
  }

  private render(): void {
    this.list.replaceChildren(...this.backends.map(row));
  }

  /** A draining backend finishes what it runs and takes nothing new; bringing it back puts it in rotation. */
  private async drain(backend: BackendReport, button: HTMLButtonElement): Promise<void> {
    const draining = backend.state !== "draining";
    button.disabled = true;
    this.error.hidden = true;
    try {
      const now = await api.drain(backend.name, draining);
      this.backends = this.backends.map((b) => (b.name === now.name ? now : b));
      this.render();
      this.toast.show(draining ? `Draining ${now.name}.` : `Brought ${now.name} back.`);
      this.list.querySelector<HTMLElement>(`tr[data-name="${CSS.escape(now.name)}"] button`)?.focus();
    } catch (error) {
      button.disabled = false;
      this.fail(error);
    }
  }

  private fail(error: unknown): void {
    this.error.textContent = plain(error);
    this.error.hidden = false;
  }
}

/** Every name, address and error here is the admin's or a server's text: set as text, never as HTML. */
function row(backend: BackendReport): HTMLTableRowElement {
  const draining = backend.state === "draining";
  const action = h("button", {
    type: "button",
    class: `button small ${draining ? "" : "danger-outline"}`,
    "data-action": "drain",
    "data-testid": "backend-drain",
    "aria-label": `${draining ? "Bring back" : "Drain"} ${backend.name}`,
    text: draining ? "Bring back" : "Drain",
  });
  const state = h("span", { class: `state state-${backend.state}`, text: STATES[backend.state] ?? backend.state });
  const name = h(
    "td",
    { "data-label": "Name", class: "backend-name" },
    h("span", { "data-testid": "backend-name", text: backend.name }),
    h("span", { class: "backend-url", "data-testid": "backend-url", title: backend.url, text: backend.url }),
  );
  const load = h(
    "td",
    { "data-label": "Running", title: "Generations running of the slots it has" },
    h("span", { "data-testid": "backend-running", text: String(backend.running) }),
    " / ",
    h("span", { "data-testid": "backend-slots", text: String(backend.slots) }),
  );
  return h(
    "tr",
    { "data-testid": "backend", "data-name": backend.name, "data-state": backend.state },
    name,
    cell("Kind", "backend-kind", backend.kind),
    h("td", { "data-label": "State", "data-testid": "backend-state" }, state),
    load,
    cell("Queued", "backend-queued", String(backend.queued)),
    cell("Models", "backend-models", backend.models.join(", ") || "none", "user-models"),
    cell("Last error", "backend-error", backend.last_error ?? "", "backend-last-error"),
    h("td", { class: "actions" }, h("div", { class: "row-actions" }, action)),
  );
}

function cell(label: string, testid: string, text: string, className?: string): HTMLTableCellElement {
  return h("td", { "data-label": label, "data-testid": testid, class: className, title: text || null, text });
}
