// The admin view: every user with their role, state and limits; add a user; disable, edit or reset one; the
// backends (backends.ts), the platform's settings (platform.ts), and the live view and usage (monitor.ts).
import { api, plain } from "./api";
import type { UserChange } from "./api";
import { BackendsPanel } from "./backends";
import { byId, h } from "./dom";
import { when } from "./format";
import type { Toast } from "./notify";
import { MonitorPanel, UsagePanel } from "./monitor";
import { PlatformPanel } from "./platform";
import type { User } from "./types";

export interface AdminHooks {
  /** The admin changed their own account (their role, say): the page updates its menu. */
  changedSelf(user: User): void;
  closed(): void;
}

export class AdminPanel {
  private readonly dialog = byId<HTMLDialogElement>("admin");
  private readonly list = byId("admin-list");
  private readonly error = byId("admin-error");
  private readonly addForm = byId<HTMLFormElement>("admin-add");
  private readonly addName = byId<HTMLInputElement>("admin-add-name");
  private readonly addPassword = byId<HTMLInputElement>("admin-add-password");
  private readonly addAdmin = byId<HTMLInputElement>("admin-add-admin");
  private readonly addSubmit = byId<HTMLButtonElement>("admin-add-submit");
  private readonly editor: UserEditor;
  private readonly platform: PlatformPanel;
  private readonly backends: BackendsPanel;
  private readonly monitor = new MonitorPanel();
  private readonly usage = new UsagePanel();
  private users: User[] = [];
  private models: string[] = [];
  private me = "";

  constructor(
    private readonly hooks: AdminHooks,
    private readonly toast: Toast,
  ) {
    this.editor = new UserEditor((user) => this.updated(user));
    this.platform = new PlatformPanel(toast);
    this.backends = new BackendsPanel(toast);
    byId("admin-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => {
      this.monitor.stop();
      hooks.closed();
    });
    this.addForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.add();
    });
    this.list.addEventListener("click", (event) => {
      const button = (event.target as Element).closest<HTMLElement>("button[data-action]");
      const user = this.users.find((u) => u.id === button?.closest<HTMLElement>("tr")?.dataset.id);
      if (!button || !user) return;
      if (button.dataset.action === "toggle") void this.toggle(user);
      else this.editor.open(user, this.models);
    });
  }

  open(myId: string): void {
    this.me = myId;
    this.error.hidden = true;
    this.addForm.reset();
    if (!this.dialog.open) this.dialog.showModal();
    byId("admin-close").focus();
    void this.load();
    void this.platform.load();
    void this.backends.load();
    this.monitor.start();
    void this.usage.load();
  }

  close(): void {
    this.editor.close(); // closing a dialog that is not open does nothing
    this.dialog.close();
  }

  private async load(): Promise<void> {
    try {
      const [users, models] = await Promise.all([api.users(), api.models()]);
      this.users = users.users;
      this.models = models.models.map((model) => model.name);
      this.render();
    } catch (error) {
      this.fail(error);
    }
  }

  private fail(error: unknown): void {
    this.error.textContent = plain(error);
    this.error.hidden = false;
  }

  private render(): void {
    this.list.replaceChildren(...this.users.map((user) => this.row(user)));
  }

  private row(user: User): HTMLTableRowElement {
    const self = user.id === this.me;
    const label = h("span", {}, user.name);
    if (self) label.append(" ", h("span", { class: "badge", text: "you" }));
    if (user.sso) label.append(" ", h("span", { class: "badge", text: "SSO" }));
    const name = h("td", { class: "user-name", "data-testid": "admin-user-name", "data-label": "Name" }, label);
    const toggle = h("button", {
      type: "button",
      class: `button small ${user.disabled ? "" : "danger-outline"}`,
      "data-action": "toggle",
      "data-testid": "admin-toggle-disabled",
      "aria-label": `${user.disabled ? "Enable" : "Disable"} ${user.name}`,
      text: user.disabled ? "Enable" : "Disable",
    });
    const edit = h("button", {
      type: "button",
      class: "button small",
      "data-action": "edit",
      "data-testid": "admin-edit-open",
      "aria-label": `Edit ${user.name}`,
      text: "Edit",
    });
    return h(
      "tr",
      {
        "data-testid": "admin-user",
        "data-id": user.id,
        "data-name": user.name,
        "data-disabled": String(user.disabled),
        "data-role": user.role,
        class: user.disabled ? "is-disabled" : null,
      },
      name,
      cell("Role", "admin-user-role", user.role),
      cell("Status", "admin-user-status", user.disabled ? "disabled" : "active"),
      cell("Limits", "admin-user-limits", limits(user)),
      cell("Models", "admin-user-models", user.models?.join(", ") ?? "all", "user-models"),
      cell("Last sign-in", "admin-user-login", when(user.last_login_at)),
      // No disabling oneself (the server refuses it too); editing one's own limits is fine.
      h("td", { class: "actions" }, h("div", { class: "row-actions" }, ...(self ? [edit] : [toggle, edit]))),
    );
  }

  private async toggle(user: User): Promise<void> {
    this.error.hidden = true;
    try {
      this.updated((await api.changeUser(user.id, { disabled: !user.disabled })).user);
    } catch (error) {
      this.fail(error);
    }
  }

  private updated(user: User): void {
    this.users = this.users.map((u) => (u.id === user.id ? user : u));
    this.render();
    this.toast.show(`Saved ${user.name}.`);
    // Focus back on the row's first button: the table was rebuilt under it.
    this.list.querySelector<HTMLElement>(`tr[data-id="${CSS.escape(user.id)}"] button`)?.focus();
    if (user.id === this.me) this.hooks.changedSelf(user);
  }

  private async add(): Promise<void> {
    this.addSubmit.disabled = true;
    this.error.hidden = true;
    try {
      const role = this.addAdmin.checked ? "admin" : "user";
      const { user } = await api.addUser(this.addName.value.trim(), this.addPassword.value, role);
      this.users = [...this.users, user];
      this.render();
      this.addForm.reset();
      this.toast.show(`Added ${user.name}.`);
      this.addName.focus();
    } catch (error) {
      this.fail(error);
    } finally {
      this.addSubmit.disabled = false;
    }
  }
}

/** A table cell; `label` names it where a phone shows each row as a card. */
function cell(label: string, testid: string, text: string, className?: string): HTMLTableCellElement {
  return h("td", { "data-label": label, "data-testid": testid, class: className, text });
}

function limits(user: User): string {
  const parts: string[] = [];
  if (user.max_running != null) parts.push(`${user.max_running} at once`);
  if (user.requests_per_minute != null) parts.push(`${user.requests_per_minute}/min`);
  if (user.tokens_per_day != null) parts.push(`${user.tokens_per_day.toLocaleString()} tokens/day`);
  if (user.tokens_per_month != null) parts.push(`${user.tokens_per_month.toLocaleString()} tokens/month`);
  return parts.join(" · ") || "none";
}

/** One user's settings in a dialog of its own; only what changed is sent. */
class UserEditor {
  private readonly dialog = byId<HTMLDialogElement>("user-edit");
  private readonly form = byId<HTMLFormElement>("user-edit-form");
  private readonly title = byId("user-edit-title");
  private readonly role = byId<HTMLSelectElement>("user-edit-role");
  private readonly disabled = byId<HTMLInputElement>("user-edit-disabled");
  private readonly running = byId<HTMLInputElement>("user-edit-running");
  private readonly rpm = byId<HTMLInputElement>("user-edit-rpm");
  private readonly day = byId<HTMLInputElement>("user-edit-day");
  private readonly month = byId<HTMLInputElement>("user-edit-month");
  private readonly models = byId("user-edit-models");
  private readonly password = byId<HTMLInputElement>("user-edit-password");
  private readonly error = byId("user-edit-error");
  private readonly save = byId<HTMLButtonElement>("user-edit-save");
  private user: User | null = null;

  constructor(private readonly saved: (user: User) => void) {
    byId("user-edit-cancel").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.submit();
    });
  }

  close(): void {
    this.dialog.close();
  }

  open(user: User, available: string[]): void {
    this.user = user;
    this.title.textContent = `Edit ${user.name}`;
    this.role.value = user.role;
    this.disabled.checked = user.disabled;
    this.running.value = user.max_running == null ? "" : String(user.max_running);
    this.rpm.value = user.requests_per_minute == null ? "" : String(user.requests_per_minute);
    this.day.value = user.tokens_per_day == null ? "" : String(user.tokens_per_day);
    this.month.value = user.tokens_per_month == null ? "" : String(user.tokens_per_month);
    this.password.value = "";
    this.error.hidden = true;
    const allowed = new Set(user.models ?? []);
    const names = [...available, ...[...allowed].filter((name) => !available.includes(name))];
    this.models.replaceChildren(
      ...names.map((name) => {
        const box = h("input", {
          type: "checkbox",
          value: name,
          "data-testid": "admin-edit-model",
          "data-model": name,
          checked: allowed.has(name),
        });
        const gone = available.includes(name) ? "" : " (not available)";
        return h("label", { class: "check" }, box, name + gone);
      }),
    );
    if (!names.length) this.models.append(h("p", { class: "field-hint", text: "No models are available now." }));
    this.dialog.showModal();
    this.role.focus();
  }

  private change(user: User): UserChange {
    const change: UserChange = {};
    const number = (input: HTMLInputElement): number | null => (input.value === "" ? null : Number(input.value));
    if (this.disabled.checked !== user.disabled) change.disabled = this.disabled.checked;
    if (this.role.value !== user.role) change.role = this.role.value as User["role"];
    if (number(this.running) !== user.max_running) change.max_running = number(this.running);
    if (number(this.rpm) !== user.requests_per_minute) change.requests_per_minute = number(this.rpm);
    if (number(this.day) !== user.tokens_per_day) change.tokens_per_day = number(this.day);
    if (number(this.month) !== user.tokens_per_month) change.tokens_per_month = number(this.month);
    const ticked = [...this.models.querySelectorAll<HTMLInputElement>("input:checked")].map((box) => box.value);
    const models = ticked.length ? ticked : null;
    const same = (a: string[] | null, b: string[] | null): boolean =>
      JSON.stringify(a && [...a].sort()) === JSON.stringify(b && [...b].sort());
    if (!same(models, user.models)) change.models = models;
    if (this.password.value) change.password = this.password.value;
    return change;
  }

  private async submit(): Promise<void> {
    const user = this.user;
    if (!user) return;
    const change = this.change(user);
    if (!Object.keys(change).length) {
      this.dialog.close();
      return;
    }
    this.save.disabled = true;
    this.error.hidden = true;
    try {
      const answer = await api.changeUser(user.id, change);
      this.dialog.close();
      this.saved(answer.user);
    } catch (error) {
      this.error.textContent = plain(error);
      this.error.hidden = false;
    } finally {
      this.save.disabled = false;
    }
  }
}
