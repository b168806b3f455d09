// The JSON API under /chat/api. Every failure becomes an ApiError whose message a user can read.
import type { Conversation, ConversationView, Models, SearchResult, TurnResult } from "./types";

const BASE = "/chat/api";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
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
    const found = data as { error?: string; code?: string } | null;
    const message = found?.error ?? `The server answered ${response.status} ${response.statusText}.`;
    throw new ApiError(message, response.status, found?.code ?? "http_" + response.status);
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
  stop: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/stop"),
  search: (query: string) =>
    call<{ query: string; results: SearchResult[] }>("GET", "/search?q=" + encodeURIComponent(query)),
};

export function exportUrl(conversationId: string, format: "markdown" | "json"): string {
  return `${BASE}${id(conversationId)}/export?format=${format}`;
}

export function eventsUrl(conversationId: string): string {
  return `${BASE}${id(conversationId)}/events`;
}

export function socketUrl(): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${BASE}/ws`;
}

/** Server messages start lower-case ("a reply is still being written…"); a banner reads better capitalised. */
export function plain(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.charAt(0).toUpperCase() + text.slice(1);
}
