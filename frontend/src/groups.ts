// The sidebar's groups: pinned, then by last activity in the browser's time zone (Today, Yesterday, Previous 7
// days, Previous 30 days, then one group per month), as ChatGPT and Open WebUI group them.
import type { Conversation } from "./types";

export interface Group {
  key: string; // stable, for element ids: "pinned", "today", …, "2026-03"
  label: string;
  conversations: Conversation[];
}

const month = new Intl.DateTimeFormat(undefined, { month: "long", year: "numeric" });

/** Local midnight `days` days after the one that starts `now`'s day (negative: before); DST-proof, as Date
 * normalises the day of the month. */
export function midnight(now: Date, days = 0): Date {
  return new Date(now.getFullYear(), now.getMonth(), now.getDate() + days);
}

/** The conversations in the server's order (pinned first, then newest), grouped; empty groups are left out. */
export function groupConversations(conversations: readonly Conversation[], now = new Date()): Group[] {
  const bounds: Array<[string, string, number]> = [
    ["today", "Today", midnight(now).getTime()],
    ["yesterday", "Yesterday", midnight(now, -1).getTime()],
    ["week", "Previous 7 days", midnight(now, -7).getTime()],
    ["month", "Previous 30 days", midnight(now, -30).getTime()],
  ];
  const groups: Group[] = [];
  for (const conversation of conversations) {
    const [key, label] = conversation.pinned ? ["pinned", "Pinned"] : bucket(conversation.updated_at, bounds);
    let group = groups.find((g) => g.key === key);
    if (!group) groups.push((group = { key, label, conversations: [] }));
    group.conversations.push(conversation);
  }
  return groups;
}

function bucket(updated: number, bounds: Array<[string, string, number]>): [string, string] {
  for (const [key, label, from] of bounds) if (updated >= from) return [key, label];
  const when = new Date(updated);
  return [`${when.getFullYear()}-${when.getMonth() + 1}`, month.format(when)];
}
