// A send is idempotent by its client_id, so one that a dropped connection left unanswered is sent again, the same.
import { ApiError } from "./api";
import { backoff } from "./link";

const ATTEMPTS = 5;
const WITHIN_MS = 60_000;

/** Runs `send` until it is answered, within a minute. A lost connection (status 0) is retried a few times; a 503 for
 * want of Redis (the state the gateway processes share, back within seconds after a restart or a failover) until
 * the minute is up, no sooner than its retry_after, and `waiting` hears of each such wait. The WebSocket transport
 * itself waits for the link to come back before each try; the backoff covers SSE's POSTs. */
export async function untilAnswered<T>(
  send: () => Promise<T>,
  waiting: (error: ApiError, ms: number) => void = () => undefined,
): Promise<T> {
  const deadline = Date.now() + WITHIN_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const shared = error.code === "redis_unavailable";
      const wait = Math.max(backoff(attempt - 1), shared ? (error.details.retry_after ?? 0) * 1000 : 0);
      const again = shared || (error.connectionLost && attempt < ATTEMPTS);
      if (!again || Date.now() + wait > deadline) throw error;
      if (shared) waiting(error, wait);
      await new Promise((resolve) => window.setTimeout(resolve, wait));
    }
  }
}
