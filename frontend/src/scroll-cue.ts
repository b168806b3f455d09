// Wide tables and code blocks scroll sideways inside the reply, never the page. A fade at an edge says there is
// more that way, and goes when that end is reached: `data-more` holds "left", "right" or both, for styles.css.
const SCROLLERS = ".table-wrap, .code-block pre";

/** Keeps the cues of every scroller under `root` true as replies render, the user scrolls, or the screen turns. */
export function watchScrollCues(root: HTMLElement): void {
  const dirty = new Set<HTMLElement>();
  let frame = 0;
  const mark = (scroller: HTMLElement): void => {
    dirty.add(scroller);
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      for (const each of dirty) if (each.isConnected) cue(each);
      dirty.clear();
    });
  };
  const markAll = (within: Element): void => within.querySelectorAll<HTMLElement>(SCROLLERS).forEach(mark);
  // Scroll events do not bubble; one listener capturing them serves every scroller, present and future.
  root.addEventListener(
    "scroll",
    (event) => event.target instanceof HTMLElement && event.target.matches(SCROLLERS) && mark(event.target),
    { capture: true, passive: true },
  );
  // A streamed reply is re-rendered once per frame: only the messages that changed are looked at again.
  new MutationObserver((records) => {
    const messages = new Set<Element>();
    for (const record of records) {
      const target = record.target instanceof Element ? record.target : record.target.parentElement;
      const message = target?.closest(".msg");
      if (message) messages.add(message);
      else if (target) markAll(target);
    }
    messages.forEach(markAll);
  }).observe(root, { childList: true, subtree: true });
  new ResizeObserver(() => markAll(root)).observe(root);
}

function cue(scroller: HTMLElement): void {
  const end = scroller.scrollWidth - scroller.clientWidth;
  const more = [scroller.scrollLeft > 1 && "left", scroller.scrollLeft < end - 1 && "right"].filter(Boolean);
  if (more.length) scroller.dataset.more = more.join(" ");
  else delete scroller.dataset.more;
}
