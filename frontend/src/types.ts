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
  queue_position?: number | null; // not sent today; shown if a server ever does
}

export interface Snapshot {
  type: "reply.snapshot";
  conversation_id: string;
  id: string;
  status: ReplyStatus;
  seq: number;
  content: string;
  thinking: string;
  message: Message;
}

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
  | { type: "error"; ref: number | null; code: string; status?: number; message: string }
  | { type: "message.new"; conversation_id: string; message: Message }
  | { type: "messages.superseded"; conversation_id: string; ids: string[] }
  | { type: "reply.start"; conversation_id: string; message: Message }
  | { type: "reply.status"; conversation_id: string; id: string; status: ReplyStatus; queue_position?: number }
  | { type: "reply.delta"; conversation_id: string; id: string; seq: number; content?: string; thinking?: string }
  | Snapshot
  | { type: "reply.done"; conversation_id: string; message: Message };

/** What a send, edit or regenerate answers, on either transport. */
export interface TurnResult {
  message?: Message;
  reply?: Message;
  stopping?: string | null;
}

export type CommandName = "send" | "edit" | "regenerate" | "stop";
