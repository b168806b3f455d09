// Live events and commands: one WebSocket per tab, or Server-Sent Events plus POSTs where WebSockets fail.
import { SocketTransport } from "./socket";
import { SseTransport } from "./sse";
import type { Hooks, Transport } from "./link";

/** The WebSocket unless `?transport=sse` forces the fallback; it falls back by itself after failed attempts. */
export function connect(hooks: Hooks, forceSse: boolean): Transport {
  if (forceSse) return new SseTransport(hooks);
  let current: Transport;
  let watched: string | null = null;
  const fallback = (): void => {
    current.close();
    current = new SseTransport(hooks);
    void current.watch(watched);
  };
  current = new SocketTransport(hooks, fallback);
  return {
    get kind() {
      return current.kind;
    },
    watch(conversationId) {
      watched = conversationId;
      return current.watch(conversationId);
    },
    command: (name, conversationId, fields) => current.command(name, conversationId, fields),
    resume: (replyId, from) => current.resume(replyId, from),
    close: () => current.close(),
  };
}
