"""The `clawdbot` command. With no subcommand it serves the platform (datasette's habit).

Options of `serve` and `simulate` are generated from the settings models, so `--help`, the environment
variables, the TOML file and docs/configuration.md all describe the same fields.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .settings import Settings, SettingsError, env_name, load, toml_only
from .simulator.settings import SimulatorSettings


def settings_options(cls: type[Settings] | type[SimulatorSettings]) -> Callable[[Callable[..., Any]], Any]:
    """One click option per settings field; unset options stay None so env and TOML can fill them."""

    def decorate(func: Callable[..., Any]) -> Any:
        for name, field in reversed(list(cls.model_fields.items())):
            if toml_only(field):
                continue
            flag = "--" + name.replace("_", "-")
            default = field.get_default(call_default_factory=True)
            help_text = f"{field.description} [env {env_name(cls, name)}; default: {_show(default)}]"
            annotation = field.annotation
            if annotation in (bool, bool | None):
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            elif getattr(annotation, "__origin__", None) is list:
                option = click.option(flag, name, multiple=True, help=help_text + " Repeat for several.")
            else:
                option = click.option(flag, name, default=None, help=help_text, metavar=_metavar(name, annotation))
            func = option(func)
        return func

    return decorate


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _metavar(name: str, annotation: Any) -> str:
    if annotation is float and name.endswith(("timeout", "interval")):
        return "SECONDS"
    names = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "DIR"}
    return names.get(annotation, "VALUE")


def _cli_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in values.items()}


def config_option(help_text: str | None) -> Callable[[Callable[..., Any]], Any]:
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help=help_text
    )


class DefaultGroup(click.Group):
    """`clawdbot --port 1` means `clawdbot serve --port 1`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="clawdbot")
def main() -> None:
    """clawdbot: a self-hosted chat gateway for Ollama.

    With no command, `serve` runs: `clawdbot --ollama-url http://localhost:11434 --port 18789`.
    """


@main.command()
@config_option("TOML file with settings [env CLAWDBOT_CONFIG].")
@settings_options(Settings)
def serve(config_file: Path | None, **values: Any) -> None:
    """Run the platform: the Ollama proxy, its health endpoints and metrics."""
    settings = _load(Settings, values, config_file)
    _run(_serve(settings))


async def _serve(settings: Settings) -> None:
    """The one place the server meets the simulator: --demo starts it here and hands the app its address."""
    from .web.serve import run

    if not settings.demo:
        await run(settings)
        return
    from .simulator.server import Simulator
    from .web.app import StandIn

    # A seed of its own each start, as a real model samples: a restarted demo does not answer as it did before.
    simulator = Simulator(SimulatorSettings(port=0, profile=settings.demo_profile, seed=secrets.randbits(31)))
    await simulator.start()
    try:
        await run(settings, StandIn(simulator.url, simulator.settings.num_parallel, simulator.preload))
    finally:
        await simulator.stop()


@main.command()
@config_option("TOML file whose [simulate] table holds settings [env CLAWDBOT_CONFIG].")
@settings_options(SimulatorSettings)
def simulate(config_file: Path | None, **values: Any) -> None:
    """Stand in for `ollama serve` with qwen3:32b, byte for byte, on a realistic timing model."""
    from .simulator.main import serve_forever

    settings = _load(SimulatorSettings, values, config_file)
    _run(serve_forever(settings))


def _load(cls: Any, values: dict[str, Any], config_file: Path | None) -> Any:
    try:
        return load(cls, _cli_values(values), config_file)
    except SettingsError as error:
        raise click.UsageError(str(error)) from None


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is missing only on Windows
        asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)


@main.group()
def user() -> None:
    """Manage accounts from the machine the gateway runs on (the same database as `serve`)."""


def _database_options(func: Callable[..., Any]) -> Any:
    for option in reversed(
        [
            config_option(None),
            click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None),
            click.option("--database-url", default=None, help="As for serve (default: clawdbot.db in --data-dir)."),
        ]
    ):
        func = option(func)
    return func


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an admin (the first admin takes over earlier chats).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin without asking.")
@_database_options
def user_add(name: str, admin: bool, password_stdin: bool, config_file: Path | None, **database: Any) -> None:
    """Create a user NAME; the password comes from a prompt, or from stdin when it is not a terminal."""
    from .auth.commands import add_user

    settings = _load(Settings, database, config_file)
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    _run(add_user(settings, name, password, admin=admin))


@user.command("list")
@_database_options
def user_list(config_file: Path | None, **database: Any) -> None:
    """List the users: name, role, whether disabled, and their limits."""
    from .auth.commands import list_users

    _run(list_users(_load(Settings, database, config_file)))


def _register_bench() -> None:
    from .bench.cli import bench
    from .top import top

    main.add_command(bench)
    main.add_command(top)


_register_bench()
