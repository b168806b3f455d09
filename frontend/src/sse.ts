// The fallback where WebSockets are blocked: one event stream for the open conversation, commands as POSTs.
import { api, eventsUrl } from "./api";
import { backoff, DEFAULT_HEARTBEAT_S, MISSED_HEARTBEATS, onWake, Watchdog } from "./link";
import type { CommandFields, Hooks, Transport } from "./link";
import type { CommandName, ServerEvent, TurnResult } from "./types";

const CONNECT_TIMEOUT_MS = 10_000;

export class SseTransport implements Transport {
  readonly kind = "sse";
  private source: EventSource | null = null;
  private watched: string | null = null;
  private greeted = false; // a hello on this conversation's stream already came: the next one is a reconnection
  private heartbeatMs = DEFAULT_HEARTBEAT_S * 1000;
  private attempt = 0;
  private retry: number | undefined;
  private onHello: (() => void) | null = null;
  private readonly watchdog = new Watchdog(() => this.reopen());
  private readonly unwake = onWake(() => this.wake());

  constructor(private readonly hooks: Hooks) {
    hooks.state("live", "sse");
  }

  watch(conversationId: string | null): Promise<void> {
    if (conversationId === this.watched && this.source) return Promise.resolve();
    this.shut();
    this.watched = conversationId;
    this.greeted = false;
    this.attempt = 0;
    return conversationId ? this.open() : Promise.resolve();
  }

  command(name: CommandName, conversationId: string, fields: CommandFields = {}): Promise<TurnResult> {
    if (name === "send") return api.send(conversationId, fields.content ?? "", fields.client_id);
    if (name === "edit") return api.edit(conversationId, fields.content ?? "", fields.message_id);
    if (name === "switch") return api.switchVersion(conversationId, fields.message_id ?? "");
    if (name === "regenerate") return api.regenerate(conversationId);
    if (name === "continue") return api.continue(conversationId);
    return api.stop(conversationId);
  }

  /** A new stream that starts after `from - 1`: the server replays the rest of that reply (Last-Event-ID). */
  resume(replyId: string, from: number): Promise<void> {
    this.shut();
    return this.open(`${replyId}:${from - 1}`);
  }

  close(): void {
    this.unwake();
    this.shut();
    this.watched = null;
  }

  /** Resolves on the stream's hello (the server listens from then on) or, failing that, after a while. The browser
   * sends Last-Event-ID itself when it reconnects on its own; a stream this page reopens names it in the URL. */
  private open(lastEventId = this.lastSeen()): Promise<void> {
    const conversationId = this.watched;
    if (!conversationId) return Promise.resolve();
    const source = new EventSource(eventsUrl(conversationId, lastEventId));
    this.source = source;
    this.watchdog.feed(CONNECT_TIMEOUT_MS);
    source.onmessage = (message: MessageEvent<string>) => this.receive(JSON.parse(message.data) as ServerEvent);
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        this.hooks.state("reconnecting", this.kind);
        return;
      }
      // An error status (a 401 among them) closes the stream for good: reopen only if still signed in.
      this.hooks.state("reconnecting", this.kind);
      void this.hooks.stillSignedIn().then((signedIn) => {
        if (signedIn && source === this.source) this.reopen();
      });
    };
    return new Promise((resolve) => {
      const timer = window.setTimeout(resolve, CONNECT_TIMEOUT_MS);
      this.onHello = () => {
        window.clearTimeout(timer);
        resolve();
      };
    });
  }

  /** The reply in flight as far as the page has it, as the stream's event id; none on a first open. */
  private lastSeen(): string | undefined {
    const point = this.greeted ? this.hooks.resumePoint() : null;
    return point && point.conversation_id === this.watched ? `${point.reply_id}:${point.from - 1}` : undefined;
  }

  private receive(event: ServerEvent): void {
    if (event.type === "hello") {
      this.heartbeatMs = event.heartbeat * 1000;
      this.attempt = 0;
      this.hooks.state("live", "sse");
      this.onHello?.();
      this.onHello = null;
      // Even when the reply was replayed, a reply that ended long ago or a new turn is only in a reload.
      if (this.greeted) this.hooks.reconnected(false);
      this.greeted = true;
    }
    this.watchdog.feed(this.heartbeatMs * MISSED_HEARTBEATS);
    this.hooks.event(event);
  }

  /** EventSource retries by itself after a dropped stream, but not after an error status or a silent death. */
  private reopen(): void {
    this.shut();
    if (!this.watched) return;
    this.hooks.state("reconnecting", this.kind);
    this.retry = window.setTimeout(() => void this.open(), backoff(this.attempt++));
  }

  /** Back in view or online: a stream that is not flowing is replaced now rather than after its backoff. */
  private wake(): void {
    const flowing = this.source?.readyState === EventSource.OPEN && !this.watchdog.overdue;
    if (!this.watched || flowing) return;
    this.shut();
    void this.open();
  }

  private shut(): void {
    window.clearTimeout(this.retry);
    this.watchdog.stop();
    this.source?.close();
    this.source = null;
  }
}
