// The JSON API under /chat/api. Every failure becomes an ApiError whose message a user can read.
// Changes carry the session's CSRF token (kept in memory only); a 401 anywhere means the session ended.
import type {
  ApiKey,
  BackendReport,
  Conversation,
  ConversationView,
  Models,
  MonitorView,
  PlatformChange,
  PlatformSettings,
  SearchResult,
  Session,
  TurnResult,
  UsageReport,
  User,
} from "./types";

const BASE = "/chat/api";
const CHANGES = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** What the server added to an error: where the running reply is (409), when to try again (429, 503), whether
 * the first admin is still to be made (401 from GET /session). */
export interface ErrorDetails {
  reply_id?: string;
  retry_after?: number;
  setup?: boolean;
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

// ---- the session: its CSRF token and what happens when it ends -------------------------------------------------
export type SignedOutReason = "expired" | "disabled";

let csrfToken: string | null = null; // never stored: a new tab asks GET /session for it
let signedOutHandler: ((reason: SignedOutReason) => void) | null = null;

export function setCsrfToken(token: string | null): void {
  csrfToken = token;
}

/** Called (by the page) when any answer says the session is gone: a 401, a 403 `disabled`, or a closed socket. */
export function onSignedOut(handler: (reason: SignedOutReason) => void): void {
  signedOutHandler = handler;
}

export function signedOut(reason: SignedOutReason = "expired"): void {
  signedOutHandler?.(reason);
}

interface CallOptions {
  /** The answer's 401 belongs to the caller (a wrong password, the boot's session check): no sign-out. */
  own401?: boolean;
  retried?: boolean;
}

async function call<T>(method: string, path: string, body?: unknown, options: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (CHANGES.has(method) && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  let response: Response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
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
    const details = { reply_id: found?.reply_id, retry_after: found?.retry_after, setup: found?.setup };
    const error = new ApiError(message, response.status, found?.code ?? "http_" + response.status, details);
    // A token that went stale (a new session in another tab): fetch the current one, and try once more.
    if (error.status === 403 && error.code === "csrf" && !options.retried && CHANGES.has(method)) {
      if (await refreshCsrfToken()) return call<T>(method, path, body, { ...options, retried: true });
    }
    if (!options.own401 && error.status === 401) signedOut("expired");
    if (!options.own401 && error.status === 403 && error.code === "disabled") signedOut("disabled");
    throw error;
  }
  return data as T;
}

/** The session's current CSRF token; false when there is no session any more (and the page was told). */
async function refreshCsrfToken(): Promise<boolean> {
  try {
    setCsrfToken((await call<Session>("GET", "/session")).csrf_token);
    return true;
  } catch {
    return false;
  }
}

/** After a connection failed before it opened: is this page still signed in? A 401 also tells the page (and so
 * answers false); any other failure (the server is down, an older server without accounts) answers true. */
export async function stillSignedIn(): Promise<boolean> {
  try {
    const session = await call<Session>("GET", "/session", undefined, { own401: true });
    setCsrfToken(session.csrf_token);
    return true;
  } catch (error) {
    if (!(error instanceof ApiError)) return true;
    const out = error.status === 401 || (error.status === 403 && error.code === "disabled");
    if (out) signedOut(error.status === 401 ? "expired" : "disabled");
    return !out;
  }
}

const id = (conversationId: string): string => "/conversations/" + encodeURIComponent(conversationId);

export type Settings = Partial<
  Pick<
    Conversation,
    "title" | "pinned" | "model" | "system_prompt" | "temperature" | "num_ctx" | "think" | "num_predict"
  >
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
  edit: (conversationId: string, content: string, messageId?: string) =>
    call<TurnResult>("POST", id(conversationId) + "/edit", { content, message_id: messageId }),
  switchVersion: (conversationId: string, messageId: string) =>
    call<TurnResult>("POST", id(conversationId) + "/versions", { message_id: messageId }),
  regenerate: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/regenerate"),
  continue: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/continue"),
  stop: (conversationId: string) => call<TurnResult>("POST", id(conversationId) + "/stop"),
  search: (query: string) =>
    call<{ query: string; results: SearchResult[] }>("GET", "/search?q=" + encodeURIComponent(query)),

  // accounts (docs/accounts.md)
  session: () => call<Session>("GET", "/session", undefined, { own401: true }),
  signIn: (name: string, password: string) =>
    call<Pick<Session, "user" | "csrf_token">>("POST", "/session", { name, password }, { own401: true }),
  signOut: () => call<void>("DELETE", "/session", undefined, { own401: true }),
  setup: (token: string, name: string, password: string) =>
    call<Pick<Session, "user" | "csrf_token">>("POST", "/setup", { token, name, password }, { own401: true }),
  changePassword: (current: string, next: string) => call<void>("POST", "/password", { current, new: next }),
  keys: () => call<{ keys: ApiKey[] }>("GET", "/keys"),
  createKey: (name: string) => call<{ key: ApiKey; secret: string }>("POST", "/keys", { name }),
  revokeKey: (keyId: string) => call<void>("DELETE", "/keys/" + encodeURIComponent(keyId)),
  users: () => call<{ users: User[] }>("GET", "/users"),
  addUser: (name: string, password: string, role: User["role"]) =>
    call<{ user: User }>("POST", "/users", { name, password, role }),
  changeUser: (userId: string, change: UserChange) =>
    call<{ user: User }>("PATCH", "/users/" + encodeURIComponent(userId), change),
  platform: () => call<PlatformSettings>("GET", "/admin/settings"),
  changePlatform: (change: PlatformChange) => call<PlatformSettings>("PATCH", "/admin/settings", change),
  backends: () => call<{ backends: BackendReport[] }>("GET", "/admin/backends"),
  drain: (name: string, draining: boolean) =>
    call<BackendReport>("PATCH", "/admin/backends/" + encodeURIComponent(name), { draining }),
  monitor: () => call<MonitorView>("GET", "/admin/monitor"),
  usage: (params: Record<string, string>, own = false) =>
    call<UsageReport>("GET", (own ? "/usage?" : "/admin/usage?") + new URLSearchParams(params)),
};

/** Usage as a CSV file to download: everyone's (an admin's), or `own`. */
export function usageUrl(params: Record<string, string>, own = false): string {
  return `${BASE}/${own ? "usage" : "admin/usage"}?${new URLSearchParams(params)}`;
}

/** What an admin may change about a user; null clears a limit (models: null is every model). */
export type UserChange = Partial<
  Pick<User, "disabled" | "role" | "max_running" | "requests_per_minute" | "tokens_per_day" | "tokens_per_month" | "models"> & {
    password: string;
  }
>;

export function exportUrl(conversationId: string, format: "markdown" | "json"): string {
  return `${BASE}${id(conversationId)}/export?format=${format}`;
}

/** `lastEventId` (`<reply id>:<seq>`): the server replays that reply from the next event instead of a snapshot. */
export function eventsUrl(conversationId: string, lastEventId?: string): string {
  const after = lastEventId ? "?last_event_id=" + encodeURIComponent(lastEventId) : "";
  return `${BASE}${id(conversationId)}/events${after}`;
}

/** The live operations view as an event stream: a `monitor` event at once and every 2 s. */
export function monitorEventsUrl(hours: 1 | 3 | 6): string {
  return `${BASE}/admin/monitor/events?hours=${hours}`;
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
  if (code === "too_many_attempts") return `Too many attempts. Try again in ${seconds} s.`;
  if (code === "rate_limited") return `You have reached your limit of requests per minute; try again in ${seconds} s.`;
  const yours = code === "too_many_waiting" ? " and you already have replies waiting" : "";
  return `The model is busy${yours}; try again in ${seconds} s.`;
}
