// The page's wiring: routing by URL hash, the open conversation, the transport's events, and the user's actions.
import { api, ApiError } from "./api";
import type { Settings } from "./api";
import { Composer } from "./composer";
import { byId, copyText, flash } from "./dom";
import { Header } from "./header";
import { fillIcons } from "./icons";
import type { LinkState } from "./link";
import { plainText } from "./markdown";
import type { MessageView } from "./message";
import { Alert } from "./notify";
import { untilAnswered } from "./retry";
import { SettingsPanel } from "./settings";
import type { ConversationSettings } from "./settings";
import { href, Sidebar, UNTITLED } from "./sidebar";
import { toggleTheme } from "./theme";
import { Thread } from "./thread";
import type { Action } from "./thread";
import { connect } from "./transport";
import type { Transport } from "./link";
import type { Conversation, ConversationView, Models, ServerEvent, TurnResult } from "./types";

const REFRESH_DELAY_MS = 300;

export class App {
  private readonly alert = new Alert();
  private readonly announcer = byId("announcer");
  private readonly header = new Header((name) => void this.pickModel(name));
  private readonly composer = new Composer({ send: (text) => this.send(text), stop: () => void this.stop() });
  private readonly settings = new SettingsPanel((settings) => this.saveSettings(settings));
  private readonly thread: Thread;
  private readonly sidebar: Sidebar;
  private readonly transport: Transport;
  private models: Models | null = null;
  private conversation: Conversation | null = null;
  private draft: Settings = {}; // settings of the conversation that the first send creates
  private opening = 0; // a newer navigation makes an older one's late answer irrelevant
  private refreshTimer: number | undefined;
  private resyncTimer: number | undefined;
  private readonly resuming = new Set<string>(); // replies whose missing events were asked for and not yet answered

  constructor() {
    this.thread = new Thread(byId("messages"), byId("scroller"), {
      busyChanged: (busy) => this.composer.setBusy(busy),
      replyFinished: (view, watched) => this.finished(view, watched),
      action: (action, view) => void this.act(action, view),
      lostTrack: (replyId, from) => void this.resume(replyId, from),
      error: (error) => this.alert.show(error),
    });
    this.sidebar = new Sidebar({
      deleted: (id) => id === this.conversation?.id && this.navigate(null),
      changed: (conversation) => conversation.id === this.conversation?.id && this.showTitle(conversation),
      error: (error) => this.alert.show(error),
    });
    const forceSse = new URLSearchParams(location.search).get("transport") === "sse";
    this.transport = connect(
      {
        event: (event) => this.event(event),
        state: (state, kind) => this.linkState(state, kind),
        resumePoint: () => this.thread.resumePoint(),
        reconnected: (resumed) => (resumed ? void this.sidebar.refresh() : this.refreshSoon()),
      },
      forceSse,
    );
  }

  async start(): Promise<void> {
    fillIcons(document);
    this.wire();
    window.addEventListener("hashchange", () => void this.route());
    window.addEventListener("popstate", () => void this.route());
    await Promise.all([this.loadModels(), this.sidebar.refresh(), this.route()]);
    this.composer.focus();
  }

  private wire(): void {
    byId("new-chat").addEventListener("click", () => this.navigate(null));
    byId("theme").addEventListener("click", () => toggleTheme());
    byId("settings-open").addEventListener("click", () => this.openSettings());
    byId("drawer-open").addEventListener("click", () => this.drawer(true));
    byId("drawer-close").addEventListener("click", () => this.drawer(false));
    byId("backdrop").addEventListener("click", () => this.drawer(false));
    byId("sidebar").addEventListener("click", (event) => {
      if ((event.target as Element).closest("a.conv-link")) this.drawer(false);
    });
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || event.defaultPrevented || document.querySelector("dialog[open]")) return;
      if (document.body.classList.contains("drawer-open")) this.drawer(false);
      else if (this.thread.isBusy) void this.stop();
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
    this.drawer(false);
    if (!wanted) return this.newChat();
    const round = ++this.opening;
    this.thread.reset(wanted, true);
    try {
      await this.transport.watch(wanted); // listen before reading, so nothing between the two is missed
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
    this.draft = {};
    this.thread.reset(null);
    void this.transport.watch(null);
    this.header.setContext(null);
    this.sidebar.setCurrent(null);
    this.syncModel();
    this.showTitle(null);
  }

  private show(view: ConversationView): void {
    this.conversation = view.conversation;
    this.thread.load(view);
    this.header.setContext(view.context);
    this.sidebar.setCurrent(view.conversation.id);
    this.syncModel();
    this.showTitle(view.conversation);
  }

  private showTitle(conversation: Conversation | null): void {
    if (conversation) this.conversation = conversation;
    document.title = conversation ? `${conversation.title || UNTITLED} · clawdbot` : "clawdbot";
  }

  // ---- live events -----------------------------------------------------------------------------------------
  private event(event: ServerEvent): void {
    this.thread.apply(event);
    if (event.type === "message.new" || event.type === "reply.done") {
      window.clearTimeout(this.refreshTimer);
      this.refreshTimer = window.setTimeout(() => void this.sidebar.refresh(), REFRESH_DELAY_MS);
    }
    if (event.type === "reply.done" && event.conversation_id === this.conversation?.id) void this.reload();
  }

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

  /** A gap in a reply's events: ask for the rest of them once (however many arrive out of order meanwhile). */
  private async resume(replyId: string, from: number): Promise<void> {
    if (this.resuming.has(replyId)) return;
    this.resuming.add(replyId);
    try {
      await this.transport.resume(replyId, from);
    } catch {
      this.refreshSoon(); // the reply is not known to this server any more: its stored row is in the conversation
    } finally {
      this.resuming.delete(replyId);
    }
  }

  /** Coalesced: a burst of changes asks for one reload, not one each. */
  private refreshSoon(): void {
    if (this.resyncTimer !== undefined) return;
    this.resyncTimer = window.setTimeout(() => {
      this.resyncTimer = undefined;
      void this.reload();
      void this.sidebar.refresh();
    }, 50);
  }

  private finished(view: MessageView, watched: boolean): void {
    if (!watched) return;
    // The streaming message is no live region (it would be read token by token); the finished text is read once.
    const m = view.message;
    const text = plainText(view.body);
    if (m.status === "done") this.announcer.textContent = text;
    else if (m.status === "stopped") this.announcer.textContent = `Reply stopped. ${text}`;
    else this.announcer.textContent = `Reply ${m.status}: ${m.error ?? ""}`;
  }

  private linkState(state: LinkState, kind: Transport["kind"]): void {
    this.header.setLink(state);
    document.body.dataset.transport = kind; // which transport is in use, for people debugging a proxy (and tests)
  }

  // ---- what the user does ----------------------------------------------------------------------------------
  /** One client id per message: a send the connection dropped is repeated with it, and the server answers the
   * repeat with the first one's message and reply (`duplicate`), never storing the message twice. */
  private async send(text: string): Promise<boolean> {
    const fields = { content: text, client_id: clientId() };
    try {
      const conversation = this.conversation ?? (await this.create());
      this.took(await untilAnswered(() => this.transport.command("send", conversation.id, fields)));
      this.thread.scrollToEnd();
      return true;
    } catch (error) {
      this.failed(error);
      return false;
    }
  }

  /** The first send creates the conversation, with the model and settings chosen so far. */
  private async create(): Promise<Conversation> {
    const { conversation } = await api.create({ ...this.draft, model: this.header.picker.value || undefined });
    this.opening++;
    this.conversation = conversation;
    this.thread.reset(conversation.id);
    history.replaceState(null, "", href(conversation.id));
    await this.transport.watch(conversation.id);
    this.sidebar.setCurrent(conversation.id);
    void this.sidebar.refresh();
    return conversation;
  }

  private took(result: TurnResult): void {
    this.thread.add(result.message);
    this.thread.add(result.reply);
  }

  private async stop(): Promise<void> {
    if (!this.conversation) return;
    try {
      await this.transport.command("stop", this.conversation.id);
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
      await this.command(() => this.transport.command("regenerate", id));
    } else if (action === "continue" && id) {
      await this.command(() => this.transport.command("continue", id));
    } else if (action === "edit" && id) {
      view.beginEdit((text) => this.command(() => this.transport.command("edit", id, { content: text })));
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
    if (running && shown?.reply_id !== running) void this.resume(running, 1);
  }

  private async loadModels(): Promise<void> {
    try {
      this.models = await api.models();
    } catch (error) {
      this.alert.show(error);
      return;
    }
    this.syncModel();
  }

  private syncModel(): void {
    if (!this.models) return;
    const selected = this.conversation?.model ?? this.draft.model ?? this.models.default;
    this.header.setModels(this.models, selected);
    const note = this.models.reachable ? "" : " The model server cannot be reached right now.";
    byId("empty-model").textContent = `Chatting with ${selected}.${note}`;
  }

  private async pickModel(name: string): Promise<void> {
    if (!this.conversation) {
      this.draft.model = name;
      this.syncModel();
      return;
    }
    try {
      this.conversation = (await api.change(this.conversation.id, { model: name })).conversation;
    } catch (error) {
      this.alert.show(error);
    }
    this.syncModel();
  }

  private openSettings(): void {
    const d = this.draft;
    const values: ConversationSettings = this.conversation ?? {
      system_prompt: d.system_prompt ?? "",
      temperature: d.temperature ?? null,
      num_ctx: d.num_ctx ?? null,
      think: d.think ?? null,
    };
    this.settings.open(values, this.conversation?.id ?? null, this.models?.num_ctx ?? 8192);
  }

  private async saveSettings(settings: Settings): Promise<boolean> {
    if (!this.conversation) {
      this.draft = { ...this.draft, ...settings };
      return true;
    }
    try {
      this.conversation = (await api.change(this.conversation.id, settings)).conversation;
      void this.reload(); // num_ctx changes how full the context is
      return true;
    } catch (error) {
      this.alert.show(error);
      return false;
    }
  }

  private drawer(open: boolean): void {
    document.body.classList.toggle("drawer-open", open);
    byId("drawer-open").setAttribute("aria-expanded", String(open));
  }
}

function clientId(): string {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10); // randomUUID needs https
}
