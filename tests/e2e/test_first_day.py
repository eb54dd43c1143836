"""The first day of a new user, past the first hour: what they type and what they see.

Setting up: a copy of the example config, two replicas from one config (`--port`, numbers from
the environment), secrets made by `bridge secret`, an agent's config checked.
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import parse
from bridge.core.errors import ConfigError
from tests.support import http
from tests.support.cli import run_cli
from tests.support.harness import (
    ADMIN_TOKEN,
    GITHUB_SECRET,
    Bridge,
    free_port,
    github_headers,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def test_local_copies_of_the_config_stay_out_of_git() -> None:
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", "config.toml", "site.local.toml", ".env"],
                             cwd=ROOT, capture_output=True, text=True)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.stdout.split() == ["config.toml", "site.local.toml", ".env"]
    readme = (ROOT / "README.md").read_text()
    assert "cp config.example.toml config.toml" in readme
    assert "make run CONFIG=config.toml" in readme


def test_an_environment_value_fills_a_number_and_a_bad_one_says_what_it_was() -> None:
    text = """
[server]
port = "${PORT}"
max_connections = "${MAX:-50}"
[forwarder]
concurrency = "${CONCURRENCY:-4}"
"""
    config = parse(tomllib.loads(text), {"PORT": "9107"})
    assert (config.server.port, config.server.max_connections) == (9107, 50)
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(text), {"PORT": "nine"})
    assert info.value.problems == [
        "server.port: expected an integer, and the environment gave 'nine'"]
    with pytest.raises(ConfigError) as info:  # a literal string is still a string
        parse(tomllib.loads('[server]\nport = "9107"'), {})
    assert info.value.problems == ["server.port: expected an integer"]


def test_two_replicas_from_one_config_with_port_flags(
        make_bridge: Callable[..., Bridge]) -> None:
    """`serve --port` (and `--host`) override the config, so one file serves two replicas."""
    first = make_bridge(process=True)
    second = make_bridge(start=False, name="second", process=True)
    second.config_path.write_text(first.config_path.read_text().replace(
        str(first.db), str(second.db)))
    second.port = free_port()
    second.url = f"http://127.0.0.1:{second.port}"
    second.args = ["--port", str(second.port), "--host", "127.0.0.1"]
    second.start()
    assert http.get(f"{second.url}/healthz").status_code == 200
    assert http.get(f"{first.url}/healthz").status_code == 200
    wait_for(lambda: f'"port":{second.port}' in second.logs())  # "config loaded" says where
    bad = run_cli("serve", "--config", str(first.config_path), "--port", "http")
    assert bad.returncode == 2 and "expected a port number" in bad.stderr


def test_bridge_secret_prints_secrets_the_config_takes(tmp_path: Path) -> None:
    tokens = {run_cli("secret").stdout.strip() for _ in range(2)}
    assert len(tokens) == 2  # new each time
    for token in tokens:
        assert len(token) == 43 and token.replace("-", "").replace("_", "").isalnum()
    whsec = run_cli("secret", "--whsec").stdout.strip()
    assert whsec.startswith("whsec_") and len(base64.b64decode(whsec[6:])) == 32
    config = tmp_path / "c.toml"
    token = tokens.pop()
    config.write_text(f"""
[platform]
base_url = "http://127.0.0.1:8090"
trigger_key = "{run_cli("secret").stdout.strip()}"
[admin]
tokens = ["{token}"]
[callbacks]
signing_secret = "{whsec}"
[[sources]]
name = "zap"
provider = "token"
secret = "{token}"
[[routes]]
source = "zap"
trigger = "t"
""")
    checked = run_cli("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "ok: 1 source, 1 route, 0 warnings"
    assert token not in checked.stdout + checked.stderr
    for doc in ("README.md", "docs/callbacks.md", "docs/agent.md"):
        assert "bridge secret" in (ROOT / doc).read_text(), doc


AGENT = """
[platform]
base_url = "http://workflows.plant-a.internal/api/v1"
{platform}

[edge]
url = "{edge}"
channel = "plant-a"
token = "agent-token-plant-a-0001"
signing_secret = "whsec_cGxhbnQtYS1jaGFubmVsLXNpZ25pbmcta2V5"

[callbacks]
{callbacks}
"""


def test_check_config_summarises_an_agents_config_and_warns_on_what_it_lacks(
        tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(AGENT.format(
        platform='trigger_key = "onprem-trigger-key"\napi_key = "onprem-api-key"',
        edge="https://hooks.example.com", callbacks='signing_secret = '
        '"whsec_cGxhdGZvcm0tY2FsbGJhY2stc2VjcmV0LTAx"\nurls = ["http://ci.internal/done"]'))
    good = run_cli("check-config", "--config", str(config))
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == (
        "ok: agent for channel 'plant-a' of https://hooks.example.com, delivering to "
        "http://workflows.plant-a.internal/api/v1, 1 callback URL, 0 warnings")
    assert good.stderr == ""
    config.write_text(AGENT.format(platform='trigger_key = "onprem-trigger-key"',
                                   edge="http://hooks.example.com", callbacks=""))
    lacking = run_cli("check-config", "--config", str(config))
    assert lacking.returncode == 0, lacking.stderr
    assert lacking.stdout.strip().endswith("0 callback URLs, 2 warnings")
    warned = lacking.stderr
    for what in ("platform.api_key is not set", "edge.url is plain http"):
        assert what in warned, what
    assert "agent-token-plant-a-0001" not in warned + lacking.stdout


def test_a_wrong_signature_names_the_source_and_bridge_sources_shows_why(
        make_bridge: Callable[..., Bridge]) -> None:
    bridge = make_bridge()
    body = b'{"ref":"refs/heads/main"}'
    good = bridge.post("/hooks/github", body, github_headers(body, delivery="src-1"))
    assert good.status_code == 202
    wrong = bridge.post("/hooks/github", body, github_headers(body, secret="not-the-secret",
                                                              delivery="src-2"))
    assert wrong.status_code == 401
    error = wrong.json()["error"]
    assert error["code"] == "invalid_signature"
    assert error["message"].startswith("signature does not match: check the secret of "
                                       "sources[0] (source 'github')")
    assert GITHUB_SECRET not in wrong.text
    # A missing header is not a wrong secret: no hint about the secret.
    bare = bridge.post("/hooks/github", body, {"X-GitHub-Event": "push",
                                               "X-GitHub-Delivery": "src-3"})
    assert bare.status_code == 401 and "check the secret" not in bare.text
    listed = run_cli("sources", "--url", bridge.url, "--token", ADMIN_TOKEN)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["name", "provider", "events", "last_event", "last_failure",
                                "why"]
    github = next(line for line in lines if line.startswith("github "))
    assert github.split()[1:3] == ["github", "1"] and "invalid_signature" in github
    stripe = next(line for line in lines if line.startswith("stripe "))
    assert stripe.split()[1:] == ["stripe", "0", "-", "-"]
    as_json = json.loads(run_cli("sources", "--url", bridge.url, "--token", ADMIN_TOKEN,
                                 "--json").stdout)
    [entry] = [s for s in as_json["sources"] if s["name"] == "github"]
    assert entry["last_failure"]["reason"].startswith("invalid_signature: missing")


def test_trigger_names_the_routes_whose_filter_declined_and_prints_samples(
        make_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    bridge = make_bridge("""
[[routes]]
source = "github"
trigger = "tags-only"
events = ["push"]
filter = "starts_with(body.ref, 'refs/tags/')"
""")
    sent = run_cli("trigger", "github", "push", "--config", str(bridge.config_path),
                   "--url", bridge.url, "--wait", "20")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "routed to github-push -> delivered" in sent.stdout
    assert "declined by route github->tags-only: filter did not match" in sent.stdout
    # --print gives the sample's body and sends nothing: ready for `routes test`.
    before = len(bridge.events())
    printed = run_cli("trigger", "github", "push", "--config", str(bridge.config_path),
                      "--url", bridge.url, "--print")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["ref"] == "refs/heads/main"
    assert len(bridge.events()) == before
    sample = tmp_path / "push.json"
    sample.write_text(printed.stdout)
    tested = run_cli("routes", "test", "tags-only", str(sample), "--config",
                     str(bridge.config_path))
    assert tested.returncode == 1 and "no match: filter did not match" in tested.stdout


def test_events_tail_shows_every_arrival_and_attempt_and_outlives_a_restart(
        make_bridge: Callable[..., Bridge], emulator: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    bridge = make_bridge(process=True)
    emulator.emulator.add_fault(trigger="github-push", count=2, status=503)
    body = b'{"ref":"refs/heads/main","n":1}'
    # Sent just before tail's first look: an arrival all the same, not history.
    first = bridge.post("/hooks/github", body, github_headers(body, delivery="tail-a")).json()
    env = {**os.environ, "BRIDGE_URL": bridge.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    tail = subprocess.Popen([sys.executable, "-m", "bridge", "events", "tail", "--interval",
                             "0.1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert tail.stdout is not None and tail.stderr is not None
    lines: list[dict[str, Any]] = []

    def read_until(done: Callable[[], bool]) -> None:
        while not done():
            line = tail.stdout.readline()  # type: ignore[union-attr]
            assert line, "tail stopped"
            lines.append(json.loads(line))

    try:
        assert tail.stderr.readline().startswith("waiting for events")
        read_until(lambda: any(x["change"] == "attempt" and x["status_code"] == 202
                               for x in lines))
        assert (lines[0]["id"], lines[0]["change"]) == (first["id"], "new")
        tried = [(x["outcome"], x["status_code"]) for x in lines if x["change"] == "attempt"]
        assert tried == [("retrylater", 503), ("retrylater", 503), ("delivered", 202)], tried
        # A restart: tail says it lost the bridge, waits, and carries on.
        bridge.terminate()
        assert "trying again" in tail.stderr.readline()
        bridge.start()
        assert tail.stderr.readline().startswith("bridge: reachable again")
        second = bridge.post("/hooks/github", body.replace(b"1", b"2"),
                             github_headers(body.replace(b"1", b"2"), delivery="tail-b")).json()
        read_until(lambda: any(x["id"] == second["id"] and x["change"] == "new"
                               for x in lines))
    finally:
        tail.send_signal(signal.SIGINT)
        _, errors = tail.communicate(timeout=10)
    assert tail.returncode == 0 and "Traceback" not in errors


def test_every_json_answer_gives_times_in_one_form(make_bridge: Callable[..., Bridge],
                                                   emulator: Any) -> None:
    """ISO 8601 in UTC with its zone, as the CLI and the logs print them: never Unix floats,
    in the admin API and in the sender's status link alike."""
    import re

    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    bridge = make_bridge()
    body = b'{"ref":"refs/heads/main"}'
    ack = bridge.post("/hooks/github", body, github_headers(body, delivery="times-1")).json()
    wait_for(lambda: bridge.statuses() == ["delivered"])
    wrong = bridge.post("/hooks/github", body, github_headers(body, secret="x" * 12))
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = {path: http.get(f"{bridge.url}{path}", headers=auth).json() for path in (
        "/admin/events", f"/admin/events/{ack['id']}", "/admin/sources", "/admin/routes",
        "/admin/dead-letters")}
    answers["status"] = http.get(ack["status_url"]).json()
    times: list[tuple[str, str, Any]] = []

    def walk(where: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith("_at") or key in ("at", "last_seen", "first_seen"):
                    times.append((where, key, item))
                walk(where, item)
        elif isinstance(value, list):
            for item in value:
                walk(where, item)

    for where, answer in answers.items():
        walk(where, answer)
    found = {(where, key) for where, key, value in times if value is not None}
    assert {("/admin/events", "received_at"), ("status", "received_at"),
            (f"/admin/events/{ack['id']}", "started_at"),
            ("/admin/sources", "last_received_at"), ("/admin/sources", "at")} <= found
    bad = [(w, k, v) for w, k, v in times if v is not None and not iso.match(str(v))]
    assert bad == []
    document = http.get(f"{bridge.url}/admin/openapi.json", headers=auth).json()
    assert "ISO 8601" in document["info"]["description"]


def test_make_shows_the_installs_progress_and_fails_when_pip_fails(tmp_path: Path) -> None:
    """What `make run` and `make test` print while they install: a numbered line per package
    pip fetches (here on pip's real output), and a failed pip fails make."""
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    database = subprocess.run(["make", "-pn", "-f", str(ROOT / "Makefile"), "venv"], cwd=ROOT,
                              capture_output=True, text=True).stdout
    progress = next(line.split(":=", 1)[1].strip() for line in database.splitlines()
                    if line.startswith("PROGRESS :="))
    assert "-o pipefail" in next(line for line in database.splitlines()
                                 if line.startswith(".SHELLFLAGS"))
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                              "--progress-bar", "off", "-d", str(tmp_path), "six"],
                             capture_output=True, text=True, timeout=120)
    if fetched.returncode != 0:
        pytest.skip("pip cannot fetch a package here (no index reachable)")
    shown = subprocess.run(["bash", "-o", "pipefail", "-c", progress.replace("$$", "$")],
                           input=fetched.stdout, capture_output=True, text=True).stdout
    assert shown.splitlines()[0].startswith("  [1] six"), shown
    failed = subprocess.run(["bash", "-o", "pipefail", "-c",
                             f"{sys.executable} -m pip install --no-index nothing-by-this-name"
                             f" 2>/dev/null | {progress.replace('$$', '$')}"])
    assert failed.returncode != 0
    readme = (ROOT / "README.md").read_text()
    assert "three to four minutes on two cores" in readme
