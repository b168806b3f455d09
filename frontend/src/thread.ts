// The open conversation's messages: merges the server's rows, snapshots and deltas, renders once per frame.
import { copyText, flash } from "./dom";
import type { ResumePoint } from "./link";
import { MessageView } from "./message";
import type { ConversationView, Message, ReplyEvent, ServerEvent, Shown, Snapshot, Versions } from "./types";

export type Action = "copy" | "edit" | "regenerate" | "continue" | "version-previous" | "version-next";

export interface ThreadHooks {
  busyChanged(busy: boolean): void;
  /** A reply ended; `watched` is true when this tab saw it end (not when it was loaded finished). */
  replyFinished(view: MessageView, watched: boolean): void;
  action(action: Action, view: MessageView): void;
  /** A reply's events skipped ahead of what this page has: the page asks for them again, from seq `from`. */
  lostTrack(replyId: string, from: number): void;
  error(error: unknown): void;
}

const STICK_PX = 80; // this close to the bottom, the view follows a growing reply
const ENDED_EARLY: ReadonlySet<string> = new Set(["interrupted", "failed", "stopped"]); // what Continue goes on from
const CUT_OFF: ReadonlySet<string | null> = new Set(["length", "time_limit"]); // a done reply Continue goes on from

export class Thread {
  conversationId: string | null = null;
  private readonly views = new Map<string, MessageView>();
  private readonly finished = new Set<string>(); // replies whose final row this tab has: nothing older replaces it
  private readonly versions = new Map<string, string[]>(); // a message's versions, as the server last said
  private readonly dirty = new Set<MessageView>();
  private frame = 0;
  private ticker: number | undefined;
  private busy = false;

  constructor(
    private readonly list: HTMLElement,
    private readonly scroller: HTMLElement,
    private readonly hooks: ThreadHooks,
  ) {
    list.addEventListener("click", (event) => this.click(event));
  }

  get isBusy(): boolean {
    return this.busy;
  }

  /** Empty the list; `loading` hides the empty-chat greeting until `load` brings the messages. */
  reset(conversationId: string | null, loading = false): void {
    this.conversationId = conversationId;
    this.list.toggleAttribute("data-loading", loading);
    this.views.clear();
    this.finished.clear();
    this.versions.clear();
    this.dirty.clear();
    this.list.replaceChildren();
    this.changed();
  }

  /** Merge a fetched view: rows this tab has newer versions of (streamed text, final rows) are kept. A row it
   * lacks goes if it is older than the view (the conversation's last turn): another version is shown instead. */
  load(view: ConversationView): void {
    if (view.conversation.id !== this.conversationId) this.reset(view.conversation.id);
    const opening = this.views.size === 0; // a reload after a reply leaves the reader where they are
    this.list.removeAttribute("data-loading");
    const shown = new Set(view.messages.map((m) => m.id));
    const known = Math.max(view.conversation.updated_at, ...view.messages.map((m) => m.created_at));
    for (const old of [...this.views.values()]) {
      if (!shown.has(old.id) && old.message.created_at <= known) this.remove(old.id);
    }
    this.setVersions(Object.fromEntries(view.messages.map((m) => [m.id, view.versions[m.id] ?? []])));
    for (const message of view.messages) this.upsert(message, false);
    if (view.active) this.snapshot(view.active);
    this.changed();
    if (opening) this.scrollToEnd();
  }

  apply(event: ServerEvent): void {
    if (!("conversation_id" in event) || event.conversation_id !== this.conversationId) return;
    switch (event.type) {
      case "message.new":
        this.upsert(event.message, false);
        break;
      case "messages.superseded":
        for (const id of event.ids) this.remove(id);
        break;
      case "versions":
        this.setVersions(event.versions);
        break;
      case "version.shown":
        this.show(event);
        break;
      case "reply.queue":
        this.queued(event.id, event.queue_position);
        break;
      case "reply.snapshot":
        this.snapshot(event);
        break;
      case "reply.done": // always final, also when it repeats or skips numbers (a stored row has none)
        this.finish(event.message, event.seq);
        break;
      case "reply.start":
      case "reply.status":
      case "reply.delta":
      case "reply.stats":
      case "reply.error":
      case "reply.switch":
        this.numbered(event);
        break;
    }
    this.changed();
  }

  /** The reply being written here and the first of its events this page lacks (none shown yet: from 1). */
  resumePoint(): ResumePoint | null {
    const live = [...this.views.values()].find((view) => view.live && view.message.role === "assistant");
    if (!live || !this.conversationId) return null;
    return { conversation_id: this.conversationId, reply_id: live.id, from: live.seq + 1 };
  }

  /** Rows from an ack (the reply as it started) arrive in any order with the events; the same merge applies. */
  add(message: Message | undefined, versions: Versions = {}): void {
    if (!message || message.conversation_id !== this.conversationId) return;
    this.setVersions(versions);
    this.upsert(message, false);
    this.changed();
    this.scrollToEnd();
  }

  /** Another version is shown (this tab's switch or another's): the thread is redrawn from there on. */
  show(shown: Shown): void {
    for (const id of shown.hidden) this.remove(id);
    this.setVersions(shown.versions);
    for (const message of shown.messages) this.upsert(message, false);
    this.changed();
    this.flush(); // drawn now: the page moves focus into the version shown
  }

  /** The message's element, if it is shown. */
  element(id: string): HTMLElement | undefined {
    return this.views.get(id)?.element;
  }

  scrollToEnd(): void {
    requestAnimationFrame(() => (this.scroller.scrollTop = this.scroller.scrollHeight));
  }

  private upsert(message: Message, final: boolean): MessageView {
    let view = this.views.get(message.id);
    if (!view) {
      view = new MessageView(message);
      view.versions = this.versions.get(message.id) ?? [];
      this.views.set(message.id, view);
      this.insert(view);
    } else if (this.finished.has(message.id) && !final) {
      return view; // an older row (an ack, a slow fetch) after the final one
    } else if (final || !isLive(message) || view.seq === 0) {
      view.update(message);
    } else {
      const { content: _c, thinking: _t, status: _s, ...rest } = message; // the streamed text is newer
      view.update(rest);
    }
    if (final || !isLive(message)) this.finished.add(message.id);
    this.mark(view.id);
    return view;
  }

  /** Events are applied in seq order, each once: a repeat (a replay overlapping live events) is dropped, and a
   * gap is asked for again rather than papered over, so the text is never doubled nor missing a piece. */
  private numbered(event: ReplyEvent): void {
    if (this.finished.has(event.id)) return;
    const last = this.views.get(event.id)?.seq ?? 0;
    if (event.seq <= last) return;
    if (event.seq > last + 1) return this.hooks.lostTrack(event.id, last + 1);
    const view = event.type === "reply.start" ? this.upsert(event.message, false) : this.views.get(event.id);
    if (!view) return; // only reply.start has seq 1, so an unknown reply cannot get here
    this.step(view, event);
    view.seq = event.seq;
    this.mark(view.id);
  }

  private step(view: MessageView, event: ReplyEvent): void {
    const m = view.message;
    switch (event.type) {
      case "reply.start": // seq 1 comes first, so nothing streamed yet: the row (a continued reply's text) is it
        view.update(event.message);
        break;
      case "reply.status":
        view.update({ status: event.status, queue_position: null });
        break;
      case "reply.delta":
        view.update({ content: m.content + (event.content ?? ""), thinking: m.thinking + (event.thinking ?? "") });
        break;
      case "reply.stats": {
        const { done_reason, prompt_tokens, output_tokens, eval_ms, ttft_ms, total_ms, timing } = event;
        view.update({ done_reason, prompt_tokens, output_tokens, eval_ms, ttft_ms, total_ms, timing });
        break;
      }
      case "reply.error": // shown once the reply.done that follows ends it
        view.update({ error: event.message, error_kind: event.code });
        break;
      case "reply.switch": {
        // The same reply goes on from another backend: marked where it did, named in its details.
        const { from, to, at } = event;
        const backend = [...(m.backend ?? "").split(",").filter(Boolean), to].join(",");
        view.update({ switches: [...(m.switches ?? []), { from, to, at }], backend });
        break;
      }
    }
  }

  /** Only a reply still waiting has a place in the queue; reply.queue is not numbered, so it is checked here. */
  private queued(id: string, position: number): void {
    const view = this.views.get(id);
    if (!view || this.finished.has(id) || view.message.status !== "waiting") return;
    view.update({ queue_position: position });
    this.mark(id);
  }

  /** The reply as of seq N: newer than what this page has replaces it; older (a slow fetch) is ignored. */
  private snapshot(snapshot: Snapshot): void {
    const view = this.upsert(snapshot.message, false);
    if (this.finished.has(snapshot.id) || snapshot.seq < view.seq) return;
    const { status, content, thinking, queue_position } = snapshot;
    view.update({ status, content, thinking, queue_position: status === "waiting" ? queue_position : null });
    view.seq = snapshot.seq;
    this.mark(view.id);
  }

  private finish(message: Message, seq: number | null): void {
    const watched = !this.finished.has(message.id);
    const view = this.upsert(message, true);
    if (seq !== null) view.seq = Math.max(view.seq, seq);
    view.render(); // now, not next frame: the announcement reads the rendered text
    this.hooks.replyFinished(view, watched);
  }

  private setVersions(versions: Versions): void {
    for (const [id, ids] of Object.entries(versions)) {
      this.versions.set(id, ids);
      const view = this.views.get(id);
      if (view) {
        view.versions = ids;
        this.mark(id);
      }
    }
  }

  private remove(id: string): void {
    const view = this.views.get(id);
    if (!view) return;
    this.views.delete(id);
    this.dirty.delete(view);
    view.element.remove();
  }

  /** Keep the server's order (created_at, then id) whatever order rows arrive in. */
  private insert(view: MessageView): void {
    const key = (m: Message): string => `${String(m.created_at).padStart(15, "0")}${m.id}`;
    const mine = key(view.message);
    const after = [...this.views.values()].find(
      (other) => other !== view && other.element.isConnected && key(other.message) > mine,
    );
    this.list.insertBefore(view.element, after?.element ?? null);
  }

  private mark(id: string): void {
    const view = this.views.get(id);
    if (!view) return;
    this.dirty.add(view);
    // Coalesce: however many deltas arrive, the DOM is rebuilt at most once per frame, from the full text.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  private flush(): void {
    this.frame = 0;
    const s = this.scroller;
    const stick = s.scrollHeight - s.scrollTop - s.clientHeight < STICK_PX;
    for (const view of this.dirty) view.render();
    this.dirty.clear();
    if (stick) s.scrollTop = s.scrollHeight;
  }

  /** After any change: who may be edited, regenerated or switched, whether a reply is in flight, the thinking
   * timer. Any of the user's messages may be edited (a new version of it); only the last reply regenerated. */
  private changed(): void {
    const ordered = [...this.list.children]
      .map((element) => this.views.get((element as HTMLElement).dataset.id ?? ""))
      .filter((view) => view !== undefined);
    const busy = ordered.some((view) => view.live);
    const last = ordered.at(-1);
    for (const view of ordered) {
      const canEdit = !busy && view.message.role === "user";
      const canRegenerate = !busy && view === last && view.message.role === "assistant";
      const m = view.message;
      const cutOff = m.status === "done" && CUT_OFF.has(m.done_reason);
      const canContinue = canRegenerate && (ENDED_EARLY.has(m.status) || cutOff);
      const same = canEdit === view.canEdit && canRegenerate === view.canRegenerate && !busy === view.canSwitch;
      if (!same || canContinue !== view.canContinue) {
        view.canEdit = canEdit;
        view.canRegenerate = canRegenerate;
        view.canContinue = canContinue;
        view.canSwitch = !busy;
        this.mark(view.id);
      }
    }
    if (busy && this.ticker === undefined) this.ticker = window.setInterval(() => this.tick(), 250);
    if (!busy) {
      window.clearInterval(this.ticker);
      this.ticker = undefined;
    }
    if (busy !== this.busy) {
      this.busy = busy;
      this.hooks.busyChanged(busy);
    }
  }

  /** The live "Thinking… 2.1 s" moves on even while the model sends nothing. */
  private tick(): void {
    for (const view of this.views.values()) if (view.message.status === "thinking") this.mark(view.id);
  }

  private click(event: MouseEvent): void {
    const button = (event.target as Element).closest<HTMLElement>("[data-action]");
    if (!button) return;
    if (button.dataset.action === "copy-code") {
      const code = button.closest(".code-block")?.querySelector("pre")?.textContent ?? "";
      copyText(code).then(() => flash(button, "Copied"), this.hooks.error);
      return;
    }
    const id = button.closest<HTMLElement>("[data-testid=message]")?.dataset.id;
    const view = id ? this.views.get(id) : undefined;
    if (view) this.hooks.action(button.dataset.action as Action, view);
  }
}

function isLive(message: Message): boolean {
  return message.status === "waiting" || message.status === "thinking" || message.status === "writing";
}
