// The WebSocket transport: commands carry a `ref` answered by an `ack` or an `error`; heartbeats prove liveness.
import { ApiError, socketUrl } from "./api";
import { backoff, DEFAULT_HEARTBEAT_S, MISSED_HEARTBEATS, onWake, Watchdog } from "./link";
import type { CommandFields, Hooks, Transport } from "./link";
import type { CommandName, ServerEvent, TurnResult } from "./types";

const FAILURES_BEFORE_FALLBACK = 2;
const CONNECT_TIMEOUT_MS = 10_000;
const COMMAND_WAIT_MS = 15_000;
const decoder = new TextDecoder();
/** The close code the server ends a signed-out or disabled user's sockets with. */
const POLICY_VIOLATION = 1008;

interface Pending {
  resolve(result: TurnResult): void;
  reject(error: Error): void;
}

export class SocketTransport implements Transport {
  readonly kind = "websocket";
  private socket: WebSocket | null = null;
  private live = false;
  private everLive = false;
  private failures = 0;
  private attempt = 0;
  private heartbeatMs = DEFAULT_HEARTBEAT_S * 1000;
  private ref = 0;
  private readonly pending = new Map<number, Pending>();
  private waiters: Array<() => void> = [];
  private watched: string | null = null;
  private closed = false;
  private retry: number | undefined;
  private readonly watchdog = new Watchdog(() => this.abandon());
  private readonly unwake = onWake(() => this.wake());

  constructor(
    private readonly hooks: Hooks,
    private readonly fallback: () => void,
  ) {
    this.open();
  }

  async watch(conversationId: string | null): Promise<void> {
    const previous = this.watched;
    this.watched = conversationId;
    if (!this.live) return; // subscribed on hello
    if (previous && previous !== conversationId) void this.request({ type: "unsubscribe", conversation_id: previous });
    if (conversationId) await this.request({ type: "subscribe", conversation_id: conversationId });
  }

  async command(name: CommandName, conversationId: string, fields: CommandFields = {}): Promise<TurnResult> {
    await this.ready();
    return this.request({ type: name, conversation_id: conversationId, ...fields });
  }

  async resume(replyId: string, from: number): Promise<void> {
    if (!this.live) return; // the hello after the reconnection resumes, from wherever the page is by then
    await this.request({ type: "resume", reply_id: replyId, from });
  }

  close(): void {
    this.closed = true;
    this.unwake();
    window.clearTimeout(this.retry);
    this.watchdog.stop();
    this.socket?.close();
  }

  private open(): void {
    this.hooks.state(this.everLive ? "reconnecting" : "connecting", this.kind);
    const socket = new WebSocket(socketUrl());
    socket.binaryType = "arraybuffer"; // events are JSON in text frames; binary ones are decoded the same way
    this.socket = socket;
    this.watchdog.feed(CONNECT_TIMEOUT_MS);
    let opened = false;
    socket.onopen = () => (opened = true);
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (event) => this.lost(socket, event.code, opened);
  }

  private receive(data: unknown): void {
    const text = data instanceof ArrayBuffer ? decoder.decode(data) : String(data);
    const event = JSON.parse(text) as ServerEvent;
    if (event.type === "hello") this.greeted(event.heartbeat);
    this.watchdog.feed(this.heartbeatMs * MISSED_HEARTBEATS);
    if (event.type === "ack" || event.type === "error") this.answer(event);
    if (event.type !== "ack" && event.type !== "pong") this.hooks.event(event);
  }

  private greeted(heartbeatS: number): void {
    this.heartbeatMs = heartbeatS * 1000;
    const reconnection = this.everLive;
    this.live = this.everLive = true;
    this.failures = this.attempt = 0;
    this.hooks.state("live", this.kind);
    void this.rejoin(reconnection); // its command goes out first, before the commands that waited for the link
    for (const wake of this.waiters.splice(0)) wake();
  }

  /** After a loss the reply in flight resumes from the first event the page lacks: no snapshot, no reload. With
   * none (or one this server does not know), the page subscribes and reloads what it shows instead. */
  private async rejoin(reconnection: boolean): Promise<void> {
    const point = reconnection ? this.hooks.resumePoint() : null;
    if (point && point.conversation_id === this.watched) {
      try {
        await this.request({ type: "resume", reply_id: point.reply_id, from: point.from });
        this.hooks.reconnected(true);
        return;
      } catch {
        // not found, or the link dropped again: the subscription and reload below are the fallback
      }
    }
    if (this.watched) void this.request({ type: "subscribe", conversation_id: this.watched }).catch(() => undefined);
    // Events sent before this subscription (a reconnection's gap, or the page's first load) were missed.
    if (reconnection || this.watched !== null) this.hooks.reconnected(false);
  }

  private answer(event: Extract<ServerEvent, { type: "ack" | "error" }>): void {
    const waiting = event.ref === null ? undefined : this.pending.get(event.ref);
    if (!waiting || event.ref === null) return;
    this.pending.delete(event.ref);
    if (event.type === "ack") waiting.resolve(event as TurnResult);
    else waiting.reject(new ApiError(event.message, event.status ?? 400, event.code, event));
  }

  /** Back in view or online: a connection that went silent meanwhile is dead, and a pending retry goes now. */
  private wake(): void {
    if (this.closed) return;
    if (this.live && this.watchdog.overdue) this.abandon();
    if (this.socket === null) {
      window.clearTimeout(this.retry);
      this.open();
    }
  }

  /** A silent connection is dead: closing it politely would wait for a goodbye that never comes. */
  private abandon(): void {
    const socket = this.socket;
    if (!socket) return;
    socket.onmessage = socket.onclose = null;
    socket.close();
    this.lost(socket);
  }

  /** `opened` false: the upgrade itself failed, which a browser does not explain (a 401 and a dead server look
   * alike), so the session is checked before trying again, as after a close with 1008. */
  private lost(socket: WebSocket, code = 1006, opened = true): void {
    if (socket !== this.socket) return;
    this.socket = null;
    this.live = false;
    this.watchdog.stop();
    for (const waiting of this.pending.values()) {
      waiting.reject(new ApiError("The connection to the server was lost; reconnecting.", 0, "disconnected"));
    }
    this.pending.clear();
    if (this.closed) return;
    if (opened && code !== POLICY_VIOLATION) {
      this.again();
      return;
    }
    // Closed for policy (the server signs a user's sockets out when their session, password, keys or account
    // change) or never opened: the session decides. Ended, the page shows the login view instead of retrying.
    void this.hooks.stillSignedIn().then((signedIn) => {
      if (!signedIn) this.close();
      else if (!this.closed && this.socket === null) this.again(); // unless a wake-up opened one meanwhile
    });
  }

  private again(): void {
    if (!this.everLive && ++this.failures >= FAILURES_BEFORE_FALLBACK) {
      this.fallback();
      return;
    }
    this.hooks.state("reconnecting", this.kind);
    this.retry = window.setTimeout(() => this.open(), backoff(this.attempt++));
  }

  private ready(): Promise<void> {
    if (this.live) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.waiters = this.waiters.filter((wake) => wake !== go);
        reject(new ApiError("Not connected to the server; still trying to reconnect.", 0, "disconnected"));
      }, COMMAND_WAIT_MS);
      const go = (): void => {
        window.clearTimeout(timer);
        resolve();
      };
      this.waiters.push(go);
    });
  }

  private request(command: Record<string, unknown>): Promise<TurnResult> {
    const ref = ++this.ref;
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ApiError("Not connected to the server; reconnecting.", 0, "disconnected"));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      socket.send(JSON.stringify({ ...command, ref }));
    });
  }
}
