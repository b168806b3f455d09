// How numbers and times read on the page.
import type { Message, Model } from "./types";

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dated = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const count = new Intl.NumberFormat();

export function messageTime(ms: number): { short: string; long: string; iso: string } {
  const when = new Date(ms);
  const today = new Date().toDateString() === when.toDateString();
  return { short: (today ? clock : dated).format(when), long: full.format(when), iso: when.toISOString() };
}

export function seconds(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

export function tokens(n: number): string {
  return count.format(n);
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

/** 3.1K, 8.2K, 256: a count where there is little room. */
export function fewTokens(n: number): string {
  return compact.format(n);
}

/** TTFT, tokens/s, output tokens and total time, from whichever of them the finished reply has. */
export function replyStats(message: Message): string[] {
  const parts: string[] = [];
  if (message.ttft_ms != null) parts.push(`TTFT ${message.ttft_ms < 1000 ? `${message.ttft_ms} ms` : seconds(message.ttft_ms)}`);
  if (message.output_tokens && message.eval_ms) {
    parts.push(`${((message.output_tokens / message.eval_ms) * 1000).toFixed(1)} tok/s`);
  }
  if (message.output_tokens != null) parts.push(`${tokens(message.output_tokens)} tokens`);
  if (message.total_ms != null) parts.push(`${seconds(message.total_ms)} total`);
  return parts;
}

/** `qwen3:32b · 20.0 GB · Q4_K_M`, then `— unavailable` when no backend serves it now, or with `where` (a
 * fleet of several) the backends it runs on: `— gpu0, gpu1`. */
export function modelLabel(model: Model, where = false): string {
  const parts = [model.name];
  if (model.size) parts.push(`${(model.size / 1e9).toFixed(1)} GB`);
  if (model.quantization) parts.push(model.quantization);
  const label = parts.join(" · ");
  if (model.backends?.length === 0) return `${label} — unavailable`;
  return where && model.backends ? `${label} — ${model.backends.join(", ")}` : label;
}

/** The backends that wrote a reply, in order: `gpu0 → gpu1` from the stored `gpu0,gpu1`. */
export function backendPath(backend: string | null | undefined): string {
  return (backend ?? "").split(",").filter(Boolean).join(" → ");
}

export function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** 1st, 2nd, 3rd, 4th … 11th, 12th, 13th … 21st. */
export function ordinal(n: number): string {
  const teen = n % 100 >= 11 && n % 100 <= 13;
  const suffix = teen ? "th" : ({ 1: "st", 2: "nd", 3: "rd" } as Record<number, string>)[n % 10] ?? "th";
  return `${n}${suffix}`;
}

const day = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

/** A date in a table ("Mar 3, 2026, 14:05" or, for today, "14:05"); `never` for none. */
export function when(ms: number | null | undefined, never = "never"): string {
  if (ms == null) return never;
  const at = new Date(ms);
  return new Date().toDateString() === at.toDateString() ? clock.format(at) : `${day.format(at)}, ${clock.format(at)}`;
}
