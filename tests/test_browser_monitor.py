"""The admin's Monitor and Usage in a real browser: under traffic the test sends and counts itself, the numbers the
page shows match (requests, failures, tokens), the charts draw, and the CSV link downloads the same figures."""

from __future__ import annotations

import csv
import http.client
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from browser_support import chromium, new_page, page_gateway
from chat_support import wait_until
from conftest import Server, script

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = page_gateway(simulator.url, "--auth")
    data_dir = server.args[server.args.index("--data-dir") + 1]
    command = [
        sys.executable,
        "-m",
        "clawdbot",
        "user",
        "add",
        "ops",
        "--password-stdin",
        "--admin",
        "--data-dir",
        data_dir,
    ]
    done = subprocess.run(command, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    yield server
    server.stop()


def raw_request(gateway: Server, key: str) -> tuple[float, int]:
    """One raw /api/chat as an API client sends it: its time to the first line, and the tokens it reports.
    (http.client sends the headers and the body in one write: no wait on Nagle and a delayed ACK.)"""
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 7}}
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    started = time.perf_counter()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    connection.request("POST", "/api/chat", body=json.dumps(body).encode(), headers=headers)
    answer = connection.getresponse()
    answer.readline()
    ttft = time.perf_counter() - started
    last = [line for line in answer.read().split(b"\n") if line][-1]
    connection.close()
    return ttft, int(json.loads(last)["eval_count"])


def milliseconds(shown: str) -> float:
    """A duration as the page writes it ("0.4 ms", "12 ms", "1.20 s")."""
    value, unit = shown.split()
    return float(value) * (1000 if unit == "s" else 1)


def test_monitor_and_usage_show_what_the_test_sent(browser: Browser, gateway: Server, simulator: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post("/chat/api/session", json={"name": "ops", "password": PASSWORD})
        client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        key = client.post("/chat/api/keys", json={"name": "script"}).json()["secret"]
        fault = {"kind": "error_line", "after": 1, "message": "oom"}
        script(simulator, {"match": "break", "fault": fault, "times": -1})
        out_tokens, statuses, cause = 0, [], ""
        for text in ("one", "two", "break"):
            conversation = client.post("/chat/api/conversations", json={"num_predict": 8, "think": False}).json()
            cid = conversation["conversation"]["id"]
            reply_id = client.post(f"/chat/api/conversations/{cid}/messages", json={"content": text}).json()["reply"][
                "id"
            ]
            found: dict[str, object] = {}

            def finished(cid: str = cid, reply_id: str = reply_id, found: dict[str, object] = found) -> bool:
                view = client.get(f"/chat/api/conversations/{cid}").json()
                found.update(next(m for m in view["messages"] if m["id"] == reply_id))
                return found["status"] in ("done", "failed") and view["active"] is None

            wait_until(finished, "the reply", timeout=15)
            statuses.append(found["status"])
            cause = str(found["error_kind"] or cause)
            out_tokens += int(found["output_tokens"] or 0)  # type: ignore[call-overload]
        ttfts = []
        for _ in range(2):
            ttft, tokens = raw_request(gateway, key)
            ttfts.append(ttft)
            out_tokens += tokens
    assert statuses == ["done", "done", "failed"]

    problems: list[str] = []
    page = new_page(browser, gateway, problems, viewport={"width": 1280, "height": 900})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto("/chat")
    page.get_by_test_id("login-name").fill("ops")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("account-menu").click()
    page.get_by_test_id("admin-open").click()

    minute = page.locator("[data-testid=monitor-table] tr[data-window='1m']")
    expect(minute.and_(page.locator("[data-source=all]")).locator("[data-field=requests]")).to_have_text("5")
    expect(minute.and_(page.locator("[data-source=all]")).locator("[data-field=failures]")).to_have_text("1")
    expect(minute.and_(page.locator("[data-source=chat]")).locator("[data-field=causes]")).to_have_text(f" ({cause} 1)")
    expect(minute.and_(page.locator("[data-source=chat]")).locator("[data-field=requests]")).to_have_text("3")
    raw_row = minute.and_(page.locator("[data-source=raw]"))
    expect(raw_row.locator("[data-field=requests]")).to_have_text("2")
    # One more while the page is open: the server pushes the view, the page asks for nothing.
    ttft, tokens = raw_request(gateway, key)
    ttfts.append(ttft)
    out_tokens += tokens
    expect(raw_row.locator("[data-field=requests]")).to_have_text("3")
    shown = milliseconds(raw_row.locator("[data-field=ttft]").inner_text().split(" / ")[1])
    # The gateway's TTFT against the client's: the client's includes its own side of the connection.
    assert shown == pytest.approx(1000 * statistics.median_low(ttfts), abs=25, rel=0.2)
    assert any(url.endswith("/chat/api/admin/monitor/events?hours=1") for url in asked)
    assert not any(url.split("?")[0].endswith("/chat/api/admin/monitor") for url in asked)  # no polling
    expect(page.get_by_test_id("monitor-gpu")).to_have_text("GPU: not visible from here (NVMLError_LibraryNotFound)")
    expect(page.get_by_test_id("monitor-backends")).to_contain_text("qwen3:32b")

    ops = page.locator("[data-testid=usage-list] tr").filter(has_text="ops")
    page.get_by_test_id("usage-range").select_option("30")  # loaded again: the last request came after it opened
    expect(ops.locator("[data-field=requests]")).to_have_text("6")
    expect(ops.locator("[data-field=failures]")).to_have_text("1")
    expect(ops.locator("[data-field=output_tokens]")).to_have_text(f"{out_tokens:,}")
    page.get_by_test_id("usage-group").select_option("source")
    expect(page.locator("[data-testid=usage-list] tr[data-name=raw] [data-field=requests]")).to_have_text("3")
    expect(page.locator("[data-testid=usage-chart] canvas")).to_have_count(1)
    expect(page.locator("[data-testid=monitor-chart] canvas")).to_have_count(1)

    href = page.get_by_test_id("usage-csv").get_attribute("href") or ""
    assert "format=csv" in href
    download = page.request.get(gateway.url + href)
    rows = list(csv.DictReader(io.StringIO(download.text())))
    assert {row["source"]: int(row["requests"]) for row in rows} == {"chat": 3, "raw": 3}
    page.screenshot(path=str(gateway.stderr_path.with_suffix(".monitor.png")), full_page=True)
    page.context.close()
    assert not problems


def test_a_user_sees_their_own_usage_only(browser: Browser, gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as admin:
        answer = admin.post("/chat/api/session", json={"name": "ops", "password": PASSWORD})
        admin.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        made = admin.post("/chat/api/users", json={"name": "ann", "password": PASSWORD, "role": "user"})
        assert made.status_code == 201, made.text
    problems: list[str] = []
    page = new_page(browser, gateway, problems)
    page.goto("/chat")
    page.get_by_test_id("login-name").fill("ann")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("composer-input").fill("a question of ann's")
    page.get_by_test_id("composer-input").press("Enter")
    expect(page.locator("[data-testid=message][data-role=assistant][data-status=done]")).to_have_count(1)
    # The reply is counted as it is stored, moments after the page shows it done.
    wait_until(
        lambda: page.request.get(gateway.url + "/chat/api/usage").json()["totals"]["requests"] == 1, "the count", 10
    )

    page.get_by_test_id("account-menu").click()
    expect(page.get_by_test_id("admin-open")).to_be_hidden()
    page.get_by_test_id("my-usage-open").click()
    dialog = page.get_by_test_id("my-usage-dialog")
    expect(dialog).to_be_visible()
    row = dialog.locator("[data-testid=my-usage-list] tr[data-name='qwen3:32b']")
    expect(row.locator("[data-field=requests]")).to_have_text("1")  # ann's turn, not the admin's traffic
    expect(dialog.locator("[data-testid=my-usage-chart] canvas")).to_have_count(1)
    href = dialog.get_by_test_id("my-usage-csv").get_attribute("href") or ""
    assert href.startswith("/chat/api/usage?")
    rows = list(csv.DictReader(io.StringIO(page.request.get(gateway.url + href).text())))
    assert [(row["model"], row["requests"]) for row in rows] == [("qwen3:32b", "1")]
    page.get_by_test_id("my-usage-close").click()
    expect(dialog).to_be_hidden()
    page.context.close()
    assert not problems
