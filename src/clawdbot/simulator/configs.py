"""Queries, shell scripts, configuration and markup the simulated model shows when a question asks for them.

The programming languages are in `programs.py`; `SNIPPETS` joins both, keyed by the fence's language tag.
"""

from __future__ import annotations

from .programs import PROGRAMS, Snippet

CONFIGS: dict[str, list[Snippet]] = {
    "sql": [
        Snippet(
            "",
            "CREATE TABLE orders (\n"
            "    id          INTEGER PRIMARY KEY,\n"
            "    customer_id INTEGER NOT NULL,\n"
            "    amount      NUMERIC(10, 2) NOT NULL,\n"
            "    created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n"
            ");\n\n"
            "CREATE INDEX orders_by_customer ON orders (customer_id, created_at);\n\n"
            "-- Each customer's total, and their rank by spend\n"
            "SELECT customer_id,\n"
            "       SUM(amount) AS total,\n"
            "       RANK() OVER (ORDER BY SUM(amount) DESC) AS spend_rank\n"
            "FROM orders\n"
            "WHERE created_at >= '2025-01-01'\n"
            "GROUP BY customer_id\n"
            "ORDER BY total DESC\n"
            "LIMIT 10;",
        ),
    ],
    "bash": [
        Snippet(
            r"curl|ollama|api|stream",
            "curl -N http://127.0.0.1:11434/api/chat \\\n"
            '  -d \'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}]}\' \\\n'
            "  | jq -j '.message.content // empty'",
        ),
        Snippet(
            "",
            "#!/usr/bin/env bash\n"
            "# Count the files under a directory by extension, most common first.\n"
            "set -euo pipefail\n\n"
            'dir="${1:-.}"\n'
            "find \"$dir\" -type f -name '*.*' \\\n"
            "  | sed -E 's/.*\\.([^./]+)$/\\1/' \\\n"
            "  | sort | uniq -c | sort -rn",
        ),
    ],
    "json": [
        Snippet(
            "",
            "{\n"
            '  "name": "chat-gateway",\n'
            '  "listen": "127.0.0.1:8080",\n'
            '  "upstream": {\n'
            '    "url": "http://127.0.0.1:11434",\n'
            '    "timeout_seconds": 300,\n'
            '    "max_parallel": 4\n'
            "  },\n"
            '  "models": ["qwen3:32b", "qwen3:8b"],\n'
            '  "logging": { "level": "info", "format": "json" }\n'
            "}",
        ),
    ],
    "yaml": [
        Snippet(
            r"\bci\b|github|action|workflow|pipeline|test",
            "name: tests\non: [push, pull_request]\n\n"
            "jobs:\n"
            "  test:\n"
            "    runs-on: ubuntu-latest\n"
            "    steps:\n"
            "      - uses: actions/checkout@v4\n"
            "      - uses: actions/setup-python@v5\n"
            "        with:\n"
            '          python-version: "3.12"\n'
            "      - run: pip install -e '.[test]'\n"
            "      - run: pytest -q",
        ),
        Snippet(
            "",
            "services:\n"
            "  ollama:\n"
            "    image: ollama/ollama:latest\n"
            "    volumes:\n"
            "      - ollama:/root/.ollama\n"
            "    environment:\n"
            '      OLLAMA_NUM_PARALLEL: "4"\n'
            "  web:\n"
            "    build: .\n"
            "    ports:\n"
            '      - "127.0.0.1:8080:8080"\n'
            "    environment:\n"
            "      OLLAMA_URL: http://ollama:11434\n"
            "    depends_on:\n"
            "      - ollama\n\n"
            "volumes:\n"
            "  ollama:",
        ),
    ],
    "html": [
        Snippet(
            "",
            "<!doctype html>\n"
            '<html lang="en">\n'
            "<head>\n"
            '  <meta charset="utf-8">\n'
            '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "  <title>Sign up</title>\n"
            "</head>\n"
            "<body>\n"
            '  <form action="/signup" method="post">\n'
            '    <label for="email">Email</label>\n'
            '    <input id="email" name="email" type="email" required>\n'
            '    <button type="submit">Sign up</button>\n'
            "  </form>\n"
            "</body>\n"
            "</html>",
        ),
    ],
    "css": [
        Snippet(
            "",
            ".cards {\n"
            "  display: grid;\n"
            "  grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr));\n"
            "  gap: 1rem;\n"
            "}\n\n"
            ".card {\n"
            "  padding: 1rem;\n"
            "  border-radius: 0.5rem;\n"
            "  background: var(--surface, #fff);\n"
            "  box-shadow: 0 1px 3px rgb(0 0 0 / 0.12);\n"
            "}\n\n"
            "@media (prefers-color-scheme: dark) {\n"
            "  .card {\n"
            "    --surface: #1e1e1e;\n"
            "  }\n"
            "}",
        ),
    ],
    "dockerfile": [
        Snippet(
            "",
            "FROM python:3.12-slim AS build\n"
            "WORKDIR /app\n"
            "COPY pyproject.toml .\n"
            "RUN pip wheel --no-cache-dir --wheel-dir /wheels .\n\n"
            "FROM python:3.12-slim\n"
            "RUN useradd --create-home app\n"
            "COPY --from=build /wheels /wheels\n"
            "RUN pip install --no-cache-dir /wheels/*\n"
            "USER app\n"
            "EXPOSE 8080\n"
            'CMD ["python", "-m", "app"]',
        ),
    ],
    "diff": [
        Snippet(
            "",
            "--- a/pager.py\n"
            "+++ b/pager.py\n"
            "@@ -1,4 +1,4 @@\n"
            " def page(items: list[str], number: int, size: int = 20) -> list[str]:\n"
            '     """Items on page `number`, counting from 1."""\n'
            "-    start = number * size\n"
            "+    start = (number - 1) * size\n"
            "     return items[start : start + size]",
        ),
    ],
    "nginx": [
        Snippet(
            "",
            "location /chat/ {\n"
            "    proxy_pass http://127.0.0.1:8080;\n"
            "    proxy_http_version 1.1;\n"
            "    proxy_set_header Upgrade $http_upgrade;\n"
            '    proxy_set_header Connection "upgrade";\n'
            "    proxy_buffering off;\n"
            "    proxy_read_timeout 300s;\n"
            "}",
        ),
    ],
}

SNIPPETS: dict[str, list[Snippet]] = {**PROGRAMS, **CONFIGS}

NAMES = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "go": "Go",
    "rust": "Rust",
    "java": "Java",
    "c": "C",
    "cpp": "C++",
    "sql": "SQL",
    "bash": "Bash",
    "json": "JSON",
    "yaml": "YAML",
    "html": "HTML",
    "css": "CSS",
    "dockerfile": "Dockerfile",
    "diff": "diff",
    "nginx": "nginx",
}
