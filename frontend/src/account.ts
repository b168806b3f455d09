// The signed-in user's menu in the header: API keys, their usage, password, the admin view, sign out.
import { api, ApiError, plain } from "./api";
import { confirmDialog } from "./confirm";
import { byId, copyText, flash, h, openDialog } from "./dom";
import { when } from "./format";
import { UsagePanel } from "./monitor";
import type { Toast } from "./notify";
import type { ApiKey, Session } from "./types";

export interface AccountHooks {
  admin(): void;
  signOut(): void;
}

/** A menu button (aria-haspopup) whose items are reached with the arrow keys; Esc or a click elsewhere closes it. */
export class AccountMenu {
  private readonly root = byId("account");
  private readonly button = byId<HTMLButtonElement>("account-open");
  private readonly menu = byId("account-items");
  private readonly passwordItem = byId("account-password");
  private readonly adminItem = byId("account-admin");
  private readonly signOutItem = byId("sign-out");
  private readonly password: PasswordDialog;
  private readonly keys: KeysDialog;
  private readonly usage = new UsagePanel(true);

  constructor(hooks: AccountHooks, toast: Toast) {
    this.password = new PasswordDialog(toast);
    this.keys = new KeysDialog();
    this.button.addEventListener("click", () => this.toggle(this.menu.hidden));
    this.button.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        this.toggle(true, event.key === "ArrowUp" ? -1 : 0);
      }
    });
    this.menu.addEventListener("keydown", (event) => this.key(event));
    document.addEventListener("click", (event) => {
      if (!this.menu.hidden && !this.root.contains(event.target as Node)) this.toggle(false, null);
    });
    const item = (id: string, run: () => void): void =>
      byId(id).addEventListener("click", () => {
        this.toggle(false, null);
        run();
      });
    item("account-keys", () => this.keys.open());
    item("account-usage", () => {
      const dialog = byId<HTMLDialogElement>("my-usage");
      openDialog(dialog, byId("my-usage-close"));
      void this.usage.load();
    });
    byId("my-usage-close").addEventListener("click", () => byId<HTMLDialogElement>("my-usage").close());
    item("account-password", () => this.password.open());
    item("account-admin", () => hooks.admin());
    item("sign-out", () => hooks.signOut());
  }

  /** Shown for a person signed in with a session or through the proxy's header; not with --no-auth (`none`). */
  set(session: Session | null): void {
    const shown = session !== null && (session.via === "session" || session.via === "sso");
    this.root.hidden = !shown;
    if (!session || !shown) return;
    byId("account-name").textContent = byId("account-who").textContent = session.user.name;
    this.button.setAttribute("aria-label", `Account: ${session.user.name}`);
    this.button.title = `Signed in as ${session.user.name}`;
    this.adminItem.hidden = session.user.role !== "admin";
    // The proxy decides who an SSO user is: there is no password here to change and no session to end.
    const own = session.via === "session";
    this.passwordItem.hidden = !own;
    this.signOutItem.hidden = !own;
  }

  private get items(): HTMLElement[] {
    return [...this.menu.querySelectorAll<HTMLElement>("[role=menuitem]")].filter((item) => !item.hidden);
  }

  /** `focus`: the index of the item to focus (negative from the end); null leaves the focus where it is. */
  private toggle(open: boolean, focus: number | null = 0): void {
    this.menu.hidden = !open;
    this.button.setAttribute("aria-expanded", String(open));
    if (open && focus !== null) this.items.at(focus)?.focus();
  }

  private key(event: KeyboardEvent): void {
    const items = this.items;
    const at = items.indexOf(document.activeElement as HTMLElement);
    const moves: Record<string, number> = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 };
    if (event.key in moves) {
      event.preventDefault();
      items[(moves[event.key]! + items.length) % items.length]?.focus();
    } else if (event.key === "Escape") {
      event.preventDefault(); // not also a Stop for the reply being written
      this.toggle(false, null);
      this.button.focus();
    } else if (event.key === "Tab") {
      this.toggle(false, null);
    }
  }
}

/** Shows an error inside a dialog, in the server's words. */
function showError(element: HTMLElement, error: unknown): void {
  element.textContent = plain(error);
  element.hidden = false;
}

class PasswordDialog {
  private readonly dialog = byId<HTMLDialogElement>("password");
  private readonly form = byId<HTMLFormElement>("password-form");
  private readonly current = byId<HTMLInputElement>("password-current");
  private readonly next = byId<HTMLInputElement>("password-new");
  private readonly repeat = byId<HTMLInputElement>("password-repeat");
  private readonly error = byId("password-error");
  private readonly save = byId<HTMLButtonElement>("password-save");

  constructor(private readonly toast: Toast) {
    byId("password-cancel").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.submit();
    });
    this.repeat.addEventListener("input", () => this.repeat.setCustomValidity(""));
    this.dialog.addEventListener("close", () => this.form.reset());
  }

  open(): void {
    this.form.reset();
    this.error.hidden = true;
    openDialog(this.dialog, this.current);
  }

  private async submit(): Promise<void> {
    if (this.next.value !== this.repeat.value) {
      this.repeat.setCustomValidity("The two new passwords differ.");
      this.repeat.reportValidity();
      return;
    }
    this.save.disabled = true;
    this.error.hidden = true;
    try {
      await api.changePassword(this.current.value, this.next.value);
      this.dialog.close();
      this.toast.show("Password changed. Other browsers signed in as you have been signed out.");
    } catch (error) {
      const wrong = error instanceof ApiError && error.code === "bad_credentials";
      showError(this.error, wrong ? "The current password is wrong." : error);
      (wrong ? this.current : this.next).focus();
    } finally {
      this.save.disabled = false;
    }
  }
}

class KeysDialog {
  private readonly dialog = byId<HTMLDialogElement>("keys");
  private readonly list = byId("keys-list");
  private readonly empty = byId("keys-empty");
  private readonly form = byId<HTMLFormElement>("keys-form");
  private readonly name = byId<HTMLInputElement>("keys-name");
  private readonly create = byId<HTMLButtonElement>("keys-create");
  private readonly secretBox = byId("keys-secret-box");
  private readonly secret = byId("keys-secret");
  private readonly error = byId("keys-error");

  constructor() {
    byId("keys-close").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.add();
    });
    this.list.addEventListener("click", (event) => {
      const button = (event.target as Element).closest<HTMLElement>("button[data-key]");
      if (button) void this.revoke(button.dataset.key!, button.dataset.name!);
    });
    const copy = byId("keys-copy");
    copy.addEventListener("click", () => {
      copyText(this.secret.textContent ?? "").then(
        () => flash(copy, "Copied"),
        (error) => showError(this.error, error),
      );
    });
    // The secret is shown once: closing the dialog forgets it.
    this.dialog.addEventListener("close", () => this.forgetSecret());
  }

  open(): void {
    this.forgetSecret();
    this.error.hidden = true;
    this.form.reset();
    this.list.replaceChildren();
    this.empty.hidden = true;
    openDialog(this.dialog, this.name);
    void this.load();
  }

  private forgetSecret(): void {
    this.secret.textContent = "";
    this.secretBox.hidden = true;
  }

  private async load(): Promise<void> {
    try {
      this.render((await api.keys()).keys);
    } catch (error) {
      showError(this.error, error);
    }
  }

  private render(keys: ApiKey[]): void {
    this.list.replaceChildren(...keys.map((key) => this.row(key)));
    this.empty.hidden = keys.length > 0;
  }

  private row(key: ApiKey): HTMLTableRowElement {
    const revoke = h("button", {
      type: "button",
      class: "button small danger-outline",
      "data-key": key.id,
      "data-name": key.name,
      "data-testid": "keys-revoke",
      "aria-label": `Revoke ${key.name}`,
      text: "Revoke",
    });
    return h(
      "tr",
      { "data-testid": "keys-row", "data-id": key.id },
      h("td", { "data-label": "Name", "data-testid": "keys-row-name", text: key.name }),
      h("td", { "data-label": "Key" }, h("code", { "data-testid": "keys-row-prefix", text: `${key.prefix}…` })),
      h("td", { "data-label": "Created", text: when(key.created_at) }),
      h("td", { "data-label": "Last used", "data-testid": "keys-row-used", text: when(key.last_used_at) }),
      h("td", { class: "actions" }, h("div", { class: "row-actions" }, revoke)),
    );
  }

  private async add(): Promise<void> {
    const name = this.name.value.trim();
    if (!name) return;
    this.create.disabled = true;
    this.error.hidden = true;
    try {
      const { secret } = await api.createKey(name);
      this.form.reset();
      this.secret.textContent = secret;
      this.secretBox.hidden = false;
      this.secret.focus();
      await this.load();
    } catch (error) {
      showError(this.error, error);
    } finally {
      this.create.disabled = false;
    }
  }

  private async revoke(keyId: string, name: string): Promise<void> {
    const question = `Revoke the key “${name}”? Programs that use it stop working at once.`;
    if (!(await confirmDialog(question, "Revoke"))) return;
    this.error.hidden = true;
    try {
      await api.revokeKey(keyId);
    } catch (error) {
      showError(this.error, error);
    }
    await this.load();
  }
}
