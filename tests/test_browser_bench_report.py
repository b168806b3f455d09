"""`clawdbot bench --report FILE.html` against a real simulator, opened in a real browser: the page asks nothing of
the network, its table shows the run's own figures (the --json file of the same run), each chart has a line per
level, the over-time series add up to the run's tokens and request-seconds, and what a run or a server put into
it is shown as text, never run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import chromium
from clawdbot.bench import html
from conftest import Server, start_simulator


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    # Paced (the h100 profile at 10×: a cold load, then ~500 tokens/s a stream), 4 slots: the second level queues.
    server = start_simulator("--profile", "h100", "--speed", "10", "--num-parallel", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run(sim: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("report")
    out, page = folder / "run.json", folder / "run.html"
    command = [sys.executable, "-m", "clawdbot", "bench", sim.url, "--concurrency", "2,8", "--requests", "24"]
    command += ["--max-tokens", "30", "--no-progress", "--json", str(out), "--report", str(page)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"report: {page}" in done.stdout
    return json.loads(out.read_text()), page


def opened(browser: Browser, path: Path, asked: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1340, "height": 1000})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.on("request", lambda request: asked.append(request.url))
    page.on("dialog", lambda dialog: asked.append(f"dialog: {dialog.message}"))
    page.goto(path.as_uri())
    return page


def test_the_page_stands_alone_and_shows_the_runs_figures(browser: Browser, run: tuple[dict[str, Any], Path]) -> None:
    data, path = run
    asked: list[str] = []
    page = opened(browser, path, asked)
    assert asked == [path.as_uri()]  # nothing else: no script, stylesheet, font or image from anywhere
    assert page.locator("script").count() == 0
    levels = data["levels"]
    expect(page.locator("[data-testid=levels] thead th")).to_have_text(["metric", "2 users", "8 users"])
    cells = page.locator("[data-testid=levels] tr[data-row=failures] td")
    expect(cells).to_have_text([f"{s['failures']}/{s['requests']}" for s in levels])
    expected = {
        "ttft-p50": [f"{s['ttft']['p50'] * 1000:,.0f} ms" for s in levels],
        "e2e-p99": [f"{s['e2e']['p99']:,.2f} s" for s in levels],
        "tokens": [f"{s['output_tokens_per_second']:,.0f}" for s in levels],
    }
    for key, texts in expected.items():
        expect(page.locator(f"[data-testid=levels] tr[data-row={key}] td")).to_have_text(texts)
    charts = page.locator("svg[data-chart]")
    expect(charts).to_have_count(4)
    for index in range(4):
        lines = charts.nth(index).locator("polyline")
        expect(lines).to_have_count(2)
        assert [lines.nth(i).get_attribute("data-level") for i in range(2)] == ["2 users", "8 users"]
        box = charts.nth(index).bounding_box()
        assert box is not None  # drawn, at a readable size
        assert box["width"] > 400
        assert box["height"] > 150
    expect(page.get_by_test_id("setup")).to_contain_text("levels 2,8")
    page.close()


def test_the_series_over_time_add_up_to_the_run(run: tuple[dict[str, Any], Path]) -> None:
    data, _ = run
    for level in data["levels"]:
        assert (level["failures"], level["output_tokens"]) == (0, 24 * 30)
        series = html.timeline(level["records"])
        tokens, flight = series["tokens_per_s"], series["in_flight"]
        width = tokens[1][0] - tokens[0][0]
        assert sum(rate * width for _, rate in tokens) == pytest.approx(level["output_tokens"])
        busy = sum(r["end"] for r in level["records"])
        assert sum(mean * width for _, mean in flight) == pytest.approx(busy)
        assert max(mean for _, mean in flight) <= level["peak_in_flight"] + 1e-9
        assert len(tokens) <= 80


def test_what_a_run_or_server_put_in_is_shown_as_text(browser: Browser, tmp_path: Path) -> None:
    hostile = '<script>alert("url")</script>'
    record = {"start": 1.0, "ttft": 0.1, "end": 0.5, "gaps": [0.2], "output_tokens": 2, "failure": None}
    summary = {
        "level": "<img src=x onerror=alert(1)>",
        "requests": 2,
        "failures": 1,
        "failure_kinds": {'<b onclick="x">stream_error</b>': 1},
        "ttft": {"avg": 0.1, "p50": 0.1, "p99": 0.1},
        "e2e": {"avg": 0.5, "p99": 0.5},
        "output_tokens_per_second": 4.0,
        "peak_in_flight": 1,
        "mean_in_flight": 1.0,
        "client": {"loop_lag_p99_ms": 0.1},
        "records": [record, {**record, "failure": "x", "end": None, "ttft": None}],
    }
    path = tmp_path / "hostile.html"
    path.write_text(html.render([summary], {"url": hostile}, {"command": hostile}), encoding="utf-8")
    asked: list[str] = []
    page = opened(browser, path, asked)
    assert asked == [path.as_uri()]
    assert page.locator("script, img, b").count() == 0
    expect(page.locator("h1")).to_contain_text(hostile)
    expect(page.locator("thead th").nth(1)).to_have_text("<img src=x onerror=alert(1)>")
    expect(page.get_by_text('<b onclick="x">stream_error</b> × 1', exact=False)).to_be_visible()
    page.close()


def test_an_empty_level_draws_no_line_and_says_so() -> None:
    summary = {
        "level": "1 users",
        "requests": 1,
        "failures": 1,
        "failure_kinds": {"connect": 1},
        "ttft": {"avg": None, "p50": None, "p99": None},
        "e2e": {"avg": None, "p99": None},
        "output_tokens_per_second": 0.0,
        "peak_in_flight": 0,
        "mean_in_flight": 0.0,
        "client": {"loop_lag_p99_ms": 0.0},
        "records": [{"start": 1.0, "ttft": None, "end": None, "gaps": [], "output_tokens": 0, "failure": "connect"}],
    }
    page = html.render([summary], {}, {})
    assert page.count("no requests finished") == 4
    assert "<polyline" not in page
    assert "connect × 1" in page
