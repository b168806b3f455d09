"""The words the simulated model answers with, in English and in Chinese (`replies.py` arranges them).

Templates take `{topic}` (the question's subject, mid-sentence), `{Topic}` (capitalised), `{lang}`, `{a}` and `{b}`
(the two sides of a comparison). `domain` paragraphs and tables are used when the question mentions their keywords,
so questions on the subjects clawdbot's users ask about most get an answer that is on topic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Phrases:
    greetings: list[str]
    offers: list[str]
    asides: list[str]  # said between a greeting and the offer, half the time
    thanks: list[str]
    openings: dict[str, list[str]]  # by Ask.form, and "none" when the question has no subject left
    paragraphs: list[str]
    domain: list[tuple[str, str]]  # (keywords, paragraph)
    stories: list[str]
    headings: list[str]
    summary: str
    bullets: list[str]
    steps: list[str]
    aspect: str  # the first column's title in a comparison
    pair_aspects: list[str]
    pair_cells: list[str]
    table_header: tuple[str, str, str]
    table_rows: list[tuple[str, str, str]]
    domain_tables: list[tuple[str, str]]  # (keywords, table)
    code_leads: list[str]
    table_leads: list[str]
    list_leads: list[str]
    step_leads: list[str]
    closings: list[str]


EN = Phrases(
    greetings=["Hi!", "Hello!", "Hey there!", "Hi there!", "Hello, nice to meet you!"],
    offers=[
        "How can I help you today?",
        "What would you like to work on?",
        "What can I do for you?",
        "What's on your mind?",
        "Ask me anything: I can explain concepts, write code or help you debug.",
    ],
    asides=[
        "Good to see you.",
        "I'm clawdbot's simulated model, so my answers are samples rather than real advice.",
        "I can explain concepts, sketch code or help you plan.",
        "Ask in English or Chinese; I answer in the language you use.",
    ],
    thanks=["You're welcome!", "Glad I could help!", "Any time!", "Happy to help!"],
    openings={
        "how": [
            "Here is how to {topic}.",
            "To {topic}, you need a few pieces in place.",
            "Sure, here is a practical way to {topic}.",
            "Good question. Let's go through how to {topic} step by step.",
        ],
        "make": [
            "Sure. Here you go: {topic}.",
            "Of course. Below you'll find {topic}, with a short explanation.",
            "Happy to help. Here is what you asked for: {topic}.",
        ],
        "about": [
            "Here is an overview of {topic}.",
            "Let me explain {topic} step by step.",
            "Sure. Here is what matters about {topic}.",
            "Good question. Let's look at {topic}.",
        ],
        "other": [
            "Good question. Let me break “{topic}” down.",
            "Here is a short answer to “{topic}”.",
            "Let's look at “{topic}” step by step.",
        ],
        "none": [
            "Sure, here is a short overview before the details.",
            "Good question. Let me break it down step by step.",
            "In short, the answer depends on a few trade-offs.",
            "Here is a practical way to approach it.",
        ],
    },
    paragraphs=[
        "The simplest approach is usually the right place to start. Get a version working end to end, measure it "
        "with realistic input, and only then decide which part deserves more work.",
        "It helps to separate what must happen from what is merely convenient. The first part needs tests and "
        "clear error handling; the second can stay simple until someone actually needs more.",
        "Most problems here come from assumptions that were never checked: a default that differs between "
        "environments, a timeout nobody set, or input that is larger than expected. Write them down and test them.",
        "Performance depends less on clever tricks than on avoiding unnecessary work. Cache what is expensive to "
        "compute, batch what is cheap to combine, and stream results instead of waiting for everything.",
        "Think about failure from the start. Decide what should happen when a dependency is slow or unavailable, "
        "make that behaviour visible in logs and metrics, and make sure a retry cannot do harm.",
        "Keep the moving parts few. Every extra service, library or option is something to learn, secure and "
        "upgrade, so add one only when it clearly pays for itself.",
        "A short note on why a decision was made saves the next person hours, and that person is often you, six "
        "months later.",
        "If you are unsure between two options, prototype both on a small scale. An afternoon of experiments "
        "usually settles a question that would take days to argue about.",
        "Security is easiest when it is part of the design: validate input at the boundary, grant the least "
        "privilege that works, and keep secrets out of code and logs.",
        "Finally, automate the checks you run by hand. Tests and a linter in CI catch regressions long before "
        "users do.",
    ],
    domain=[
        (
            r"stream|proxy|buffer|token",
            "A streaming proxy should relay each chunk the moment it arrives. Buffering even a few hundred "
            "milliseconds makes a fast model feel slow, and it hides where the latency really comes from.",
        ),
        (
            r"queue|gpu|concurren|parallel|users",
            "When many users share one GPU, requests beyond the parallel slots wait in a queue. Their time to first "
            "token grows with the queue, while the tokens per second of the running streams barely change.",
        ),
        (
            r"prompt|context|conversation|history",
            "For long conversations, drop the oldest turns first and always keep the system prompt. Count tokens "
            "with the numbers the server returned, not with a guess.",
        ),
        (
            r"markdown|saniti|render|xss",
            "Model output is untrusted input: render markdown, then sanitise the HTML, and only then highlight code.",
        ),
        (
            r"latency|throughput",
            "Latency is how long one request takes from start to finish; throughput is how many requests the "
            "system completes per second. Batching raises throughput but makes each request wait a little "
            "longer: think of the time one car needs for a trip versus the cars a highway carries per hour.",
        ),
        (
            r"postgres|sqlite|database",
            "SQLite is a library: the database is one file, there is no server to run, and reads are very fast. "
            "PostgreSQL is a server: it handles many concurrent writers, has richer types and replication, and "
            "needs to be operated. For a small internal service SQLite is usually enough.",
        ),
        (
            r"nginx|websocket",
            "A WebSocket starts as an HTTP request with an `Upgrade` header. The proxy must forward that header "
            "over HTTP/1.1 or the handshake fails, and it should raise its read timeout, because an idle socket is "
            "normal for a chat that waits for the user.",
        ),
        (
            r"retr|backoff",
            "Retry only what is safe to repeat, and wait longer after each failure: exponential backoff with a "
            "little random jitter keeps many clients from retrying in lockstep against a service that is recovering.",
        ),
        (
            r"\btcp\b|\budp\b",
            "TCP sets up a connection and delivers a reliable, ordered byte stream, retransmitting what is lost. "
            "UDP sends independent datagrams with no delivery guarantee, which makes it lighter and faster.",
        ),
        (
            r"kv cache|vram|memory",
            "The KV cache keeps the attention keys and values of every token already processed, so the model does "
            "not recompute them at each step. It grows linearly with the context, which is why long conversations "
            "need much more GPU memory.",
        ),
    ],
    stories=[
        "The rain had not stopped for three days when the stranger reached the inn. She shook the water from her "
        "coat, set a sealed letter on the counter and asked for the room at the end of the hall.",
        "Nobody in the village remembered who had planted the orchard on the hill, only that its apples ripened "
        "in winter. Mara climbed up at dusk, a lantern in one hand and her grandmother's key in the other.",
        "The lighthouse keeper counted the ships every night. On the night the count came out one too many, he "
        "put on his boots, lit the second lamp and went down to the rocks to see who had come home.",
    ],
    headings=[
        "Overview",
        "How it works",
        "Key concepts",
        "A practical approach",
        "Common pitfalls",
        "Performance",
        "Trade-offs",
        "Testing it",
        "In practice",
    ],
    summary="Summary",
    bullets=[
        "Start with the simplest version that works",
        "Measure before you optimise",
        "Keep configuration in one place",
        "Write a test for every bug you fix",
        "Log enough to debug, never secrets or user text",
        "Set timeouts on every network call",
        "Retry only what is safe to repeat",
        "Watch the p99, not only the average",
        "Document why, not only what",
        "Keep dependencies few and up to date",
    ],
    steps=[
        "Check the prerequisites and versions you have",
        "Write the smallest configuration that could work",
        "Run it locally and read the logs",
        "Test it with a realistic request",
        "Add monitoring for errors and latency",
        "Roll it out gradually and keep a way back",
        "Write down what you changed and why",
    ],
    aspect="Aspect",
    pair_aspects=["Typical use", "Performance", "Setup effort", "Learning curve", "Ecosystem", "Scaling", "Best for"],
    pair_cells=[
        "simple to start",
        "more setup",
        "fast for small workloads",
        "built for heavy load",
        "mature",
        "very mature",
        "low",
        "moderate",
        "high",
        "good defaults",
        "needs tuning",
        "large ecosystem",
        "smaller ecosystem",
        "single machine",
        "scales out",
        "prototypes",
        "large systems",
    ],
    table_header=("Approach", "Pros", "Cons"),
    table_rows=[
        ("Start simple", "fast to build, easy to change", "may not scale"),
        ("Add a cache", "much faster reads", "stale data to manage"),
        ("Managed service", "little to operate", "cost and lock-in"),
        ("Build it yourself", "full control", "more to maintain"),
        ("Batch the work", "higher throughput", "more latency per item"),
    ],
    domain_tables=[
        (
            r"\btcp\b|\budp\b",
            "| Property | TCP | UDP |\n|---|---|---|\n| Connection | set up first | none |\n"
            "| Delivery | reliable, in order | best effort |\n| Overhead | higher | minimal |\n"
            "| Typical use | web, file transfer | video calls, DNS, games |",
        ),
        (
            r"postgres|sqlite",
            "| | SQLite | PostgreSQL |\n|---|---|---|\n| Runs as | a library, one file | a server |\n"
            "| Concurrent writers | one at a time | many |\n| Operations | none | backups, upgrades, tuning |\n"
            "| Best for | small services, tools | shared, write-heavy systems |",
        ),
        (
            r"num_ctx|num_predict|ollama|option",
            "| Option | Default | Meaning |\n|---|---|---|\n| `num_ctx` | 4096 | context window in tokens |\n"
            "| `num_predict` | -1 | maximum tokens to generate |\n| `temperature` | 0.8 | sampling temperature |",
        ),
        (
            r"create_task|gather|asyncio",
            "| Function | When it runs | Returns |\n|---|---|---|\n| `create_task()` | scheduled at once | a `Task` |\n"
            "| `gather()` | awaits them all | a list of results |",
        ),
    ],
    code_leads=["Here is a small {lang} example:", "A minimal {lang} version:", "In {lang}, it looks like this:"],
    table_leads=["A quick comparison:", "Side by side:", "In a table:"],
    list_leads=["The main points:", "Key points to keep in mind:", "In short:"],
    step_leads=["Step by step:", "Here are the steps:", "In order:"],
    closings=[
        "Hope this helps.",
        "Let me know if you want me to go deeper on any of these.",
        "Measure first, then tune.",
        "If you share more about your setup, I can be more specific.",
    ],
)
