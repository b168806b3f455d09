// One message on the page. A reply re-renders from its whole text so far, at most once per frame (the caller's job).
import { h } from "./dom";
import { backendPath, messageTime, ordinal, replyStats, seconds } from "./format";
import { timingPanel } from "./timing";
import { icon } from "./icons";
import type { IconName } from "./icons";
import { renderMarkdown } from "./markdown";
import { renderWithSwitches } from "./switches";
import type { Message, Status } from "./types";

const LIVE: ReadonlySet<Status> = new Set(["waiting", "thinking", "writing"]);
const LABELS: Record<Status, string> = {
  sent: "",
  waiting: "Waiting…",
  thinking: "Thinking…",
  writing: "Writing…",
  done: "Done",
  stopped: "Stopped",
  failed: "Failed",
  interrupted: "Interrupted",
};

/** What a done reply that the model did not end says of itself: cut off at a limit of length or time. */
export function cutOff(message: Message): string | null {
  if (message.status !== "done") return null;
  if (message.done_reason === "length") return "Cut off at the length limit";
  if (message.done_reason === "time_limit") return "Cut off at the time limit";
  return null;
}

function actionButton(action: string, label: string, name: IconName): HTMLButtonElement {
  const button = h("button", {
    type: "button",
    class: "msg-action",
    "data-action": action,
    "data-testid": action,
    title: label,
    "aria-label": label,
  });
  button.append(icon(name), h("span", { class: "label", text: label }));
  return button;
}

/** `‹` or `›` of the versions switcher: an icon with a label for screen readers (and a tooltip). */
function versionButton(action: "version-previous" | "version-next", label: string): HTMLButtonElement {
  const button = h("button", {
    type: "button",
    class: "msg-version-step",
    "data-action": action,
    "data-testid": action,
    title: label,
    "aria-label": label,
  });
  button.append(icon(action === "version-previous" ? "previous" : "next"));
  return button;
}

export class MessageView {
  readonly element: HTMLElement;
  seq = 0; // the last of this reply's numbered events applied; one at or below it is a repeat
  canEdit = false;
  canRegenerate = false;
  canContinue = false;
  canSwitch = false;
  versions: string[] = []; // this message's versions, oldest first; with fewer than two, no ‹ n/m › is drawn
  private readonly status = h("span", { class: "msg-status", "data-testid": "message-status" });
  private readonly time = h("time", { class: "msg-time", "data-testid": "message-time" });
  private readonly thinking = h("details", { class: "thinking", "data-testid": "thinking" });
  private readonly thinkingSummary = h("summary", { "data-testid": "thinking-summary" });
  private readonly thinkingBody = h("div", { class: "thinking-body" });
  readonly body = h("div", { class: "msg-body", "data-testid": "message-content" });
  private readonly error = h("p", { class: "msg-error", "data-testid": "message-error", role: "note" });
  // The stats line opens where the reply's time went (timing.ts), once the reply has that.
  private readonly stats = h("button", {
    type: "button",
    class: "msg-stats",
    "data-testid": "message-stats",
    "aria-expanded": "false",
  });
  private readonly timing = h("div", { class: "msg-timing", "data-testid": "message-timing", hidden: true });
  private timingShown: Message["timing"] = null;
  private readonly backend = h("span", { class: "msg-backend", "data-testid": "message-backend" });
  private readonly copy = actionButton("copy", "Copy", "copy");
  private readonly edit = actionButton("edit", "Edit", "edit");
  private readonly regenerate = actionButton("regenerate", "Regenerate", "regenerate");
  private readonly continue = actionButton("continue", "Continue", "continue");
  private readonly previous = versionButton("version-previous", "Previous version");
  private readonly next = versionButton("version-next", "Next version");
  // "2/3" on screen, "Version 2 of 3" to a screen reader
  private readonly versionLabel = h("span", {
    class: "msg-version-label",
    "data-testid": "version-label",
    "aria-hidden": true,
  });
  private readonly versionSpoken = h("span", { class: "sr-only" });
  private readonly versionSwitcher = h(
    "div",
    { class: "msg-versions", role: "group", "aria-label": "Versions", "data-testid": "versions" },
    this.previous,
    this.versionLabel,
    this.versionSpoken,
    this.next,
  );
  private rendered: string | null = null; // the content and switches last rendered
  private renderedThinking: string | null = null;
  private thinkingFrom: number | null = null; // client clock, for the live "Thinking… 2.1 s"
  private thinkingUntil: number | null = null;
  editing = false;

  constructor(public message: Message) {
    const who = message.role === "user" ? "You" : (message.model ?? "Assistant");
    this.element = h("article", {
      class: `msg msg-${message.role}`,
      "data-testid": "message",
      "data-id": message.id,
      "data-role": message.role,
    });
    this.thinking.append(this.thinkingSummary, this.thinkingBody);
    const meta = h("div", { class: "msg-meta" }, h("span", { class: "msg-who", text: who }), this.time, this.status);
    const actions = h("div", { class: "msg-actions" }, this.copy, this.edit, this.regenerate, this.continue);
    const foot = h("div", { class: "msg-foot" }, this.versionSwitcher, this.stats, this.backend, actions);
    this.element.append(meta, this.thinking, this.body, this.error, foot, this.timing);
    this.stats.addEventListener("click", () => this.toggleTiming());
    this.noteStatus(message.status);
  }

  get id(): string {
    return this.message.id;
  }

  get live(): boolean {
    return LIVE.has(this.message.status);
  }

  /** Take newer fields; remembers when thinking started and ended, for the live timer. */
  update(fields: Partial<Message>): void {
    if (fields.status && fields.status !== this.message.status) this.noteStatus(fields.status);
    this.message = { ...this.message, ...fields };
  }

  render(): void {
    const m = this.message;
    this.element.dataset.status = m.status;
    this.element.toggleAttribute("data-cut-off", cutOff(m) !== null);
    this.element.classList.toggle("is-live", this.live);
    const when = messageTime(m.created_at);
    this.time.textContent = when.short;
    this.time.dateTime = when.iso;
    this.time.title = when.long;
    this.status.textContent = this.statusText();
    this.status.hidden = !this.status.textContent;
    this.renderThinking();
    if (!this.editing) this.renderBody();
    this.error.textContent = m.error ?? "";
    this.error.hidden = !m.error || !(m.status === "failed" || m.status === "interrupted");
    const stats = this.live || m.role === "user" ? [] : replyStats(m);
    this.stats.textContent = stats.join(" · ");
    this.stats.hidden = stats.length === 0;
    this.stats.disabled = !m.timing || this.live;
    this.stats.title = this.stats.disabled ? "" : "Where this reply's time went";
    if (!this.timing.hidden && m.timing !== this.timingShown) this.renderTiming();
    const path = this.live || m.role === "user" ? "" : backendPath(m.backend);
    this.backend.textContent = path; // a backend's name is the admin's text: never HTML
    this.backend.title = path && `Written by ${path.replaceAll(" → ", ", then ")}`;
    this.backend.hidden = !path;
    this.copy.hidden = this.live || !m.content;
    this.edit.hidden = !this.canEdit;
    this.regenerate.hidden = !this.canRegenerate;
    this.continue.hidden = !this.canContinue;
    this.renderVersions();
  }

  private toggleTiming(): void {
    const open = this.timing.hidden && !!this.message.timing;
    this.timing.hidden = !open;
    this.stats.setAttribute("aria-expanded", String(open));
    if (open) this.renderTiming();
  }

  private renderTiming(): void {
    const timing = this.message.timing;
    this.timingShown = timing;
    this.timing.replaceChildren(...(timing ? [timingPanel(timing)] : []));
  }

  /** The version `step` away from this one (-1: the previous, 1: the next), if there is one. */
  versionAt(step: number): string | undefined {
    const index = this.versions.indexOf(this.id);
    return index < 0 ? undefined : this.versions[index + step];
  }

  /** `‹ 2/3 ›`: read as "Version 2 of 3"; a step that goes nowhere, or any while a reply is written, is disabled. */
  private renderVersions(): void {
    const index = this.versions.indexOf(this.id);
    const count = this.versions.length;
    this.versionSwitcher.hidden = count < 2 || index < 0;
    if (this.versionSwitcher.hidden) return;
    this.versionLabel.textContent = `${index + 1}/${count}`;
    this.versionSpoken.textContent = `Version ${index + 1} of ${count}`;
    this.previous.disabled = !this.canSwitch || index === 0;
    this.next.disabled = !this.canSwitch || index === count - 1;
  }

  /** A user message's text turns into an editor; `save` resolves true when the new text was accepted. */
  beginEdit(save: (text: string) => Promise<boolean>): void {
    if (this.editing) return;
    this.editing = true;
    const area = h("textarea", {
      class: "edit-input",
      "data-testid": "edit-input",
      rows: 3,
      "aria-label": "Edit your message",
    });
    area.value = this.message.content;
    const cancel = h("button", { type: "button", class: "button", "data-testid": "edit-cancel", text: "Cancel" });
    const send = h("button", { type: "button", class: "button primary", "data-testid": "edit-save", text: "Send" });
    const finish = (): void => {
      this.editing = false;
      this.rendered = null;
      this.render();
    };
    cancel.addEventListener("click", finish);
    send.addEventListener("click", async () => {
      if (area.value.trim() && (await save(area.value))) finish();
    });
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        finish();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send.click();
      }
    });
    this.body.replaceChildren(area, h("div", { class: "edit-buttons" }, cancel, send));
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  private noteStatus(status: Status): void {
    const now = performance.now();
    if (status === "thinking") this.thinkingFrom ??= now;
    else if (this.thinkingFrom !== null) this.thinkingUntil ??= now;
  }

  private statusText(): string {
    const m = this.message;
    const place = m.status === "waiting" && m.queue_position ? ordinal(m.queue_position) : null;
    if (place) return `Waiting for the model — ${place} in line`;
    return cutOff(m) ?? LABELS[m.status];
  }

  private renderThinking(): void {
    const m = this.message;
    const visible = Boolean(m.thinking) || m.status === "thinking";
    this.thinking.hidden = !visible;
    if (!visible) return;
    this.thinking.classList.toggle("is-live", m.status === "thinking");
    this.thinkingSummary.textContent = this.thinkingLabel();
    if (m.thinking !== this.renderedThinking) {
      this.thinkingBody.textContent = m.thinking; // thinking is shown as written, never as HTML
      this.renderedThinking = m.thinking;
    }
  }

  private thinkingLabel(): string {
    const m = this.message;
    const from = this.thinkingFrom;
    if (m.status === "thinking") return from === null ? "Thinking…" : `Thinking… ${seconds(performance.now() - from)}`;
    if (m.thinking_ms != null) return `Thought for ${seconds(m.thinking_ms)}`;
    if (from !== null && this.thinkingUntil !== null) return `Thought for ${seconds(this.thinkingUntil - from)}`;
    return "Thoughts";
  }

  private renderBody(): void {
    const { content, switches } = this.message;
    const key = switches?.length ? content + JSON.stringify(switches) : content;
    if (key === this.rendered) return;
    this.rendered = key;
    if (this.message.role === "user") this.body.textContent = content; // what the user typed, as typed
    else if (switches?.length) this.body.replaceChildren(renderWithSwitches(content, switches));
    else this.body.replaceChildren(renderMarkdown(content));
  }
}
