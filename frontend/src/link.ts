// What both transports share: the page's hooks, the interface, and how a dead connection is noticed.
import type { CommandName, ServerEvent, TurnResult } from "./types";

export type LinkState = "connecting" | "live" | "reconnecting";

export interface Hooks {
  event(event: ServerEvent): void;
  state(state: LinkState, kind: Transport["kind"]): void;
  /** The link came back after a loss: events may have been missed, so the page reloads what it shows. */
  reconnected(): void;
}

export interface CommandFields {
  content?: string;
  client_id?: string;
}

export interface Transport {
  readonly kind: "websocket" | "sse";
  /** Listen to one conversation's events (null: none); resolves once events will arrive. */
  watch(conversationId: string | null): Promise<void>;
  command(name: CommandName, conversationId: string, fields?: CommandFields): Promise<TurnResult>;
  close(): void;
}

/** Several heartbeats in a row lost means the connection is dead even if the socket has not noticed. */
export const MISSED_HEARTBEATS = 2.5;
export const DEFAULT_HEARTBEAT_S = 15;

/** Fires `dead` when nothing arrived for the allowed silence; `feed` on every message resets it. */
export class Watchdog {
  private timer: number | undefined;
  constructor(private readonly dead: () => void) {}

  feed(silenceMs: number): void {
    this.stop();
    this.timer = window.setTimeout(this.dead, silenceMs);
  }

  stop(): void {
    window.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Exponential backoff with jitter, so a restarted server is not hit by every tab in the same instant. */
export function backoff(attempt: number): number {
  const base = Math.min(500 * 2 ** attempt, 15_000);
  return base / 2 + Math.random() * (base / 2);
}
