// The live connection: the server's events into the thread, catching up after a gap or a reconnect, and its state.
import { ApiError, stillSignedIn } from "./api";
import type { Header } from "./header";
import type { LinkState, Transport } from "./link";
import type { Sidebar } from "./sidebar";
import type { Thread } from "./thread";
import { connect } from "./transport";
import type { ServerEvent } from "./types";

const REFRESH_DELAY_MS = 300;

export interface LiveHooks {
  /** The open conversation's id; none before the first send creates it. */
  conversationId(): string | undefined;
  /** Re-read the open conversation. */
  reload(): Promise<void>;
  /** The model named a conversation (plain text). */
  titled(conversationId: string, title: string): void;
}

export class Live {
  private transport: Transport | null = null; // none while signed out
  private refreshTimer: number | undefined;
  private resyncTimer: number | undefined;
  private readonly resuming = new Set<string>(); // replies whose missing events were asked for and not yet answered

  constructor(
    private readonly thread: Thread,
    private readonly sidebar: Sidebar,
    private readonly header: Header,
    private readonly hooks: LiveHooks,
  ) {}

  open(): void {
    this.transport = this.connect();
  }

  close(): void {
    this.transport?.close();
    this.transport = null;
  }

  /** The transport, or none while signed out. */
  get current(): Transport | null {
    return this.transport;
  }

  /** The transport exists from start() to suspend(); the page's actions only run in between. */
  get link(): Transport {
    if (!this.transport) throw new ApiError("You are signed out.", 401, "unauthenticated");
    return this.transport;
  }

  private connect(): Transport {
    const forceSse = new URLSearchParams(location.search).get("transport") === "sse";
    return connect(
      {
        event: (event) => this.event(event),
        state: (state, kind) => this.linkState(state, kind),
        resumePoint: () => this.thread.resumePoint(),
        reconnected: (resumed) => (resumed ? void this.sidebar.refresh() : this.refreshSoon()),
        stillSignedIn: () => stillSignedIn(),
      },
      forceSse,
    );
  }

  private event(event: ServerEvent): void {
    if (event.type === "conversation.resync") {
      this.refreshSoon();
      return;
    }
    this.thread.apply(event);
    if (event.type === "conversation.title") this.hooks.titled(event.conversation_id, event.title);
    if (event.type === "message.new" || event.type === "reply.done" || event.type === "conversation.title") {
      window.clearTimeout(this.refreshTimer);
      this.refreshTimer = window.setTimeout(() => void this.sidebar.refresh(), REFRESH_DELAY_MS);
    }
    // After a reply, and after another version was shown, the context in use (the header's meter) has changed.
    const here = "conversation_id" in event && event.conversation_id === this.hooks.conversationId();
    if (here && (event.type === "reply.done" || event.type === "version.shown")) void this.hooks.reload();
  }

  /** A gap in a reply's events: ask for the rest of them once (however many arrive out of order meanwhile). */
  async resume(replyId: string, from: number): Promise<void> {
    if (this.resuming.has(replyId)) return;
    this.resuming.add(replyId);
    try {
      await this.link.resume(replyId, from);
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
      void this.hooks.reload();
      void this.sidebar.refresh();
    }, 50);
  }

  private linkState(state: LinkState, kind: Transport["kind"]): void {
    this.header.setLink(state);
    document.body.dataset.transport = kind; // which transport is in use, for people debugging a proxy (and tests)
  }
}
