"""The README's commands: the two on its first screen are what CI runs, every `./clawdbot …` it shows is a command
the CLI takes, the docs cite nothing outside the repository, and scripts/uv gets uv where pip may not install."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from clawdbot.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
UV = ROOT / "scripts" / "uv"


def code_lines(text: str) -> list[str]:
    """The indented (code) lines of a markdown text, without the indent."""
    return [line[4:] for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_the_first_screen_runs_the_platform_and_the_tests_as_ci_does() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert code_lines(first_screen)[:2] == ["./clawdbot --demo", "scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "scripts/test" in ci  # the README's test command, as it is written
    for name in ("clawdbot", "scripts/test", "scripts/uv"):
        assert os.access(ROOT / name, os.X_OK), f"{name} is not executable"


def _commands() -> list[list[str]]:
    texts = [README, *(path.read_text(encoding="utf-8") for path in (ROOT / "docs").glob("*.md"))]
    found = []
    for text in texts:
        for line in code_lines(text):
            words = shlex.split(line.split("  #")[0].rstrip(" &\\"))
            words = words[3:] if words[:2] == ["sudo", "-u"] else words[1:] if words[:1] == ["sudo"] else words
            while words and "=" in words[0]:  # VAR=value before the command
                words = words[1:]
            if words and re.fullmatch(r"(\./|/opt/clawdbot/bin/)?clawdbot", words[0]):
                found.append(words[1:])
    return found


def test_every_clawdbot_command_in_the_readme_and_docs_is_one_the_cli_takes() -> None:
    commands = _commands()
    assert len(commands) >= 8
    for args in commands:
        name, *rest = args if args and args[0] in main.commands else ["serve", *args]  # `clawdbot` is serve
        command = main.commands[name]
        if isinstance(command, click.Group):
            name, *rest = rest
            command = command.commands[name]
        command.make_context(name, rest)  # raises on an unknown option or a bad value


def test_no_document_points_outside_the_repository() -> None:
    cited = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "src").rglob("*.py")]
        if re.search(r"shared/(reference|seed)", path.read_text(encoding="utf-8"))
    ]
    assert cited == []


# ---- scripts/uv --------------------------------------------------------------------------------------------------
FAKE_UV = b"#!/bin/sh\necho 'uv 0.13.9 (the test index)'\n"


def _wheel() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("uv-0.13.9.data/scripts/uv", FAKE_UV)
        wheel.writestr("uv-0.13.9.dist-info/METADATA", "Name: uv\nVersion: 0.13.9\n")
    return buffer.getvalue()


@pytest.fixture
def index() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """A package index (PEP 691 JSON) with a uv wheel for this machine; the requests it got; its sha256 to list."""
    wheel, requests, listed = _wheel(), [], {"sha256": ""}
    listed["sha256"] = hashlib.sha256(wheel).hexdigest()
    tag = "manylinux_2_17_x86_64.manylinux2014_x86_64" if os.uname().machine == "x86_64" else "manylinux_2_28_aarch64"
    name = f"uv-0.13.9-py3-none-{tag}.whl"

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path == "/simple/uv/":
                files = [{"filename": name, "url": f"/files/{name}", "hashes": {"sha256": listed["sha256"]}}]
                body, kind = json.dumps({"files": files}).encode(), "application/vnd.pypi.simple.v1+json"
            else:
                body, kind = wheel, "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", requests, listed
    server.shutdown()
    server.server_close()


def _run_uv(tmp_path: Path, index_url: str) -> subprocess.CompletedProcess[str]:
    # No uv on PATH and none in this interpreter (the project's venv has no uv package): it must be fetched.
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path), "UV_INDEX_URL": index_url, "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(UV), "--version"], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"), reason="Linux only")
def test_scripts_uv_fetches_uv_once_checks_its_hash_and_runs_it(
    tmp_path: Path, index: tuple[str, list[str], dict[str, str]]
) -> None:
    url, requests, _ = index
    first = _run_uv(tmp_path, url)
    assert first.stdout == "uv 0.13.9 (the test index)\n", first.stderr
    assert "fetching uv-0.13.9-py3-none-" in first.stderr
    assert (tmp_path / "clawdbot" / "uv-0.13.9" / "uv").read_bytes() == FAKE_UV
    fetched = len(requests)
    assert _run_uv(tmp_path, url).stdout == "uv 0.13.9 (the test index)\n"
    assert len(requests) == fetched  # cached: the index is not asked again


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"), reason="Linux only")
def test_scripts_uv_refuses_a_wheel_whose_hash_does_not_match(
    tmp_path: Path, index: tuple[str, list[str], dict[str, str]]
) -> None:
    url, _, listed = index
    listed["sha256"] = "0" * 64
    done = _run_uv(tmp_path, url)
    assert done.returncode != 0
    assert "does not match the index's SHA-256" in done.stderr
    assert not (tmp_path / "clawdbot" / "uv-0.13.9" / "uv").exists()
