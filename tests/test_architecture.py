"""The floor plan of docs/architecture.md, where import-linter (run by CI: `lint-imports`) cannot check it: which
modules speak HTTP as a server, and how long a module may grow."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "clawdbot"
HTTP_LAYERS = ("web", "gateway", "simulator")  # the simulator is a server of its own
MAX_LINES = 420  # "about 400": one concern a module


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _aiohttp_web_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            lines += [node.lineno for alias in node.names if alias.name.startswith("aiohttp.web")]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (
                node.module.startswith(("aiohttp.web", "aiohttp.typedefs"))
                or (node.module == "aiohttp" and any(alias.name == "web" for alias in node.names))
            )
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_http_layers_import_aiohttp_web() -> None:
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in _modules()
        if path.relative_to(SRC).parts[0] not in HTTP_LAYERS and (lines := _aiohttp_web_imports(path))
    }
    assert offenders == {}


def test_the_check_sees_every_spelling_of_the_import(tmp_path: Path) -> None:
    spellings = ["from aiohttp import web", "import aiohttp.web", "from aiohttp.web import Request"]
    spellings.append("from aiohttp.typedefs import Handler")
    for text in spellings:
        module = tmp_path / "m.py"
        module.write_text(text + "\n")
        assert _aiohttp_web_imports(module) == [1], text
    module.write_text("import aiohttp\nfrom aiohttp import ClientSession\n")
    assert _aiohttp_web_imports(module) == []


def test_no_module_grows_past_one_concern() -> None:
    long = {
        str(path.relative_to(SRC)): n
        for path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
