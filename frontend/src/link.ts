// What both transports share: the page's hooks, the interface, and how a dead connection is noticed and revived.
import type { CommandName, ServerEvent, TurnResult } from "./types";

export type LinkState = "connecting" | "live" | "reconnecting";

/** The reply being written in the open conversation and the first of its events this page has not seen. */
export interface ResumePoint {
  conversation_id: string;
  reply_id: string;
  from: number;
}

export interface Hooks {
  event(event: ServerEvent): void;
  state(state: LinkState, kind: Transport["kind"]): void;
  /** Where to pick up after a loss; null when nothing is being written (then the page reloads instead). */
  resumePoint(): ResumePoint | null;
  /** The link came back after a loss. `resumed`: the reply in flight continues from where it stopped, so only
   * the sidebar is stale; otherwise events may have been missed and the page reloads what it shows. */
  reconnected(resumed: boolean): void;
  /** A connection failed before it opened, or was closed for policy (1008): resolves false when that is because
   * the session ended (the page has been told then, and the transport stops), true when it is worth trying again. */
  stillSignedIn(): Promise<boolean>;
}

export interface CommandFields {
  content?: string;
  client_id?: string;
  message_id?: string; // edit: which user message; switch: the version to show
}

export interface Transport {
  readonly kind: "websocket" | "sse";
  /** Listen to one conversation's events (null: none); resolves once events will arrive. */
  watch(conversationId: string | null): Promise<void>;
  command(name: CommandName, conversationId: string, fields?: CommandFields): Promise<TurnResult>;
  /** Replay a reply's events from seq `from` on, then the live ones (a gap was seen); rejects if it cannot. */
  resume(replyId: string, from: number): Promise<void>;
  close(): void;
}

/** Several heartbeats in a row lost means the connection is dead even if the socket has not noticed. */
export const MISSED_HEARTBEATS = 2.5;
export const DEFAULT_HEARTBEAT_S = 15;

/** Fires `dead` when nothing arrived for the allowed silence; `feed` on every message resets it. */
export class Watchdog {
  private timer: number | undefined;
  private deadline = Infinity;
  constructor(private readonly dead: () => void) {}

  feed(silenceMs: number): void {
    this.stop();
    this.deadline = performance.now() + silenceMs;
    this.timer = window.setTimeout(this.dead, silenceMs);
  }

  stop(): void {
    window.clearTimeout(this.timer);
    this.timer = undefined;
    this.deadline = Infinity;
  }

  /** A hidden tab's timers are throttled for minutes: on its return, the clock says what the timer has not yet. */
  get overdue(): boolean {
    return performance.now() > this.deadline;
  }
}

/** Exponential backoff, capped at 15 s, with jitter, so a restarted server is not hit by every tab in one instant. */
export function backoff(attempt: number): number {
  const base = Math.min(500 * 2 ** attempt, 15_000);
  return base / 2 + Math.random() * (base / 2);
}

/** Calls `wake` when waiting out a backoff makes no sense: the tab is shown again, the network is back, or the
 * page returns from the back/forward cache. Returns what removes the listeners. */
export function onWake(wake: () => void): () => void {
  const visible = (): void => {
    if (document.visibilityState === "visible") wake();
  };
  const shown = (event: PageTransitionEvent): void => {
    if (event.persisted) wake();
  };
  document.addEventListener("visibilitychange", visible);
  window.addEventListener("online", wake);
  window.addEventListener("pageshow", shown);
  return () => {
    document.removeEventListener("visibilitychange", visible);
    window.removeEventListener("online", wake);
    window.removeEventListener("pageshow", shown);
  };
}
