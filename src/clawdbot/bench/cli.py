"""`clawdbot bench`: reproduce the seed's load-test table against any Ollama or OpenAI-compatible endpoint, or
against the platform's own chat page protocol."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import orjson
import uvloop

from . import html
from .client import RequestShape
from .report import render_level, render_table, summarise
from .runner import FAILED, FINISHED, IN_FLIGHT, STARTED, Counters, Plan, WorkerResult, run_in_processes, run_plan
from .workload import load_openings


def _numbers(value: str | None) -> list[float]:
    if not value:
        return []
    try:
        numbers = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if any(n <= 0 for n in numbers):
        raise click.BadParameter("levels must be positive")
    return numbers


@click.command()
@click.argument("url", default="http://127.0.0.1:18789")
@click.option(
    "--target",
    type=click.Choice(["ollama", "openai", "chat"]),
    default="ollama",
    show_default=True,
    help="Protocol: Ollama's /api/chat (NDJSON), OpenAI's /v1/chat/completions (SSE), or the chat page's "
    "(chat: each user creates conversations with POST /chat/api/conversations and talks over one WebSocket at "
    "/chat/api/ws; TTFT runs from the send command, and the gateway stores every turn).",
)
@click.option("--model", default="qwen3:32b", show_default=True)
@click.option(
    "--api-key",
    envvar="CLAWDBOT_API_KEY",
    metavar="KEY",
    help="API key (cbk_…) sent as `Authorization: Bearer KEY` on every request, for a gateway with accounts on "
    "(also works for --target chat). Default: $CLAWDBOT_API_KEY; prefer it to the option, which other users of the "
    "machine can see in the process list.",
)
@click.option("--concurrency", help="Closed-loop virtual users per level, e.g. 30,87.")
@click.option(
    "--rate",
    help="Open-loop arrivals per second per level (Poisson), e.g. 1,5; each arrival is a "
    "conversation of --turns turns.",
)
@click.option("--requests", type=click.IntRange(min=1), help="Requests (turns) per level.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    help="Seconds per level to start requests in; requests in flight then finish.",
)
@click.option(
    "--conversations-per-user",
    type=click.IntRange(min=1),
    help="Closed loop: conversations each user holds before leaving (e.g. 1 with --turns 3: every user has "
    "exactly one 3-turn conversation); a failed turn ends its conversation.",
)
@click.option(
    "--turns",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Turns per conversation; each turn sends the growing history (chat: only the new message, as the "
    "server keeps the history).",
)
@click.option(
    "--think-time",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Mean seconds a user pauses between turns (uniform ±50%).",
)
@click.option(
    "--ramp-up",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds over which closed-loop users start.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    help="Cap on output tokens (num_predict / max_tokens). Not with --target chat: a conversation's settings "
    "have no output cap, so replies are as long as the model makes them.",
)
@click.option(
    "--think/--no-think",
    default=None,
    help="qwen3 thinking on or off (default: the server's default; chat: the conversation's think setting).",
)
@click.option("--system", help="System prompt for every conversation.")
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File of opening prompts, one per line (default: built-in Chinese and English prompts).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=900.0,
    show_default=True,
    help="Seconds one request may take in all (chat: one turn, from the send command to reply.done).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds a request may wait for its next bytes (the first ones include queueing; chat: for its next "
    "WebSocket event, heartbeats included).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Requests sent before each level and left out of its figures (loads the model).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Client processes; use more when the loop-lag check says the client is overloaded.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the summary and every request's raw measurements here.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run as one self-contained HTML page here: the table, and charts of TTFT and full-reply time "
    "per level and of tokens/s and requests in flight over time.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option(
    "--max-loop-lag-ms",
    type=float,
    default=10.0,
    show_default=True,
    help="Client event-loop lag (p99) above which a level is flagged as measuring the client.",
)
def bench(
    url: str,
    target: str,
    model: str,
    api_key: str | None,
    concurrency: str | None,
    rate: str | None,
    requests: int | None,
    duration: float | None,
    conversations_per_user: int | None,
    turns: int,
    think_time: float,
    ramp_up: float,
    max_tokens: int | None,
    think: bool | None,
    system: str | None,
    prompts: Path | None,
    timeout: float,
    idle_timeout: float,
    warmup: int,
    workers: int,
    seed: int,
    json_path: Path | None,
    report_path: Path | None,
    progress: bool | None,
    max_loop_lag_ms: float,
) -> None:
    """Load-test a chat endpoint: TTFT, full-reply time, failures and tokens/s per concurrency level.

    \b
    Examples:
      clawdbot bench http://127.0.0.1:18789 --concurrency 30,87 --duration 60 --turns 3 --think-time 2
      clawdbot bench http://127.0.0.1:18789 --target chat --concurrency 500 --conversations-per-user 1 --turns 3

    The second drives the chat page's protocol: 500 users, each with one 3-turn conversation stored by the gateway.
    """
    users, rates = _numbers(concurrency), _numbers(rate)
    if bool(users) == bool(rates):
        raise click.UsageError("give exactly one of --concurrency (closed loop) or --rate (open loop)")
    if conversations_per_user is not None and rates:
        raise click.UsageError("--conversations-per-user is for --concurrency; with --rate each arrival is one")
    if requests is None and duration is None and conversations_per_user is None:
        raise click.UsageError(
            "give --requests, --duration or --conversations-per-user (or several) so every level is bounded"
        )
    if target == "chat" and max_tokens is not None:
        raise click.UsageError("--max-tokens cannot be used with --target chat: conversations have no output cap")
    for option, path in (("--json", json_path), ("--report", report_path)):
        if path is not None and not os.access(path.parent.resolve(), os.W_OK):  # known now, not after the run
            raise click.UsageError(f"{option} {path}: cannot write into {path.parent.resolve()}")
    shape = RequestShape(target, url, model, max_tokens, think, timeout, idle_timeout, api_key or None)
    base = Plan(
        "users" if users else "rate",
        0,
        requests,
        duration,
        conversations_per_user,
        turns,
        think_time,
        ramp_up,
        seed,
        0,
        shape,
        tuple(load_openings(prompts)),
        system,
    )
    show = sys.stderr.isatty() if progress is None else progress
    click.echo(f"clawdbot bench → {shape.url}  model {model}  ({target} protocol, {workers} worker(s))")
    summaries = []
    for amount in users or rates:
        label = f"{amount:g} users" if users else f"{amount:g}/s"
        parts = [f"level {label}", f"{turns} turn(s)", f"think {think_time:g} s"]
        parts += [f"{requests} requests"] if requests else []
        parts += [f"{duration:g} s"] if duration else []
        parts += [f"{conversations_per_user} conversation(s) per user"] if conversations_per_user else []
        header = "\n" + " · ".join(parts)
        if warmup:
            _warm_up(base, warmup)
        plans = _split(base, amount, workers, bool(users))
        bound = requests or (int(amount) * conversations_per_user * turns if conversations_per_user else None)
        results = _run(plans, label, bound, duration, show)
        summary = summarise(label, results, max_loop_lag_ms)
        summary["records"] = [row for result in results for row in result.records]
        summaries.append(summary)
        click.echo(render_level(summary, header))
    click.echo("\n" + render_table(summaries))
    config = _config(url, target, model, turns, conversations_per_user, think_time, max_tokens, think, workers, seed)
    config.update(mode="users" if users else "rate", levels=users or rates)
    if json_path is not None:
        json_path.write_bytes(
            orjson.dumps(
                {"config": config, "environment": _environment(), "levels": summaries}, option=orjson.OPT_INDENT_2
            )
        )
        click.echo(f"\nraw results: {json_path}")
    if report_path is not None:
        report_path.write_text(html.render(summaries, config, _environment()), encoding="utf-8")
        click.echo(f"report: {report_path}")


def _warm_up(base: Plan, count: int) -> None:
    warm = replace(
        base,
        mode="users",
        amount=min(count, 8),
        requests=count,
        duration=None,
        conversations=None,
        turns=1,
        think_time=0,
        ramp_up=0,
    )
    result = uvloop.run(run_plan(warm, Counters([0.0] * 4, 0)))
    failed = [row for row in result.records if row["failure"]]
    if failed:
        click.echo(
            f"warm-up: {len(failed)}/{count} requests failed ({failed[0]['failure']}: {failed[0]['detail']})", err=True
        )


def _split(base: Plan, amount: float, workers: int, closed: bool) -> list[Plan]:
    """Share users (or the arrival rate) and the request budget across worker processes."""
    if closed:
        workers = min(workers, int(amount))
    shares = (
        [int(amount) // workers + (1 if i < int(amount) % workers else 0) for i in range(workers)]
        if closed
        else [amount / workers] * workers
    )
    budgets: list[int | None] = [None] * workers
    if base.requests is not None:
        budgets = [base.requests // workers + (1 if i < base.requests % workers else 0) for i in range(workers)]
    return [
        replace(base, amount=share, requests=budget, worker=i)
        for i, (share, budget) in enumerate(zip(shares, budgets, strict=True))
    ]


def _run(plans: list[Plan], label: str, requests: int | None, duration: float | None, show: bool) -> list[WorkerResult]:
    began = time.perf_counter()

    def tick(counters: list[float]) -> None:
        if show:
            _draw(label, counters, requests, duration, time.perf_counter() - began)

    if len(plans) == 1:
        counters = [0.0] * 4

        async def with_progress() -> WorkerResult:
            task = asyncio.create_task(run_plan(plans[0], Counters(counters, 0)))
            while not task.done():
                tick(counters)
                await asyncio.wait({task}, timeout=0.25)
            tick(counters)
            return task.result()

        results = [uvloop.run(with_progress())]
    else:
        results = run_in_processes(plans, tick)
    if show:
        sys.stderr.write("\n")
    return results


def _draw(label: str, counters: list[float], requests: int | None, duration: float | None, elapsed: float) -> None:
    done = counters[FINISHED] + counters[FAILED]
    share = done / requests if requests else min(elapsed / duration, 1.0) if duration else 0.0
    filled = int(30 * share)
    sys.stderr.write(
        f"\r  {label:>12} ▕{'█' * filled}{'░' * (30 - filled)}▏ {int(done)}"
        f"{'/' + str(requests) if requests else ''} done  {int(counters[FAILED])} failed  "
        f"{int(counters[IN_FLIGHT])} in flight  {int(counters[STARTED])} started  {elapsed:5.1f} s "
    )
    sys.stderr.flush()


def _config(
    url: str,
    target: str,
    model: str,
    turns: int,
    conversations_per_user: int | None,
    think_time: float,
    max_tokens: int | None,
    think: bool | None,
    workers: int,
    seed: int,
) -> dict[str, Any]:
    return {
        "url": url,
        "target": target,
        "model": model,
        "turns": turns,
        "conversations_per_user": conversations_per_user,
        "think_time": think_time,
        "max_tokens": max_tokens,
        "think": think,
        "workers": workers,
        "seed": seed,
    }


def _redacted(argv: list[str]) -> list[str]:
    """The command line without the API key's value, for the JSON file."""
    out: list[str] = []
    for part in argv:
        if out and out[-1] == "--api-key":
            part = "…"
        elif part.startswith("--api-key="):
            part = "--api-key=…"
        out.append(part)
    return out


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": " ".join(_redacted(["clawdbot", *sys.argv[1:]])),  # as typed, not where it was installed
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
