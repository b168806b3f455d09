// The shapes of docs/chat-protocol.md, as the server sends them.

export interface Conversation {
  id: string;
  title: string;
  title_set: boolean;
  model: string;
  system_prompt: string;
  temperature: number | null;
  num_ctx: number | null;
  think: boolean | null;
  num_predict: number | null; // the most tokens a reply may write; null: the server's default
  pinned: boolean;
  created_at: number;
  updated_at: number;
}

export type Role = "user" | "assistant";
export type ReplyStatus = "waiting" | "thinking" | "writing" | "done" | "stopped" | "failed" | "interrupted";
export type Status = ReplyStatus | "sent";

export interface Message {
  id: string;
  conversation_id: string;
  role: Role;
  content: string;
  thinking: string;
  status: Status;
  superseded: boolean;
  created_at: number;
  finished_at: number | null;
  model: string | null;
  error: string | null;
  done_reason: string | null;
  prompt_tokens: number | null;
  output_tokens: number | null;
  ttft_ms: number | null;
  thinking_ms: number | null;
  total_ms: number | null;
  eval_ms: number | null;
  omitted_turns: number | null;
  client_id: string | null;
  error_kind: string | null;
  parent_id: string | null; // the message this one follows; its versions are the messages with the same parent
  chosen: boolean;
  continued_by: string | null;
  backend?: string | null; // the backends that wrote a reply, comma-separated, in order (several after a failover)
  switches?: Switch[] | null; // where it moved from one backend to the next
  timing?: Timing | null; // where a reply's time went (docs/monitoring.md); none for older replies
  queue_position?: number | null; // the page's own field, from reply.queue and snapshots: never stored
}

/** Where a reply's time went, in milliseconds: the parts to the first token add up to ttft_ms, all of them to
 * total_ms; a part the reply never reached is null. */
export interface Timing {
  gateway_ms: number | null;
  queue_ms: number | null;
  model_load_ms: number | null;
  prompt_eval_ms: number | null;
  first_token_ms: number | null;
  relay_ms: number | null;
  generation_ms: number | null;
  finish_ms: number | null;
  ttft_ms: number | null;
  total_ms: number;
}

/** A reply that moved to another backend mid-way: `at` is the character of its content where the new one went on. */
export interface Switch {
  from: string;
  to: string;
  at: number;
}

/** Every event of one reply but reply.queue is numbered: 1 for reply.start, then 2, 3, … with no gaps. */
interface Numbered {
  conversation_id: string;
  id: string;
  seq: number;
}

export interface Snapshot extends Numbered {
  type: "reply.snapshot";
  status: ReplyStatus;
  content: string;
  thinking: string;
  queue_position: number | null;
  message: Message;
}

export type ReplyEvent =
  | (Numbered & { type: "reply.start"; message: Message })
  | (Numbered & { type: "reply.status"; status: ReplyStatus })
  | (Numbered & { type: "reply.delta"; content?: string; thinking?: string })
  | (Numbered & {
      type: "reply.stats";
      done_reason: string | null;
      prompt_tokens: number | null;
      output_tokens: number | null;
      eval_ms: number | null;
      ttft_ms: number | null;
      total_ms: number | null;
      timing?: Timing | null;
    })
  | (Numbered & { type: "reply.error"; code: string | null; message: string })
  | (Numbered & Switch & { type: "reply.switch" });

/** For each message with more than one version: the ids of its versions, oldest first (its own among them). */
export type Versions = Record<string, string[]>;

export interface ContextUse {
  in_use: number | null;
  num_ctx: number;
  omitted_turns: number;
}

export interface ConversationView {
  conversation: Conversation;
  messages: Message[];
  versions: Versions;
  active: Snapshot | null;
  context: ContextUse;
}

export interface Model {
  name: string;
  size: number | null;
  parameter_size: string | null;
  quantization: string | null;
  family: string | null;
  capabilities: string[];
  num_ctx: number; // what a conversation with this model gets unless it sets its own
  backends?: string[]; // the backends that serve it now; empty: unavailable (an older server sends none)
}

export interface Models {
  models: Model[];
  default: string;
  num_ctx: number;
  num_predict: number; // a reply's length unless its conversation sets one
  max_num_predict: number; // the most a conversation may set
  reachable: boolean;
  simulated: boolean;
  problem: string | null; // why no reply can come now, and (for an admin) how to fix it
}

export interface SearchResult {
  conversation: Conversation;
  snippet: string | null; // plain text, never HTML
  highlights: Array<[number, number]>; // where the matches sit in the snippet, in code points
  message_id: string | null;
}

export type ServerEvent =
  | { type: "hello"; version: string; heartbeat: number }
  | { type: "heartbeat" }
  | { type: "pong"; ref: number | null }
  | { type: "ack"; ref: number; command: string; [field: string]: unknown }
  | CommandError
  | { type: "message.new"; conversation_id: string; message: Message }
  | { type: "messages.superseded"; conversation_id: string; ids: string[] }
  | { type: "versions"; conversation_id: string; versions: Versions }
  | (Shown & { type: "version.shown"; conversation_id: string })
  | { type: "reply.queue"; conversation_id: string; id: string; queue_position: number }
  | { type: "conversation.title"; conversation_id: string; title: string } // the model named it (plain text)
  // The server may have missed events of the conversation (its link to the other processes had a gap): read it again.
  | { type: "conversation.resync"; conversation_id: string }
  | ReplyEvent
  | Snapshot
  // seq null and stored: the reply ended a while ago and this is its stored row (an answer to a late resume).
  | { type: "reply.done"; conversation_id: string; id: string; seq: number | null; stored?: boolean; message: Message };

/** A command's failure; a conflict names the reply being written, a full queue says when to try again. */
export interface CommandError {
  type: "error";
  ref: number | null;
  code: string;
  status?: number;
  message: string;
  reply_id?: string;
  retry_after?: number;
}

/** Another version was shown: the messages no longer shown, those now shown (in order), and their versions. */
export interface Shown {
  message_id: string;
  hidden: string[];
  messages: Message[];
  versions: Versions;
}

/** What a send, edit, regenerate, continue or switch answers, on either transport. */
export interface TurnResult extends Partial<Shown> {
  message?: Message;
  reply?: Message;
  stopping?: string | null;
  duplicate?: boolean; // a send repeated with the same client_id: the first one's message and reply
}

export type CommandName = "send" | "edit" | "regenerate" | "continue" | "switch" | "stop";

// ---- accounts (docs/accounts.md) --------------------------------------------------------------------------------

export type UserRole = "admin" | "user";

export interface User {
  id: string;
  name: string;
  role: UserRole;
  disabled: boolean;
  sso: boolean;
  max_running: number | null;
  requests_per_minute: number | null;
  tokens_per_day: number | null;
  tokens_per_month: number | null;
  models: string[] | null; // null: every model
  created_at: number;
  last_login_at: number | null;
}

/** How this page is signed in: a session cookie, a key, the proxy's trusted header, or nobody (`--no-auth`). */
export type Via = "session" | "key" | "sso" | "none";

export interface Session {
  user: User;
  csrf_token: string | null; // null with --no-auth: nothing to protect
  via: Via;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: number;
  last_used_at: number | null;
}

// ---- the admin's platform settings (docs/configuration.md) -------------------------------------------------------

export interface PlatformSetting<T> {
  value: T;
  default: T; // the command line's
  saved: boolean; // set by an admin (null goes back to the default)
}

export interface PlatformSettings {
  settings: {
    num_predict: PlatformSetting<number>;
    max_num_predict: PlatformSetting<number>;
    max_reply_seconds: PlatformSetting<number>;
    model_titles: PlatformSetting<boolean>;
  };
  num_ctx_default: number;
  models: { name: string; num_ctx: number; own: number | null; saved: boolean }[];
}

export interface PlatformChange {
  num_predict?: number | null;
  max_num_predict?: number | null;
  max_reply_seconds?: number | null;
  model_titles?: boolean | null;
  num_ctx?: Record<string, number | null>;
}

// ---- the fleet of model servers (docs/backends.md) ---------------------------------------------------------------

export type BackendState = "healthy" | "half_open" | "draining" | "out";

/** One backend as GET /chat/api/admin/backends and /readyz report it. */
export interface BackendReport {
  name: string;
  kind: string;
  url: string;
  state: BackendState;
  reachable: boolean;
  slots: number;
  running: number;
  queued: number;
  models: string[];
  loaded: string[];
  version: string | null;
  last_error: string | null;
  checked_at: number | null;
}

/** One window of the live view's table (docs/monitoring.md). */
export interface SourceTable {
  requests: number;
  failures: number;
  causes: Record<string, number>;
  ttft_ms: { mean: number | null; p50: number | null; p99: number | null };
  duration_ms: { mean: number | null; p99: number | null };
  tokens_per_s: number;
}

export interface WindowTable {
  seconds: number;
  connections: { peak: number; mean: number };
  chat: SourceTable;
  raw: SourceTable;
  all: SourceTable;
}

export interface MonitorView {
  at: number;
  now: {
    connections: number;
    running: number;
    waiting: number;
    tokens_per_s: number;
    cpu_percent: number;
    rss_bytes: number;
    open: { websocket: number; sse: number; raw: number };
    running_by_model: Record<string, number>;
    waiting_by_model: Record<string, number>;
  };
  windows: Record<string, WindowTable>;
  backends: Array<{
    name: string;
    state: string;
    slots: number;
    running: number;
    queued: number;
    resident: Array<{ name: string; size: number; size_vram: number; spilled: boolean }>;
    server_memory: { visible: boolean; why: string | null; pid?: number; rss_bytes?: number };
  }>;
  gpu: {
    visible: boolean;
    why: string | null;
    devices: Array<{ index: number; name: string; memory_used: number; memory_total: number; utilisation_percent: number }>;
  };
  history: Array<{ at: number; connections: number; running: number; waiting: number; tokens_per_s: number }>;
}

export interface UsageRow {
  bucket: number;
  user?: string;
  key?: string;
  model?: string;
  backend?: string;
  source?: string;
  requests: number;
  failures: number;
  prompt_tokens: number;
  output_tokens: number;
}

export interface UsageReport {
  rows: UsageRow[];
  totals: { requests: number; failures: number; prompt_tokens: number; output_tokens: number };
  names: { users: Record<string, string>; keys: Record<string, string> };
}
