"""Small, complete programs the simulated model shows when a question asks for code in a programming language.

Each language has a few; the one whose keywords the question mentions wins, else one is drawn. Configuration and
markup formats are in `configs.py`. The programs are real (they compile and run as shown), because a reader of
the demo should meet the code a real model would write, not a placeholder.
"""

from __future__ import annotations

from typing import NamedTuple


class Snippet(NamedTuple):
    keywords: str  # a regular expression over the question; "" for a general-purpose example
    code: str


PROGRAMS: dict[str, list[Snippet]] = {
    "python": [
        Snippet(
            r"retr|backoff|http|request|重试|请求",
            "import random\nimport time\nimport urllib.error\nimport urllib.request\n\n\n"
            "def fetch_with_retry(url: str, attempts: int = 5, base_delay: float = 0.5) -> bytes:\n"
            '    """GET `url`, retrying failures with exponential backoff and jitter."""\n'
            "    for attempt in range(attempts):\n"
            "        try:\n"
            "            with urllib.request.urlopen(url, timeout=10) as response:\n"
            "                return response.read()\n"
            "        except (urllib.error.URLError, TimeoutError):\n"
            "            if attempt == attempts - 1:\n"
            "                raise\n"
            "            delay = base_delay * 2**attempt\n"
            "            time.sleep(delay + random.uniform(0, delay / 2))\n"
            '    raise RuntimeError("attempts must be at least 1")\n\n\n'
            'if __name__ == "__main__":\n'
            '    print(len(fetch_with_retry("https://example.com")))',
        ),
        Snippet(
            r"async|await|concurren|gather|task|异步|并发|协程",
            "import asyncio\n\n\n"
            "async def fetch(i: int) -> int:\n"
            "    await asyncio.sleep(0.1 * i)  # stands in for a network call\n"
            "    return i * 2\n\n\n"
            "async def main() -> None:\n"
            "    tasks = [asyncio.create_task(fetch(i)) for i in range(5)]  # all start now\n"
            "    results = await asyncio.gather(*tasks)  # wait for every one, results in order\n"
            "    print(results)\n\n\n"
            "asyncio.run(main())",
        ),
        Snippet(
            r"decorat|装饰器",
            "import functools\nimport time\nfrom collections.abc import Callable\n"
            "from typing import ParamSpec, TypeVar\n\n"
            'P = ParamSpec("P")\nR = TypeVar("R")\n\n\n'
            "def timed(fn: Callable[P, R]) -> Callable[P, R]:\n"
            '    """Print how long each call of `fn` takes."""\n\n'
            "    @functools.wraps(fn)\n"
            "    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:\n"
            "        started = time.perf_counter()\n"
            "        try:\n"
            "            return fn(*args, **kwargs)\n"
            "        finally:\n"
            '            print(f"{fn.__name__} took {time.perf_counter() - started:.3f} s")\n\n'
            "    return wrapper\n\n\n"
            "@timed\n"
            "def slow_square(x: int) -> int:\n"
            "    time.sleep(0.2)\n"
            "    return x * x\n\n\n"
            "print(slow_square(7))",
        ),
        Snippet(
            r"sort|排序",
            "def quicksort(items: list[int]) -> list[int]:\n"
            "    if len(items) <= 1:\n"
            "        return items\n"
            "    pivot, *rest = items\n"
            "    smaller = [x for x in rest if x < pivot]\n"
            "    larger = [x for x in rest if x >= pivot]\n"
            "    return quicksort(smaller) + [pivot] + quicksort(larger)\n\n\n"
            "print(quicksort([5, 3, 8, 1, 9, 2, 7]))  # [1, 2, 3, 5, 7, 8, 9]",
        ),
        Snippet(
            "",
            "import sys\nfrom collections import Counter\nfrom pathlib import Path\n\n\n"
            "def top_words(path: Path, n: int = 10) -> list[tuple[str, int]]:\n"
            '    words = path.read_text(encoding="utf-8").lower().split()\n'
            '    return Counter(w.strip(".,!?;:\\"\'()") for w in words).most_common(n)\n\n\n'
            'if __name__ == "__main__":\n'
            "    for word, count in top_words(Path(sys.argv[1])):\n"
            '        print(f"{count:6d}  {word}")',
        ),
    ],
    "javascript": [
        Snippet(
            r"stream|fetch|chunk|流式",
            "const res = await fetch('http://127.0.0.1:11434/api/chat', {\n"
            "  method: 'POST',\n"
            "  body: JSON.stringify({ model: 'qwen3:32b', messages: [{ role: 'user', content: 'hi' }] }),\n"
            "});\n"
            "const reader = res.body.getReader();\n"
            "const decoder = new TextDecoder();\n"
            "for (;;) {\n"
            "  const { done, value } = await reader.read();\n"
            "  if (done) break;\n"
            "  process.stdout.write(decoder.decode(value, { stream: true }));\n"
            "}",
        ),
        Snippet(
            "",
            "function debounce(fn, wait = 300) {\n"
            "  let timer;\n"
            "  return (...args) => {\n"
            "    clearTimeout(timer);\n"
            "    timer = setTimeout(() => fn(...args), wait);\n"
            "  };\n"
            "}\n\n"
            "const search = debounce((query) => console.log(`searching for ${query}`));\n"
            "search('c');\nsearch('ca');\nsearch('cat'); // only this one runs, 300 ms later",
        ),
    ],
    "typescript": [
        Snippet(
            "",
            "interface User {\n  id: number;\n  name: string;\n  email?: string;\n}\n\n"
            "async function getUser(id: number): Promise<User> {\n"
            "  const res = await fetch(`/api/users/${id}`);\n"
            "  if (!res.ok) {\n"
            "    throw new Error(`GET /api/users/${id} failed: ${res.status}`);\n"
            "  }\n"
            "  return (await res.json()) as User;\n"
            "}\n\n"
            "getUser(1).then((user) => console.log(user.name));",
        ),
    ],
    "go": [
        Snippet(
            r"concurren|goroutine|parallel|worker|并发",
            'package main\n\nimport (\n\t"fmt"\n\t"sync"\n)\n\n'
            "func main() {\n"
            "\tvar wg sync.WaitGroup\n"
            "\tresults := make([]int, 5)\n"
            "\tfor i := range results {\n"
            "\t\twg.Add(1)\n"
            "\t\tgo func(i int) {\n"
            "\t\t\tdefer wg.Done()\n"
            "\t\t\tresults[i] = i * i\n"
            "\t\t}(i)\n"
            "\t}\n"
            "\twg.Wait()\n"
            "\tfmt.Println(results) // [0 1 4 9 16]\n"
            "}",
        ),
        Snippet(
            "",
            'package main\n\nimport (\n\t"encoding/json"\n\t"log"\n\t"net/http"\n)\n\n'
            'type health struct {\n\tStatus string `json:"status"`\n}\n\n'
            "func main() {\n"
            '\thttp.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {\n'
            '\t\tw.Header().Set("Content-Type", "application/json")\n'
            '\t\tjson.NewEncoder(w).Encode(health{Status: "ok"})\n'
            "\t})\n"
            '\tlog.Fatal(http.ListenAndServe("127.0.0.1:8080", nil))\n'
            "}",
        ),
    ],
    "rust": [
        Snippet(
            "",
            "use std::collections::HashMap;\nuse std::io::{self, Read};\n\n"
            "fn main() -> io::Result<()> {\n"
            "    let mut text = String::new();\n"
            "    io::stdin().read_to_string(&mut text)?;\n"
            "    let mut counts: HashMap<String, usize> = HashMap::new();\n"
            "    for word in text.split_whitespace() {\n"
            "        *counts.entry(word.to_lowercase()).or_insert(0) += 1;\n"
            "    }\n"
            "    let mut top: Vec<_> = counts.into_iter().collect();\n"
            "    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));\n"
            "    for (word, count) in top.iter().take(10) {\n"
            '        println!("{count:6}  {word}");\n'
            "    }\n"
            "    Ok(())\n"
            "}",
        ),
    ],
    "java": [
        Snippet(
            "",
            "import java.util.List;\nimport java.util.Map;\nimport java.util.TreeMap;\n"
            "import java.util.stream.Collectors;\n\n"
            "public class Orders {\n"
            "    record Order(String customer, double amount) {}\n\n"
            "    public static void main(String[] args) {\n"
            "        List<Order> orders = List.of(\n"
            '                new Order("ada", 12.5), new Order("linus", 30.0), new Order("ada", 7.5));\n'
            "        Map<String, Double> totals = orders.stream()\n"
            "                .collect(Collectors.groupingBy(\n"
            "                        Order::customer, TreeMap::new, Collectors.summingDouble(Order::amount)));\n"
            "        System.out.println(totals); // {ada=20.0, linus=30.0}\n"
            "    }\n"
            "}",
        ),
    ],
    "c": [
        Snippet(
            "",
            "#include <stdio.h>\n\n"
            "int main(int argc, char **argv) {\n"
            '    FILE *f = argc > 1 ? fopen(argv[1], "r") : stdin;\n'
            "    if (f == NULL) {\n"
            '        perror("fopen");\n'
            "        return 1;\n"
            "    }\n"
            "    long lines = 0, chars = 0;\n"
            "    int c;\n"
            "    while ((c = fgetc(f)) != EOF) {\n"
            "        chars++;\n"
            "        if (c == '\\n') lines++;\n"
            "    }\n"
            '    printf("%ld lines, %ld characters\\n", lines, chars);\n'
            "    return 0;\n"
            "}",
        ),
    ],
    "cpp": [
        Snippet(
            "",
            "#include <algorithm>\n#include <iostream>\n#include <string>\n#include <vector>\n\n"
            "int main() {\n"
            '    std::vector<std::string> names{"grace", "ada", "linus", "ada", "ken"};\n'
            "    std::sort(names.begin(), names.end());\n"
            "    names.erase(std::unique(names.begin(), names.end()), names.end());\n"
            "    for (const auto &name : names) {\n"
            "        std::cout << name << '\\n';\n"
            "    }\n"
            "}",
        ),
    ],
}
