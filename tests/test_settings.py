"""Settings: documented, layered (CLI > env > TOML > default), and refused with a clear message when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clawdbot.settings import Settings, SettingsError, env_name, load, toml_only
from clawdbot.simulator.settings import SimulatorSettings

DOC = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("cls", [Settings, SimulatorSettings])
def test_every_setting_is_documented_with_its_flag_env_and_default(cls: type[Settings]) -> None:
    rows = [line for line in DOC.splitlines() if line.startswith("| `--")]
    for name, field in cls.model_fields.items():
        if toml_only(field):  # tables in the TOML file: a section of their own
            assert f"[[{name}]]" in DOC
            assert field.description
            continue
        flag, env = f"`--{name.replace('_', '-')}`", f"`{env_name(cls, name)}`"
        row = next((r for r in rows if r.startswith(f"| {flag} | {env} |")), None)
        assert row is not None, f"{flag} / {env} is missing from docs/configuration.md"
        default = field.get_default(call_default_factory=True)
        if name != "data_dir":
            shown = ",".join(default) if isinstance(default, list) else str(default)
            assert f"`{shown}`" in row, f"{flag}: default {shown!r} not in {row!r}"
        assert field.description
        assert field.description in row


def test_layers_cli_over_env_over_toml_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "clawdbot.toml"
    config.write_text('port = 1000\nidle_timeout = 30\nhost = "0.0.0.0"\n[simulate]\nprofile = "h100"\n')
    monkeypatch.setenv("CLAWDBOT_PORT", "2000")
    monkeypatch.setenv("CLAWDBOT_IDLE_TIMEOUT", "45")
    settings = load(Settings, {"port": 3000}, config)
    assert (settings.port, settings.idle_timeout, settings.host) == (3000, 45.0, "0.0.0.0")
    assert settings.first_byte_timeout == 600.0
    assert load(SimulatorSettings, {}, config).profile == "h100"


def test_max_running_defaults_to_the_backends_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_NUM_PARALLEL", raising=False)
    assert Settings().generation_slots() == 1  # Ollama's own default
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    assert Settings().generation_slots() == 4
    assert Settings().generation_slots(8) == 8  # --demo: the simulator's slots
    assert Settings().generation_slots(0) == 64  # the simulator's 0 is unlimited
    assert Settings(max_running=2).generation_slots(8) == 2  # --max-running, when set, wins
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "none")
    assert Settings().generation_slots() == 1


def test_list_settings_come_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWDBOT_SIM_MODELS", "qwen3:32b, qwen3:8b")
    assert load(SimulatorSettings).models == ["qwen3:32b", "qwen3:8b"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"port": 70000}, "--port / CLAWDBOT_PORT"),
        ({"ollama_url": "localhost:11434"}, "--ollama-url / CLAWDBOT_OLLAMA_URL: Value error, must be an http"),
        ({"idle_timeout": -1}, "--idle-timeout"),
        ({"log_level": "loud"}, "--log-level"),
        ({"demo_profile": "a100"}, "unknown profile"),
        ({"num_predict": 5000, "max_num_predict": 100}, "--num-predict 5000 is above --max-num-predict 100"),
    ],
)
def test_bad_values_name_the_option(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment.replace("(", r"\(")):
        load(Settings, overrides)


def test_unknown_toml_key_and_bad_toml_are_errors(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load(Settings, {}, typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load(Settings, {}, broken)
    with pytest.raises(SettingsError, match="cannot read config file"):
        load(Settings, {}, tmp_path / "missing.toml")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "clawdbot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_help_lists_every_setting_and_version() -> None:
    serve, simulate = _cli("serve", "--help"), _cli("simulate", "--help")
    for cls, result in ((Settings, serve), (SimulatorSettings, simulate)):
        assert result.returncode == 0
        for name, field in cls.model_fields.items():
            assert (f"--{name.replace('_', '-')}" in result.stdout) != toml_only(field)
    from clawdbot import __version__

    assert _cli("--version").stdout.strip() == f"clawdbot, version {__version__}"


def test_cli_rejects_a_bad_value_with_exit_2() -> None:
    result = _cli("--port", "not-a-port")
    assert result.returncode == 2
    assert "--port / CLAWDBOT_PORT" in result.stderr
    result = _cli("simulate", "--profile", "nope")
    assert result.returncode == 2
    assert "unknown profile" in result.stderr


def test_the_demo_knows_every_simulator_profile_by_name() -> None:
    """--demo-profile is checked without importing the simulator, against names the simulator must define alike."""
    from clawdbot.common.config import PROFILE_NAMES
    from clawdbot.simulator.profiles import PROFILES

    assert tuple(PROFILES) == PROFILE_NAMES


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        (
            '[[backends]]\nurl = "ftp://x"\nslots = 0\nbogus = 1\n',
            "[[backends]] #1, url: must be an http:// or https:// URL (got 'ftp://x'); [[backends]] #1, slots: Input "
            "should be greater than or equal to 1 (got 0); [[backends]] #1, bogus: unknown key (got 1)",
        ),
        (
            '[[backends]]\nname = "a"\nurl = "http://h:1"\n[[backends]]\nname = "a"\nurl = "http://h:2"\n',
            "two backends are named 'a'; names must differ",
        ),
        (
            '[[backends]]\nkind = "openai"\nurl = "http://h:1"\napi_key_env = "CLAWDBOT_TEST_NO_SUCH_KEY"\n',
            "backend http://h:1: $CLAWDBOT_TEST_NO_SUCH_KEY (api_key_env) is not set",
        ),
    ],
)
def test_a_bad_backends_table_is_refused_at_start_naming_the_table(tmp_path: Path, toml: str, said: str) -> None:
    config = tmp_path / "clawdbot.toml"
    config.write_text(toml)
    with pytest.raises(SettingsError) as refused:
        load(Settings, {}, config)
    assert str(refused.value) == said
