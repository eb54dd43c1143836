"""Config: strict parsing, key paths in every error, interpolation, masking, exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from bridge.config import Secret, load, parse, parse_duration
from bridge.core.errors import ConfigError
from tests.support.cli import run_cli
from tests.support.harness import free_port

MINIMAL = """
[[sources]]
name = "gh"
provider = "github"
secret = "s3cr3t-value"
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    import tomllib

    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), env or {})
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("[server]\nprot = 1", "server.prot: unknown key", id="unknown-key"),
        pytest.param("bogus = 1", "bogus: unknown key", id="unknown-top-level"),
        pytest.param('[[sources]]\nname = "a"\nprovider = "github"', "sources[0].secret: required",
                     id="missing-secret"),
        pytest.param('[[sources]]\nname="a"\nprovider="github"\nsecret="x"\n'
                     '[[sources]]\nname="b"\nprovider="stripe"',
                     "sources[1].secret: required", id="second-source-secret"),
        pytest.param('[[sources]]\nprovider = "github"\nsecret = "x"', "sources[0].name: required",
                     id="missing-name"),
        pytest.param('[[sources]]\nname="a"\nprovider="carrier-pigeon"\nsecret="x"',
                     "sources[0].provider: unknown provider", id="unknown-provider"),
        pytest.param('[[sources]]\nname="a"\nprovider="none"', "sources[0].insecure",
                     id="none-needs-insecure"),
        pytest.param('[store]\ndedupe_window = "24h"', "store.dedupe_window: must be >= 72h",
                     id="short-dedupe-window"),
        pytest.param('[store]\ndedupe_window = "7 weeks"', "store.dedupe_window: expected a duration",
                     id="bad-duration"),
        pytest.param("[server]\nport = \"80\"", "server.port: expected an integer", id="port-type"),
        pytest.param("[server]\nport = 70000", "server.port: must be <= 65535", id="port-range"),
        pytest.param('[server]\nlog_level = "loud"',
                     "server.log_level: expected one of debug, info, warning, error",
                     id="log-level"),
        pytest.param('[[routes]]\nsource = "nope"\ntrigger = "t"', "routes[0].source: no source",
                     id="route-unknown-source"),
        pytest.param(MINIMAL + '[[routes]]\nsource = "gh"\ntrigger = "t"',
                     "platform.base_url: required when routes are configured", id="route-no-platform"),
        pytest.param(MINIMAL + '[[routes]]\nsource = "gh"\ntrigger = "t"\nenvelope = "xml"',
                     "routes[0].envelope", id="route-envelope"),
        pytest.param(MINIMAL + MINIMAL, "sources[1].name: duplicate source", id="duplicate-source"),
        pytest.param('[platform]\nbase_url = "ftp://x"', "platform.base_url: expected an http",
                     id="platform-url"),
        pytest.param('[server]\nsecret_key = "${NOPE}"',
                     "server.secret_key: environment variable NOPE is not set", id="missing-env"),
    ],
)
def test_each_error_names_its_key_path(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_interpolation_with_defaults_and_escapes() -> None:
    import tomllib

    text = """
[server]
port = 9000
public_url = "${PUBLIC:-https://hooks.example.com}"
[[sources]]
name = "gh"
provider = "github"
secret = "${GH_SECRET}"
[[sources]]
name = "tok"
provider = "token"
secret = "pa$$word"
"""
    config = parse(tomllib.loads(text), {"GH_SECRET": "from-env"})
    assert config.public_url == "https://hooks.example.com"
    assert config.sources[0].secrets == (Secret("from-env"),)
    assert config.sources[1].secrets[0].reveal() == "pa$word"
    config = parse(tomllib.loads(text), {"GH_SECRET": "x", "PUBLIC": "http://h:1/"})
    assert config.public_url == "http://h:1"


def test_secret_repr_is_masked() -> None:
    secret = Secret("hunter2-value")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr(parse({"platform": {"api_key": "hunter2-value"}}, {}))


@pytest.mark.parametrize(("text", "seconds"), [("300s", 300), ("5m", 300), ("72h", 259200),
                                               ("7d", 604800), ("250ms", 0.25), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_no_config_gives_loopback_defaults() -> None:
    config = load(None, {})
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    assert config.store.path == "data/bridge.db" and config.sources == ()




def test_check_config_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + '[platform]\ntrigger_key = "${TK}"\n')
    import os

    result = run_cli("check-config", "--config", str(path), "--print",
                     env={**os.environ, "TK": "tk-abc-123"})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.rsplit("\nok:", 1)[0])
    assert printed["sources"][0]["secrets"] == ["********"]
    assert printed["platform"]["trigger_key"] == "********"
    assert "s3cr3t-value" not in result.stdout and "tk-abc-123" not in result.stdout


def test_check_config_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nprot = 1\n[[sources]]\nname = "a"\nprovider = "stripe"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "server.prot: unknown key" in result.stderr
    assert "sources[0].secret: required" in result.stderr


def test_undecodable_standard_secret_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\nname = "sw"\nprovider = "standard"\nsecret = "whsec_***"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "sources[0].secret: expected 'whsec_' followed by base64" in result.stderr
    assert "***" not in result.stderr


def test_hmac_options_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\nname = "h"\nprovider = "hmac"\nsecret = "x"\n'
                    'algorithm = "md5"\nheadr = "X-Sig"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "sources[0].headr: unknown key" in result.stderr


def test_serve_with_bad_config_exits_2_before_binding(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\nport = {port}\n[[sources]]\nname = "a"\nprovider = "github"\n')
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert "sources[0].secret: required" in result.stderr
    with socket.socket() as sock:  # the port was never bound
        sock.bind(("127.0.0.1", port))


def test_missing_config_file_and_bad_toml(tmp_path: Path) -> None:
    assert run_cli("check-config", "--config", str(tmp_path / "nope.toml")).returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2 and "invalid TOML" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run_cli("serve", "--no-such-flag").returncode == 2
    assert run_cli("frobnicate").returncode == 2
    version = run_cli("--version")
    assert version.returncode == 0 and "webhook-bridge" in version.stdout


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    result = run_cli("check-config", "--config", str(root / "config.example.toml"))
    assert result.returncode == 0, result.stderr


def test_tracking_list_every_and_group_commit_bounds() -> None:
    import tomllib

    config = parse(tomllib.loads(MINIMAL + '[tracking]\nlist_every = "0s"\n'
                                 '[store]\ncommit_delay = "0s"\n'), {})
    assert config.tracking.list_every == 0 and config.store.commit_delay == 0
    assert parse(tomllib.loads(MINIMAL), {}).tracking.list_every == 0.1
    found = problems(MINIMAL + '[tracking]\nlist_every = "10ms"\n[store]\ncommit_delay = "1s"\n')
    assert any(p.startswith("tracking.list_every: must be") for p in found), found
    assert any(p.startswith("store.commit_delay: must be") for p in found), found
