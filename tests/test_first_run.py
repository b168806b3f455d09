"""What a new user meets in the first hour: a backend that is not running, the demo, the setup link behind a proxy,
a port in use, the log of the first redirect; and a test run that cleans up after itself and, in CI, never skips."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from accounts_support import accounts_gateway, close_clients, sign_in
from browser_support import chromium, new_page
from conftest import Server, access_log, free_port, start_gateway, start_process, wait_for

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def down() -> Iterator[Server]:
    """A gateway whose Ollama is not running (nothing listens on its port)."""
    server = start_gateway(f"http://127.0.0.1:{free_port()}")
    yield server
    server.stop()


# ---- the model server is not running --------------------------------------------------------------------------
def test_the_startup_line_says_how_to_fix_a_backend_that_is_down(down: Server) -> None:
    assert "NOT answering" in down.banner
    assert "ollama serve" in down.banner
    assert "--ollama-url" in down.banner
    assert "--demo" in down.banner


def test_the_page_api_says_what_is_wrong_and_only_an_admin_how_to_fix_it(down: Server) -> None:
    owner = httpx.get(f"{down.url}/chat/api/models").json()  # --no-auth: the machine's owner, an admin
    assert owner["reachable"] is False
    assert "not answering" in owner["problem"]
    assert "ollama serve" in owner["problem"]
    assert "--demo" in owner["problem"]
    team = accounts_gateway(down.args[down.args.index("--ollama-url") + 1])
    try:
        team.add_user("bo")
        user = sign_in(team.url, "bo").get("/chat/api/models").json()
        assert "not answering" in user["problem"]
        assert "admin" in user["problem"]
        assert "ollama serve" not in user["problem"]
        assert "127.0.0.1" not in user["problem"]
    finally:
        close_clients()
        team.stop()


def test_a_backend_that_answers_has_no_problem(gateway: Server) -> None:
    assert httpx.get(f"{gateway.url}/chat/api/models").json()["problem"] is None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


def test_the_empty_page_shows_the_problem_and_the_fix(browser: Browser, down: Server) -> None:
    problems: list[str] = []
    page = new_page(browser, down, problems)
    page.goto("/chat")
    note = page.get_by_test_id("backend-problem")
    expect(note).to_be_visible()
    expect(note).to_contain_text("ollama serve")
    expect(note).to_contain_text("--demo")
    assert problems == []
    page.context.close()


# ---- the demo keeps to itself ---------------------------------------------------------------------------------
def test_demo_chats_stay_out_of_the_data_directory_a_real_setup_uses(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    demo = start_process(["--demo", "--demo-profile", "instant", "--port", "0"], env=env)
    try:
        made = httpx.post(f"{demo.url}/chat/api/conversations", json={"title": "a demo chat"})
        assert made.status_code == 201
    finally:
        demo.stop()
    assert (tmp_path / "clawdbot-demo" / "clawdbot.db").is_file()
    assert not (tmp_path / "clawdbot").exists()
    real = start_process(["--port", "0", "--no-auth", "--ollama-url", f"http://127.0.0.1:{free_port()}"], env=env)
    try:
        assert str(tmp_path / "clawdbot" / "clawdbot.db") in real.banner
        assert httpx.get(f"{real.url}/chat/api/conversations").json()["conversations"] == []
    finally:
        real.stop()


def test_each_demo_start_samples_anew(tmp_path: Path) -> None:
    """Without a seed in the request, a restarted demo does not repeat the answers of its last start."""
    question = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "How do I tune nginx?"}]}
    answers = []
    for run in range(2):
        demo = start_process(
            ["--demo", "--demo-profile", "instant", "--port", "0", "--data-dir", str(tmp_path / f"{run}")]
        )
        try:
            reply = httpx.post(f"{demo.url}/api/chat", json={**question, "stream": False}, timeout=30)
            answers.append(reply.json()["message"]["content"])
        finally:
            demo.stop()
    assert answers[0] != answers[1]


# ---- behind a proxy ---------------------------------------------------------------------------------------------
def test_the_setup_link_and_the_page_address_use_the_public_url(simulator: Server) -> None:
    public = "https://chat.example.com"
    team = accounts_gateway(simulator.url, "--public-url", public + "/")
    try:
        assert f"chat page {public}/chat," in team.server.banner
        token = team.setup_token()  # read from the line that carries the link
        assert token
        # The browser on the public site sends its origin; the gateway, reached through the proxy, accepts it.
        answer = httpx.post(
            f"{team.url}/chat/api/setup",
            json={"token": token, "name": "ana", "password": "correct horse battery"},
            headers={"Origin": public},
        )
        assert answer.status_code == 201, answer.text
        other = httpx.post(
            f"{team.url}/chat/api/session",
            json={"name": "ana", "password": "correct horse battery"},
            headers={"Origin": "https://elsewhere.example"},
        )
        assert other.status_code == 403
    finally:
        team.stop()


def test_the_setup_link_names_the_public_url() -> None:
    from clawdbot.settings import Settings
    from clawdbot.web.serve import page_url

    assert page_url(Settings(public_url="https://chat.example.com/"), 18789) == "https://chat.example.com/chat"
    assert page_url(Settings(), 4321) == "http://127.0.0.1:4321/chat"


# ---- small things -----------------------------------------------------------------------------------------------
def test_the_redirect_from_the_root_is_logged_as_a_redirect(gateway: Server) -> None:
    response = httpx.get(gateway.url + "/", headers={"X-Request-ID": "root-redirect"})
    assert response.status_code == 302

    def entry() -> list[dict[str, object]]:
        return [e for e in access_log(gateway) if e.get("request_id") == "root-redirect"]

    (logged,) = wait_for(entry)  # type: ignore[misc]
    assert logged["status"] == 302


@pytest.mark.parametrize("command", ["serve", "simulate"])
def test_a_busy_port_is_one_clear_line(simulator: Server, command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clawdbot", command, "--port", str(simulator.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    name = "clawdbot" if command == "serve" else "clawdbot simulate"
    said = [line for line in done.stderr.splitlines() if not line.startswith("{")]  # serve's JSON log aside
    assert said == [f"{name}: cannot listen on 127.0.0.1:{simulator.port}: address already in use"]
    assert "Traceback" not in done.stderr


# ---- the test run itself ----------------------------------------------------------------------------------------
SAMPLE = """
import tempfile

import pytest

from conftest import start_gateway


def test_starts_a_gateway():
    start_gateway("http://127.0.0.1:9").stop()
    tempfile.mkdtemp(prefix="clawdbot-data-")


def test_uses_tmp_path(tmp_path):
    (tmp_path / "file").write_text("x")


def test_skips():
    pytest.skip("nginx is not installed")
"""


def _run_sample(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    temp = tmp_path / "temp"
    temp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_sample.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(TESTS), "TMPDIR": str(temp), "CI": "false", **env},
    )


def test_a_test_run_leaves_nothing_in_the_temp_directory(tmp_path: Path) -> None:
    done = _run_sample(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed, 1 skipped" in done.stdout
    assert list((tmp_path / "temp").iterdir()) == []


def test_in_ci_a_skipped_test_fails(tmp_path: Path) -> None:
    done = _run_sample(tmp_path, CI="true")
    assert done.returncode == 1
    assert "1 failed, 2 passed" in done.stdout
    assert "skipped in CI, where nothing may be: Skipped: nginx is not installed" in done.stdout
