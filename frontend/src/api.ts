// The JSON API under /chat/api. Every failure becomes an ApiError whose message a user can read.
import type { Conversation, ConversationView, Models, SearchResult, TurnResult } from "./types";

const BASE = "/chat/api";

/** What the server added to an error: where the running reply is (409), when to try again (429, 503). */
export interface ErrorDetails {
  reply_id?: string;
  retry_after?: number;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly details: ErrorDetails = {},
  ) {
    super(message);
  }

  /** Status 0: the request may or may not have reached the server, so only an idempotent one may be repeated. */
  get connectionLost(): boolean {
    return this.status === 0;
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Check your connection and try again.", 0, "network");
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // a proxy's HTML error page: fall through to the status line
  }
  if (!response.ok) {
    const found = data as ({ error?: string; code?: string } & ErrorDetails) | null;
    const message = found?.error ?? `The server answered ${response.status} ${response.statusText}.`;
    const details = { reply_id: found?.reply_id, retry_after: found?.retry_after };
    throw new ApiError(message, response.status, found?.code ?? "http_" + response.status, details);
  }
  return data as T;
}

const id = (conversationId: string): string => "/conversations/" + encodeURIComponent(conversationId);

export type Settings = Partial<
  Pick<Conversation, "title" | "pinned" | "model" | "system_prompt" | "temperature" | "num_ctx" | "think">
>;

export const api = {
  models: () => call<Models>("GET", "/models"),
  conversations: () => call<{ conversations: Conversation[] }>("GET", "/conversations"),
  create: (settings: Settings) => call<{ conversation: Conversation }>("POST", "/conversations", settings),
  view: (conversationId: string) => call<ConversationView>("GET", id(conversationId)),
  change: (conversationId: string, settings: Settings) =>
    call<{ conversation: Conversation }>("PATCH", id(conversationId), settings),
  remove: (conversationId: string) => call<void>("DELETE", id(conversationId)),
  send: (conversationId: string, content: string, clientId?: string) =>
    call<TurnResult>("POST", id(conversationId) + "/messages", { content, client_id: clientId }),
  edit: (conversationId: string, content: string) =>
    call<TurnResult>("POST", id(conversationId) + "/edit", { content }),
  regenerate: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/regenerate"),
  continue: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/continue"),
  stop: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/stop"),
  search: (query: string) =>
    call<{ query: string; results: SearchResult[] }>("GET", "/search?q=" + encodeURIComponent(query)),
};

export function exportUrl(conversationId: string, format: "markdown" | "json"): string {
  return `${BASE}${id(conversationId)}/export?format=${format}`;
}

/** `lastEventId` (`<reply id>:<seq>`): the server replays that reply from the next event instead of a snapshot. */
export function eventsUrl(conversationId: string, lastEventId?: string): string {
  const after = lastEventId ? "?last_event_id=" + encodeURIComponent(lastEventId) : "";
  return `${BASE}${id(conversationId)}/events${after}`;
}

export function socketUrl(): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${BASE}/ws`;
}

/** Server messages start lower-case ("a reply is still being written…"); a banner reads better capitalised. */
export function plain(error: unknown): string {
  if (error instanceof ApiError && error.details.retry_after != null) {
    return busy(error.code, error.details.retry_after);
  }
  const text = error instanceof Error ? error.message : String(error);
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** 429 and 503 (the queue is full): when to try again, rather than the server's sentence about queue sizes. */
function busy(code: string, seconds: number): string {
  const yours = code === "too_many_waiting" ? " and you already have replies waiting" : "";
  return `The model is busy${yours}; try again in ${seconds} s.`;
}
