"""A real llama.cpp server with a real model, for tests/test_real_llamacpp.py and for trying OpenAIBackend by hand:
llama-server's own HTTP server (OpenAI's endpoints, /props, /slots), run inside this Python process by the
xllamacpp wheel (a dev dependency: no compiling), with gemma3:270m from the GGUF that the real-Ollama setup keeps
(`python3 scripts/real_ollama.py setup`; docs/real-ollama.md).

    scripts/uv run python scripts/real_llamacpp.py serve --port 8080   # prints its URL, runs until stopped
    scripts/uv run python scripts/real_llamacpp.py gguf                # the GGUF it serves, or why there is none

The model is listed as gemma3:270m, the name Ollama gives it. The GGUF carries no chat template, so the server is
given Gemma's turn template in Jinja, the one the real Ollama's Modelfile has. Not llama.cpp's built-in "gemma": with
a built-in template llama.cpp closes a last assistant message with <end_of_turn> instead of continuing it (its
prefill_assistant works on the Jinja path only), so a reply moved here mid-way would start over.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_ollama import GGUF, MODEL, default_root  # the sibling script: where its cache lives

# Gemma's turns, as scripts/real_ollama/Modelfile has them (no trim: a partial reply's trailing space is kept).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_MIN_SIZE = 100 * 2**20  # a GGUF of gemma3:270m is about 240 MiB; the other blobs are a few hundred bytes


class NoModel(RuntimeError):
    """The GGUF is not there; the message says how to get it."""


def find_gguf(root: Path | None = None) -> Path:
    """The GGUF the real-Ollama setup assembled, else the largest blob of its model store (a model's weights are
    its largest layer); a file counts only when it starts with GGUF's magic."""
    root = root or default_root()
    candidates = [root / GGUF]
    blobs = root / "models" / "blobs"
    if blobs.is_dir():
        candidates += sorted(blobs.glob("sha256-*"), key=lambda p: p.stat().st_size, reverse=True)[:1]
    for path in candidates:
        if path.is_file() and path.stat().st_size > _MIN_SIZE and _magic(path) == b"GGUF":
            return path
    raise NoModel(f"no gemma3:270m GGUF under {root}: run `python3 scripts/real_ollama.py setup` first")


def _magic(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(4)


def start(gguf: Path, *, port: int = 0, parallel: int = 2, ctx: int = 2048, api_key: str | None = None) -> Any:
    """llama.cpp's server on 127.0.0.1:`port` (0: a free one), `parallel` slots sharing `ctx` tokens, one CPU
    thread (CI has two cores, shared with the tests); returns once it listens (`.listening_address`)."""
    import xllamacpp  # a dev dependency: only where this runs

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.model_alias = {MODEL}
    params.n_ctx = ctx
    params.n_parallel = parallel
    params.use_jinja = True
    params.chat_template = GEMMA_TEMPLATE
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    if api_key:
        params.api_keys = [api_key]
    return xllamacpp.Server(params)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server in the foreground; its URL is the first line out")
    serve.add_argument("--port", type=int, default=8080, help="0: a free port")
    serve.add_argument("--parallel", type=int, default=2, help="slots: requests run at once")
    serve.add_argument("--ctx", type=int, default=2048, help="context tokens, shared by the slots")
    serve.add_argument("--api-key", default=None, help="refuse requests without this Bearer key")
    commands.add_parser("gguf", help="print the GGUF it serves")
    args = parser.parse_args()
    try:
        gguf = find_gguf()
    except NoModel as error:
        print(f"real llama.cpp: {error}", file=sys.stderr)
        return 1
    if args.command == "gguf":
        print(gguf)
        return 0
    server = start(gguf, port=args.port, parallel=args.parallel, ctx=args.ctx, api_key=args.api_key)
    print(f"real llama.cpp with {MODEL} on {server.listening_address}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        del server  # its destructor stops the server's threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
