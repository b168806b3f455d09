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
  queue_position?: number | null; // the page's own field, from reply.queue and snapshots: never stored
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
    })
  | (Numbered & { type: "reply.error"; code: string | null; message: string });

export interface ContextUse {
  in_use: number | null;
  num_ctx: number;
  omitted_turns: number;
}

export interface ConversationView {
  conversation: Conversation;
  messages: Message[];
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
}

export interface Models {
  models: Model[];
  default: string;
  num_ctx: number;
  reachable: boolean;
  simulated: boolean;
}

export interface SearchResult {
  conversation: Conversation;
  snippet: string | null;
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
  | { type: "reply.queue"; conversation_id: string; id: string; queue_position: number }
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

/** What a send, edit, regenerate or continue answers, on either transport. */
export interface TurnResult {
  message?: Message;
  reply?: Message;
  stopping?: string | null;
  duplicate?: boolean; // a send repeated with the same client_id: the first one's message and reply
}

export type CommandName = "send" | "edit" | "regenerate" | "continue" | "stop";

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
