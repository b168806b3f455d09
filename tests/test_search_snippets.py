"""Search snippets (plain text around the match, with the match located in it) and export file names: the pure
functions, then over HTTP against a real gateway on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from chat_support import ChatApi, chat_api, postgres_database
from clawdbot.chat.exports import content_disposition, file_name
from clawdbot.chat.snippets import BEFORE, flatten, snippet
from conftest import Server, script, start_gateway

FILLER = "Nothing to see in this sentence, which only pads the message out. " * 60


def marked(text: str, highlights: list[tuple[int, int]] | list[list[int]]) -> list[str]:
    return [text[start:end] for start, end in highlights]


# ---- the snippet, as a function ------------------------------------------------------------------------------------
def test_a_match_deep_in_a_long_message_opens_the_snippet() -> None:
    found = snippet(FILLER + "The quokka lives on Rottnest Island. " + FILLER, "QUOKKA")
    assert found.text.startswith("…")
    assert found.text.endswith("…")
    assert marked(found.text, found.highlights) == ["quokka"]
    assert found.highlights[0][0] <= BEFORE + 1  # on the first line the sidebar shows
    assert "  " not in found.text
    assert len(found.text) < 200
    assert found.text.split(" ")[1] in FILLER.split(" ")  # cut after a space: the first word is whole
    assert found.text[:-1].split(" ")[-1] in FILLER.split(" ")


def test_markdown_is_flattened_and_html_is_kept_as_the_text_the_page_shows() -> None:
    message = """# Setup

1. Install **nginx** with `apt install nginx`
2. See [the docs](https://nginx.org/en/docs/) and ![a diagram](https://example.com/d.png)

> a quote about _nginx_ and snake_case_names

| Server | Port |
|---|---|
| nginx | 80 |

```bash
sudo systemctl reload nginx
```

Raw <b>bold</b> stays as written."""
    assert flatten(message, in_code=False) == (
        "Setup Install nginx with apt install nginx See the docs and a diagram a quote about nginx and "
        "snake_case_names Server · Port nginx · 80 sudo systemctl reload nginx Raw <b>bold</b> stays as written."
    )
    found = snippet(message, "nginx")
    assert found.text.startswith("Setup Install nginx with apt install nginx See the docs")
    assert found.text.endswith("…")
    assert marked(found.text, found.highlights) == ["nginx"] * found.text.count("nginx")
    html = snippet(message, "<b>bold</b>")
    assert html.text.endswith("Raw <b>bold</b> stays as written.")
    assert marked(html.text, html.highlights) == ["<b>bold</b>"]


def test_a_search_for_markup_finds_it_in_the_text_as_written() -> None:
    found = snippet("Use **bold** sparingly", "**bold**")
    assert found.text == "Use **bold** sparingly"
    assert marked(found.text, found.highlights) == ["**bold**"]


def test_cjk_is_cut_between_characters_and_counted_double() -> None:
    text = "我们来测试中文搜索功能" * 20 + "目标词" + "后面的文字" * 40
    found = snippet(text, "目标")
    assert marked(found.text, found.highlights) == ["目标"]
    start = found.highlights[0][0]
    assert 1 < start <= BEFORE // 2 + 1  # about half as many wide characters before it
    assert found.text.startswith("…")
    assert found.text.endswith("…")


def test_offsets_count_code_points_where_lowering_changes_lengths_and_emoji_are_astral() -> None:
    found = snippet("İİ 👨‍👩‍👧 Café NEEDLE and needle", "needle")
    assert marked(found.text, found.highlights) == ["NEEDLE", "needle"]
    combining = snippet("e\u0301" * 40 + " word café needle", "needle")
    assert combining.text.startswith("…word")
    assert marked(combining.text, combining.highlights) == ["needle"]


# ---- file names, as functions --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("Deploying nginx", "Deploying nginx.md"),
        ("Über: Straße/Café?", "Über Straße Café.md"),
        ("中文 测试", "中文 测试.md"),
        ("", "Untitled conversation.md"),
        ("...", "Untitled conversation.md"),
        ("CON", "CON conversation.md"),
        ('a <b> "c" | d\\e\tf', "a b c d e f.md"),
    ],
)
def test_file_names_keep_the_title_and_drop_what_file_systems_refuse(title: str, name: str) -> None:
    assert file_name(title, "md") == name


def test_long_titles_fit_a_file_system_and_headers_stay_ascii() -> None:
    name = file_name("你" * 200, "json")
    assert len(name.encode()) <= 210
    assert name.endswith("你.json")
    header = content_disposition(name)
    assert header.isascii()
    assert unquote(header.split("filename*=UTF-8''")[1]) == name


# ---- over HTTP, on both databases ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, simulator: Server) -> Iterator[Server]:
    sqlite = f"sqlite:///{tempfile.mkdtemp(prefix='clawdbot-snippets-')}/chat.db"
    with postgres_database() if request.param == "postgresql" else contextlib.nullcontext(sqlite) as url:
        server = start_gateway(simulator.url, "--database-url", url)
        yield server
        server.stop()


@pytest.fixture
def api(gateway: Server, simulator: Server) -> Iterator[ChatApi]:
    script(simulator, {"reply": "ok", "thinking": "", "times": -1})
    with chat_api(gateway.url) as client:
        yield client


def test_search_answers_plain_text_with_the_matches_located(api: ChatApi) -> None:
    tag = uuid.uuid4().hex[:8]
    deep = api.create()["id"]
    api.turn(deep, FILLER + f"Then **{tag}Quokka** appears, see [{tag}quokka](https://example.com). " + FILLER)
    cjk = api.create()["id"]
    api.turn(cjk, "中文内容" * 50 + f"{tag}袋鼠" + "结尾" * 50)
    titled = api.create(title=f"Only the title {tag}quokka")["id"]

    results = {r["conversation"]["id"]: r for r in api.search(f"{tag}QUOKKA")}
    hit = results[deep]
    assert hit["snippet"].startswith("…pads the message out. Then ")  # cut at a space
    assert f"Then {tag}Quokka appears, see {tag}quokka. Nothing" in hit["snippet"]  # markup gone
    assert marked(hit["snippet"], hit["highlights"]) == [f"{tag}Quokka", f"{tag}quokka"]
    assert results[titled]["snippet"] is None
    assert results[titled]["highlights"] == []

    hit = next(r for r in api.search(f"{tag}袋鼠") if r["conversation"]["id"] == cjk)
    assert marked(hit["snippet"], hit["highlights"]) == [f"{tag}袋鼠"]
    assert hit["highlights"][0][0] <= BEFORE


def test_export_is_named_after_the_title(api: ChatApi) -> None:
    cid = api.create(title="Deploying nginx: Über/Straße")["id"]
    api.turn(cid, "hello")
    for kind, suffix in (("markdown", "md"), ("json", "json")):
        response = api.http.get(f"/conversations/{cid}/export", params={"format": kind})
        assert response.status_code == 200
        disposition = response.headers["Content-Disposition"]
        assert disposition == (
            f'attachment; filename="Deploying nginx Uber Strae.{suffix}"; '
            f"filename*=UTF-8''Deploying%20nginx%20%C3%9Cber%20Stra%C3%9Fe.{suffix}"
        )
    untitled = api.create()["id"]
    response = api.http.get(f"/conversations/{untitled}/export")
    assert "filename*=UTF-8''Untitled%20conversation.md" in response.headers["Content-Disposition"]
