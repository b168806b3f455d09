// A send is idempotent by its client_id, so one that a dropped connection left unanswered is sent again, the same.
import { ApiError } from "./api";
import { backoff } from "./link";

const ATTEMPTS = 5;
const WITHIN_MS = 60_000;

/** Runs `send` until it is answered; only a lost connection (status 0) is retried, a few times within a minute.
 * The WebSocket transport itself waits for the link to come back before each try; the backoff covers SSE's POSTs. */
export async function untilAnswered<T>(send: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + WITHIN_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (error) {
      const wait = backoff(attempt - 1);
      const lost = error instanceof ApiError && error.connectionLost;
      if (!lost || attempt >= ATTEMPTS || Date.now() + wait > deadline) throw error;
      await new Promise((resolve) => window.setTimeout(resolve, wait));
    }
  }
}
