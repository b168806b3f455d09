// Conversations (pinned first, then newest: the server's order) under day headings, search, and each one's rename,
// pin and delete.
import { api } from "./api";
import { confirmDialog } from "./confirm";
import { byId, h } from "./dom";
import { groupConversations, midnight } from "./groups";
import { icon } from "./icons";
import type { Conversation, SearchResult } from "./types";

export interface SidebarHooks {
  deleted(conversationId: string): void;
  changed(conversation: Conversation): void;
  titled(conversationId: string, title: string): void; // the list, refreshed, has this title for it
  error(error: unknown): void;
}

const SEARCH_DELAY_MS = 200;
export const UNTITLED = "New conversation";

export function href(conversationId: string): string {
  return "#c=" + encodeURIComponent(conversationId);
}

export class Sidebar {
  private readonly list = byId("conversations");
  private readonly results = byId("search-results");
  private readonly search = byId<HTMLInputElement>("search");
  private readonly empty = byId("side-empty");
  private conversations: Conversation[] = [];
  private current: string | null = null;
  private renaming = false;
  private searchTimer: number | undefined;
  private searchRound = 0; // answers to older searches that arrive late are dropped
  private dayTimer: number | undefined;
  private renderedDay = ""; // the local date the groups were made on: a new day regroups them

  constructor(private readonly hooks: SidebarHooks) {
    // A timer set for midnight fires late after the computer slept; coming back to the tab catches up.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.renderedDay !== new Date().toDateString()) this.render();
    });
    this.list.addEventListener("click", (event) => void this.click(event));
    this.search.addEventListener("input", () => {
      window.clearTimeout(this.searchTimer);
      this.searchTimer = window.setTimeout(() => void this.runSearch(), SEARCH_DELAY_MS);
    });
    this.search.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.search.value) {
        event.stopPropagation();
        this.search.value = "";
        void this.runSearch();
      }
    });
  }

  get all(): readonly Conversation[] {
    return this.conversations;
  }

  async refresh(): Promise<void> {
    try {
      this.conversations = (await api.conversations()).conversations;
    } catch (error) {
      this.hooks.error(error);
      return;
    }
    if (!this.renaming) this.render();
    // A title the model wrote while this page's connection was away reaches the open conversation's heading too.
    const open = this.conversations.find((c) => c.id === this.current);
    if (open) this.hooks.titled(open.id, open.title);
  }

  /** Signed out: nothing of the previous user's stays in the list or the search. */
  clear(): void {
    this.conversations = [];
    this.current = null;
    this.search.value = "";
    this.results.replaceChildren();
    this.results.hidden = true;
    this.list.hidden = false;
    this.searchRound++;
    this.render();
  }

  setCurrent(conversationId: string | null): void {
    this.current = conversationId;
    for (const item of this.list.querySelectorAll<HTMLElement>("li.conv")) {
      const link = item.querySelector("a");
      if (item.dataset.id === conversationId) link?.setAttribute("aria-current", "page");
      else link?.removeAttribute("aria-current");
    }
  }

  /** Grouped under headings (real ones, for a screen reader's heading list), regrouped at the next midnight. */
  private render(): void {
    const now = new Date();
    const sections = groupConversations(this.conversations, now).map((group) => {
      const id = `conv-group-${group.key}`;
      const heading = h("h2", { class: "conv-group-title", id, "data-testid": "conversation-group", text: group.label });
      const list = h("ul", { class: "conversations", "aria-labelledby": id }, ...group.conversations.map((c) => this.item(c)));
      return h("section", { class: "conv-group", "data-group": group.key }, heading, list);
    });
    this.list.replaceChildren(...sections);
    this.empty.hidden = this.conversations.length > 0 || Boolean(this.search.value.trim());
    this.empty.textContent = "No conversations yet.";
    this.renderedDay = now.toDateString();
    window.clearTimeout(this.dayTimer);
    this.dayTimer = window.setTimeout(() => this.regroup(), midnight(now, 1).getTime() - now.getTime() + 1000);
  }

  private regroup(): void {
    if (this.renaming) this.dayTimer = window.setTimeout(() => this.regroup(), 60_000); // after the rename
    else this.render();
  }

  private item(conversation: Conversation): HTMLLIElement {
    const title = conversation.title || UNTITLED;
    const current = conversation.id === this.current ? "page" : null;
    const link = h(
      "a",
      { class: "conv-link", href: href(conversation.id), "aria-current": current },
      h("span", { class: "conv-title", "data-testid": "conversation-title", text: title }),
    );
    if (conversation.pinned) {
      link.append(h("span", { class: "conv-pin", title: "Pinned", "aria-label": "pinned" }, icon("pin")));
    }
    const more = h(
      "button",
      {
        type: "button",
        class: "icon-button conv-more",
        "data-action": "menu",
        "data-testid": "conversation-menu",
        "aria-label": `Actions for ${title}`,
        "aria-expanded": "false",
      },
      icon("more"),
    );
    const actions = h(
      "div",
      { class: "conv-actions", hidden: true },
      this.action("rename", "Rename", "edit"),
      this.action("pin", conversation.pinned ? "Unpin" : "Pin", "pin"),
      this.action("delete", "Delete", "trash"),
    );
    const attributes = { "data-id": conversation.id, "data-pinned": String(conversation.pinned) };
    return h("li", { class: "conv", "data-testid": "conversation-item", ...attributes }, link, more, actions);
  }

  private action(name: string, label: string, glyph: "edit" | "pin" | "trash"): HTMLButtonElement {
    const attributes = { type: "button", class: `conv-action conv-${name}`, "data-action": name, "data-testid": name };
    return h("button", attributes, icon(glyph), label);
  }

  private async click(event: MouseEvent): Promise<void> {
    const button = (event.target as Element).closest<HTMLElement>("button[data-action]");
    const item = button?.closest<HTMLElement>("li.conv");
    const conversation = this.conversations.find((c) => c.id === item?.dataset.id);
    if (!button || !item || !conversation) return;
    const action = button.dataset.action;
    if (action === "menu") return this.toggleMenu(item);
    this.toggleMenu(item, false);
    if (action === "rename") this.rename(item, conversation);
    else if (action === "pin") await this.change(conversation.id, { pinned: !conversation.pinned });
    else if (action === "delete") await this.remove(conversation);
  }

  private toggleMenu(item: HTMLElement, open?: boolean): void {
    for (const other of this.list.querySelectorAll<HTMLElement>("li.conv")) {
      const show = other === item && (open ?? other.querySelector<HTMLElement>(".conv-actions")!.hidden);
      other.querySelector<HTMLElement>(".conv-actions")!.hidden = !show;
      other.querySelector(".conv-more")?.setAttribute("aria-expanded", String(show));
    }
  }

  private rename(item: HTMLElement, conversation: Conversation): void {
    const link = item.querySelector<HTMLElement>(".conv-link")!;
    const input = h("input", {
      class: "rename-input",
      "data-testid": "rename-input",
      "aria-label": "New title",
      maxlength: 200,
    });
    input.value = conversation.title;
    this.renaming = true;
    link.hidden = true;
    item.prepend(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save: boolean): Promise<void> => {
      if (done) return;
      done = true;
      this.renaming = false;
      const title = input.value.trim();
      if (save && title !== conversation.title) await this.change(conversation.id, { title });
      else this.render();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") void finish(true);
      if (event.key === "Escape") {
        event.stopPropagation();
        void finish(false);
      }
    });
    input.addEventListener("blur", () => void finish(true));
  }

  private async change(conversationId: string, change: { title?: string; pinned?: boolean }): Promise<void> {
    try {
      const { conversation } = await api.change(conversationId, change);
      this.hooks.changed(conversation);
    } catch (error) {
      this.hooks.error(error);
    }
    await this.refresh();
  }

  private async remove(conversation: Conversation): Promise<void> {
    const title = conversation.title || UNTITLED;
    if (!(await confirmDialog(`Delete “${title}”? Its messages are deleted too; this cannot be undone.`))) return;
    try {
      await api.remove(conversation.id);
      this.hooks.deleted(conversation.id);
    } catch (error) {
      this.hooks.error(error);
    }
    await this.refresh();
  }

  private async runSearch(): Promise<void> {
    const query = this.search.value.trim();
    const round = ++this.searchRound;
    if (!query) {
      this.results.hidden = true;
      this.list.hidden = false;
      this.render();
      return;
    }
    let found: SearchResult[];
    try {
      found = (await api.search(query)).results;
    } catch (error) {
      this.hooks.error(error);
      return;
    }
    if (round !== this.searchRound) return;
    this.results.replaceChildren(...found.map((result) => this.result(result)));
    this.results.hidden = false;
    this.list.hidden = true;
    this.empty.hidden = found.length > 0;
    this.empty.textContent = `Nothing matches “${query}”.`;
  }

  private result(result: SearchResult): HTMLLIElement {
    const link = h(
      "a",
      { class: "conv-link", href: href(result.conversation.id) },
      h("span", { class: "conv-title", text: result.conversation.title || UNTITLED }),
    );
    if (result.snippet) {
      const snippet = marked(result.snippet, result.highlights ?? []);
      link.append(h("span", { class: "snippet", "data-testid": "search-snippet" }, ...snippet));
    }
    return h("li", { class: "conv result", "data-testid": "search-result", "data-id": result.conversation.id }, link);
  }
}

/** The snippet as text nodes with each match the server located in <mark>: built from nodes, never parsed, as the
 * snippet is message text. Offsets count code points, as Array.from splits a string. */
function marked(snippet: string, highlights: ReadonlyArray<readonly [number, number]>): Node[] {
  const chars = Array.from(snippet);
  const nodes: Node[] = [];
  let at = 0;
  for (const [start, end] of highlights) {
    if (start < at || end <= start || end > chars.length) continue; // overlapping or out of range: left unmarked
    nodes.push(document.createTextNode(chars.slice(at, start).join("")));
    nodes.push(h("mark", { text: chars.slice(start, end).join("") }));
    at = end;
  }
  nodes.push(document.createTextNode(chars.slice(at).join("")));
  return nodes;
}
