// The page's wiring: routing by URL hash, the open conversation, and the user's actions on it.
import { AccountMenu } from "./account";
import { AdminPanel } from "./admin";
import { api, ApiError } from "./api";
import { Composer } from "./composer";
import { byId, copyText, flash } from "./dom";
import { drawer, wireFrame } from "./frame";
import { Header } from "./header";
import { Live } from "./live";
import { plainText } from "./markdown";
import { cutOff } from "./message";
import type { MessageView } from "./message";
import { ModelSettings } from "./model-settings";
import { Alert, Toast } from "./notify";
import { untilAnswered } from "./retry";
import { watchScrollCues } from "./scroll-cue";
import { href, Sidebar, UNTITLED } from "./sidebar";
import { Thread } from "./thread";
import type { Action } from "./thread";
import type { Conversation, ConversationView, Session, Shown, TurnResult, User } from "./types";

/** What the page around the chat (main.ts) does for it. */
export interface AppHooks {
  /** Rejects when the server could not sign out; the page says why and stays signed in. */
  signOut(): Promise<void>;
}

export class App {
  private readonly alert = new Alert();
  private readonly toast = new Toast();
  private readonly announcer = byId("announcer");
  private readonly header = new Header((name) => void this.modelSettings.pickModel(name));
  private readonly composer = new Composer({ send: (text) => this.send(text), stop: () => void this.stop() });
  private readonly modelSettings = new ModelSettings(this.header, this.alert, {
    conversation: () => this.conversation,
    changed: (conversation) => (this.conversation = conversation),
    reload: () => this.reload(),
  });
  private readonly thread: Thread;
  private readonly sidebar: Sidebar;
  private readonly account: AccountMenu;
  private readonly admin: AdminPanel;
  private readonly live: Live;
  private session: Session | null = null;
  private conversation: Conversation | null = null;
  private opening = 0; // a newer navigation makes an older one's late answer irrelevant

  constructor(hooks: AppHooks) {
    this.thread = new Thread(byId("messages"), byId("scroller"), {
      busyChanged: (busy) => this.composer.setBusy(busy),
      replyFinished: (view, watched) => this.finished(view, watched),
      action: (action, view) => void this.act(action, view),
      lostTrack: (replyId, from) => void this.live.resume(replyId, from),
      error: (error) => this.alert.show(error),
    });
    watchScrollCues(byId("messages"));
    this.sidebar = new Sidebar({
      deleted: (id) => id === this.conversation?.id && this.navigate(null),
      changed: (conversation) => conversation.id === this.conversation?.id && this.showTitle(conversation),
      titled: (id, title) => this.titled(id, title),
      error: (error) => this.alert.show(error),
    });
    this.live = new Live(this.thread, this.sidebar, this.header, {
      conversationId: () => this.conversation?.id,
      reload: () => this.reload(),
      titled: (id, title) => this.titled(id, title),
    });
    const signOut = (): void => void hooks.signOut().catch((error: unknown) => this.alert.show(error));
    this.account = new AccountMenu({ admin: () => this.openAdmin(), signOut }, this.toast);
    this.admin = new AdminPanel(
      {
        changedSelf: (user) => this.changedSelf(user),
        closed: () => {
          if (location.pathname === "/chat/admin") history.replaceState(null, "", "/chat" + location.hash);
        },
      },
      this.toast,
    );
  }

  async start(session: Session): Promise<void> {
    this.signedIn(session);
    this.wire();
    window.addEventListener("hashchange", () => void this.route());
    window.addEventListener("popstate", () => void this.route());
    this.live.open();
    byId("app").hidden = false;
    await Promise.all([this.modelSettings.loadModels(), this.sidebar.refresh(), this.route()]);
    this.composer.focus();
  }

  /** Signed out: no connection, nothing shown. The typed draft stays in the composer unless `forget`: a sign-out
   * on purpose leaves nothing of this user's in the page for the next person. returned() goes on. */
  suspend(forget: boolean): void {
    this.live.close();
    this.admin.close();
    for (const dialog of document.querySelectorAll<HTMLDialogElement>("dialog[open]")) dialog.close();
    drawer(false);
    this.alert.hide();
    byId("app").hidden = true;
    if (forget) {
      this.composer.input.value = "";
      this.sidebar.clear();
      this.newChat();
      if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    }
  }

  /** Signed in again, after suspend(): the same person goes on where they were; another starts afresh. */
  async returned(session: Session): Promise<void> {
    const someoneElse = this.session?.user.id !== session.user.id;
    this.signedIn(session);
    this.showTitle(this.conversation); // the login view's title goes
    if (someoneElse) {
      this.sidebar.clear();
      this.newChat();
      if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    }
    this.live.open();
    byId("app").hidden = false;
    const reopen = async (): Promise<void> => {
      const id = this.conversation?.id;
      if (!id) return;
      await this.live.link.watch(id);
      await this.reload();
    };
    await Promise.all([this.modelSettings.loadModels(), this.sidebar.refresh(), reopen()]);
    this.composer.focus();
  }

  /** The signed-in person's name, where they signed in with a password. */
  get userName(): string | null {
    return this.session?.via === "session" ? this.session.user.name : null;
  }

  private signedIn(session: Session): void {
    this.session = session;
    this.account.set(session);
  }

  openAdmin(): void {
    if (this.session?.user.role !== "admin") return;
    if (location.pathname !== "/chat/admin") history.replaceState(null, "", "/chat/admin" + location.hash);
    this.admin.open(this.session.user.id);
  }

  private changedSelf(user: User): void {
    if (!this.session) return;
    this.signedIn({ ...this.session, user });
    if (user.role !== "admin") this.admin.close();
  }

  private wire(): void {
    wireFrame({
      newChat: () => this.navigate(null),
      openSettings: () => void this.modelSettings.openSettings(),
      busy: () => this.thread.isBusy,
      stop: () => void this.stop(),
    });
  }

  // ---- navigation ------------------------------------------------------------------------------------------
  private conversationInUrl(): string | null {
    return new URLSearchParams(location.hash.slice(1)).get("c");
  }

  private navigate(conversationId: string | null): void {
    if (conversationId) location.hash = href(conversationId);
    else {
      if (location.hash) history.pushState(null, "", location.pathname + location.search);
      void this.route();
    }
  }

  private async route(): Promise<void> {
    const wanted = this.conversationInUrl();
    if (wanted === (this.conversation?.id ?? null) && wanted === this.thread.conversationId) return;
    drawer(false);
    if (!wanted) return this.newChat();
    const round = ++this.opening;
    this.thread.reset(wanted, true);
    try {
      await this.live.link.watch(wanted); // listen before reading, so nothing between the two is missed
      const view = await api.view(wanted);
      if (round === this.opening) this.show(view);
    } catch (error) {
      if (round !== this.opening) return;
      const gone = error instanceof ApiError && error.status === 404;
      this.alert.show(gone ? "That conversation no longer exists." : error);
      if (gone) this.navigate(null);
    }
  }

  private newChat(): void {
    this.opening++;
    this.conversation = null;
    this.modelSettings.draft = {};
    this.thread.reset(null);
    void this.live.current?.watch(null);
    this.header.setContext(null);
    this.sidebar.setCurrent(null);
    this.modelSettings.syncModel();
    this.showTitle(null);
  }

  private show(view: ConversationView): void {
    this.conversation = view.conversation;
    this.thread.load(view);
    this.header.setContext(view.context);
    this.sidebar.setCurrent(view.conversation.id);
    this.modelSettings.syncModel();
    this.showTitle(view.conversation);
  }

  private titled(id: string, title: string): void {
    if (this.conversation && id === this.conversation.id && title !== this.conversation.title) {
      this.showTitle({ ...this.conversation, title });
    }
  }

  private showTitle(conversation: Conversation | null): void {
    if (conversation) this.conversation = conversation;
    document.title = conversation ? `${conversation.title || UNTITLED} · clawdbot` : "clawdbot";
  }

  // ---- live events -----------------------------------------------------------------------------------------
  /** Re-read the open conversation: its context use after a reply, or everything after a lost connection. */
  private async reload(): Promise<void> {
    const id = this.conversation?.id;
    if (!id) return;
    try {
      const view = await api.view(id);
      if (view.conversation.id === this.conversation?.id) this.show(view);
    } catch (error) {
      this.alert.show(error);
    }
  }

  private finished(view: MessageView, watched: boolean): void {
    if (!watched) return;
    // The streaming message is no live region (it would be read token by token); the finished text is read once.
    const m = view.message;
    const text = plainText(view.body);
    if (m.status === "done") this.announcer.textContent = [cutOff(m), text].filter(Boolean).join(". ");
    else if (m.status === "stopped") this.announcer.textContent = `Reply stopped. ${text}`;
    else this.announcer.textContent = `Reply ${m.status}: ${m.error ?? ""}`;
  }

  // ---- what the user does ----------------------------------------------------------------------------------
  /** One client id per message: a send the connection dropped is repeated with it, and the server answers the
   * repeat with the first one's message and reply (`duplicate`), never storing the message twice. */
  private async send(text: string): Promise<boolean> {
    const fields = { content: text, client_id: clientId() };
    try {
      const conversation = this.conversation ?? (await this.create());
      let waited = false;
      const waiting = (error: ApiError, ms: number): void => {
        waited = true;
        const why = error.message.replace(/[;,]\s*try again.*$/, ""); // the page tries again itself
        this.alert.show(`Not sent yet. ${why}. Sending it again in ${Math.ceil(ms / 1000)} s…`);
      };
      this.took(await untilAnswered(() => this.live.link.command("send", conversation.id, fields), waiting));
      if (waited) this.alert.hide();
      this.thread.scrollToEnd();
      return true;
    } catch (error) {
      this.failed(error);
      return false;
    }
  }

  /** The first send creates the conversation, with the model and settings chosen so far. */
  private async create(): Promise<Conversation> {
    const { conversation } = await api.create({
      ...this.modelSettings.draft,
      model: this.header.picker.value || undefined,
    });
    this.opening++;
    this.conversation = conversation;
    this.thread.reset(conversation.id);
    history.replaceState(null, "", href(conversation.id));
    await this.live.link.watch(conversation.id);
    this.sidebar.setCurrent(conversation.id);
    void this.sidebar.refresh();
    return conversation;
  }

  private took(result: TurnResult): void {
    this.thread.add(result.message, result.versions);
    this.thread.add(result.reply, result.versions);
  }

  private async stop(): Promise<void> {
    if (!this.conversation) return;
    try {
      await this.live.link.command("stop", this.conversation.id);
    } catch (error) {
      this.alert.show(error);
    }
  }

  private async act(action: Action, view: MessageView): Promise<void> {
    const id = this.conversation?.id;
    if (action === "copy") {
      const button = view.element.querySelector<HTMLElement>("[data-action=copy]")!;
      copyText(view.message.content).then(() => flash(button, "Copied"), (error) => this.alert.show(error));
    } else if (action === "regenerate" && id) {
      await this.command(() => this.live.link.command("regenerate", id));
    } else if (action === "continue" && id) {
      await this.command(() => this.live.link.command("continue", id));
    } else if (action === "edit" && id) {
      const fields = (text: string) => ({ content: text, message_id: view.id });
      view.beginEdit((text) => this.command(() => this.live.link.command("edit", id, fields(text))));
    } else if ((action === "version-previous" || action === "version-next") && id) {
      await this.switchVersion(id, view, action);
    }
  }

  /** ‹ or ›: that version is shown (and stored), the thread redrawn from it, and focus stays on the switcher. */
  private async switchVersion(id: string, view: MessageView, action: VersionStep): Promise<void> {
    const target = view.versionAt(action === "version-previous" ? -1 : 1);
    if (!target) return;
    try {
      const shown = (await this.live.link.command("switch", id, { message_id: target })) as Shown;
      if (id !== this.conversation?.id) return;
      this.thread.show(shown);
      const switcher = this.thread.element(target)?.querySelector(".msg-versions");
      const step = switcher?.querySelector<HTMLButtonElement>(`[data-action=${action}]:enabled`);
      (step ?? switcher?.querySelector<HTMLButtonElement>("button:enabled"))?.focus();
      const versions = shown.versions[target] ?? [];
      this.announcer.textContent = `Version ${versions.indexOf(target) + 1} of ${versions.length} shown.`;
    } catch (error) {
      this.failed(error);
    }
  }

  private async command(run: () => Promise<TurnResult>): Promise<boolean> {
    try {
      this.took(await run());
      this.thread.scrollToEnd();
      return true;
    } catch (error) {
      this.failed(error);
      return false;
    }
  }

  /** Said plainly; a conflict also shows the reply that is being written (another tab's, say) as it goes on. */
  private failed(error: unknown): void {
    this.alert.show(error);
    const running = error instanceof ApiError ? error.details.reply_id : undefined;
    const shown = this.thread.resumePoint();
    if (running && shown?.reply_id !== running) void this.live.resume(running, 1);
  }
}

type VersionStep = "version-previous" | "version-next";

function clientId(): string {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10); // randomUUID needs https
}
