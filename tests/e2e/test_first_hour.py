"""The first hour of a newcomer, against a real bridge and emulator: the mistakes people make
first (a wrong trigger key, a route name the shell mangles, a second `make run`) and the tools
they reach for (`bridge trigger`, `events tail`, `events show`, `deliveries retry`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge.devtools.emulator import EmulatorServer
from tests.support import http
from tests.support.admin import ADMIN, ADMIN_TOKEN, admin, cli
from tests.support.harness import GITHUB_SECRET, Bridge, github_headers, wait_for


def commits(bridge: Bridge) -> float:
    text = http.get(f"{bridge.url}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "bridge_store_commit_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    return sample.value
    raise AssertionError("no commit count")


def cpu_seconds(bridge: Bridge) -> float:
    assert bridge.proc is not None
    fields = Path(f"/proc/{bridge.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push(bridge: Bridge, delivery: str) -> dict[str, object]:
    body = json.dumps({"ref": "refs/heads/main", "after": delivery}).encode()
    answer = bridge.post("/hooks/github", body, github_headers(body, delivery=delivery))
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def test_a_paused_route_with_work_waiting_costs_nothing(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    """Bug 1: a paused route's waiting delivery woke the forwarder at once, forever (0.92 of a
    core, ~3,000 commits a second)."""
    emulator.emulator.configure(trigger_key="rotated-on-the-platform")
    bridge = make_bridge(ADMIN, start=False, process=True)
    text = bridge.config_path.read_text().replace('pause_probe = "300ms"', 'pause_probe = "1h"')
    bridge.config_path.write_text(text)  # only an operator's retry sends it again
    bridge.start()
    ack = push(bridge, "paused-1")
    wait_for(lambda: bridge.routes()["github->github-push"]["state"] == "paused")
    time.sleep(0.5)
    before, cpu = commits(bridge), cpu_seconds(bridge)
    time.sleep(3.0)
    spent, used = commits(bridge) - before, cpu_seconds(bridge) - cpu
    # The loops still look every poll interval (0.1 s here).
    assert spent < 150, f"{spent} commits in 3 s while idle"
    assert used < 0.5, f"{used:.2f} s of CPU in 3 s while idle"
    # Why it waits, where people look: the admin API, the status URL, `events show`.
    shown = admin(bridge, "GET", f"/admin/events/{ack['id']}").json()
    waiting = shown["deliveries"][0]["waiting"]
    assert "route paused: platform answered 401" in waiting
    assert "check `[platform] trigger_key`" in waiting
    status = http.get(str(ack["status_url"])).json()
    assert status["deliveries"][0]["waiting"].startswith("paused")
    assert "github->" not in str(status["deliveries"])  # nothing of the route is shown
    printed = cli(bridge, "events", "show", str(ack["id"]))
    assert "waiting: route paused: platform answered 401" in printed.stdout
    logs = bridge.logs()
    assert '"level":"warning","logger":"bridge.store","msg":"route paused"' in logs

    # Fixed on the platform side; the waiting delivery goes now, without a restart.
    emulator.emulator.configure(trigger_key="tk-test-trigger-key-77f1")
    delivery = shown["deliveries"][0]["id"]
    retried = cli(bridge, "deliveries", "retry", delivery)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: bridge.statuses() == ["delivered"], timeout=5)
    assert cli(bridge, "deliveries", "retry", delivery).returncode == 1  # nothing pending


def test_startup_says_which_routes_are_still_paused(make_bridge: Callable[..., Bridge],
                                                   emulator: EmulatorServer) -> None:
    bridge = make_bridge(ADMIN)
    assert cli(bridge, "routes", "pause", "github-push", "--reason", "deploy").returncode == 0
    bridge.terminate()
    bridge.start()
    assert '"msg":"route still paused","route":"github->github-push","reason":"deploy"' \
        in bridge.logs()


def test_routes_are_named_by_trigger_with_suggestions(make_bridge: Callable[..., Bridge]
                                                      ) -> None:
    """Bug 2: `github->github-push` is a shell redirect."""
    bridge = make_bridge(ADMIN)
    paused = cli(bridge, "routes", "pause", "github-push", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    assert "github->github-push" in paused.stdout and "paused" in paused.stdout
    assert cli(bridge, "routes", "resume", "github-push").returncode == 0
    wrong = cli(bridge, "routes", "resume", "github-pushh")
    assert wrong.returncode == 1
    assert "did you mean 'github-push'" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_commands_that_would_do_nothing_say_so(make_bridge: Callable[..., Bridge],
                                               emulator: EmulatorServer) -> None:
    """Bug 3: a redrive by event id, a bogus state, a first page of more."""
    emulator.emulator.add_fault(trigger="github-push", count=1, status=422)
    bridge = make_bridge(ADMIN)
    ack = push(bridge, "dead-1")
    wait_for(lambda: bridge.statuses() == ["dead"])
    redriven = cli(bridge, "dead-letters", "redrive", str(ack["id"]), "--json")
    assert redriven.returncode == 0 and json.loads(redriven.stdout)["redriven"] == 1
    wait_for(lambda: bridge.statuses() == ["delivered"])
    nothing = cli(bridge, "dead-letters", "redrive", str(ack["id"]))
    assert nothing.returncode == 1 and "no dead delivery" in nothing.stderr
    bogus = cli(bridge, "events", "list", "--state", "bogus")
    assert bogus.returncode == 2 and "invalid choice" in bogus.stderr
    push(bridge, "page-2")
    push(bridge, "page-3")
    page = cli(bridge, "events", "list", "--limit", "2")
    assert page.returncode == 0 and "(more: --cursor " in page.stderr


def test_a_second_bridge_on_a_taken_port_says_so_in_one_line(
        make_bridge: Callable[..., Bridge], tmp_path: Path) -> None:
    """Bug 4: a traceback (emulator port) or exit 3 after "bridge started" (server port)."""
    first = make_bridge()
    second = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config",
                             str(first.config_path)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"bridge: port {first.port} on 127.0.0.1 is already in use, so the bridge cannot start "
        "(another bridge still running? stop it, or set [server] port to a free port)")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = tmp_path / "emu.toml"
        config.write_text(f"[server]\nport = 0\n[store]\npath = \"{tmp_path / 'e.db'}\"\n"
                          f"[emulator]\nenabled = true\nport = {taken}\n")
        emulator = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config",
                                   str(config)], capture_output=True, text=True, timeout=30)
    assert emulator.returncode == 1 and "Traceback" not in emulator.stderr
    assert f"port {taken} on 127.0.0.1 is already in use, so the platform emulator" \
        in emulator.stderr


def test_cli_output_is_pipe_and_script_friendly(make_bridge: Callable[..., Bridge],
                                                tmp_path: Path) -> None:
    """Bug 6: `--json | head`, `sign --json`, `send --json`, prune's double report."""
    bridge = make_bridge(ADMIN)
    for i in range(30):
        push(bridge, f"pipe-{i}")
    env = {**os.environ, "BRIDGE_URL": bridge.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    piped = subprocess.run(f"{sys.executable} -m bridge events list --json | head -1",
                           shell=True, capture_output=True, text=True, env=env, timeout=60)
    assert piped.stdout.strip() == "{" and piped.stderr == ""
    signed = cli(bridge, "sign", "--provider", "github", "--secret", "s", "--json",
                 stdin=b'{"a":1}')
    assert signed.returncode == 0 and "X-Hub-Signature-256" in json.loads(signed.stdout)
    payload = tmp_path / "p.json"
    payload.write_text('{"ref":"send-json"}')
    sent = cli(bridge, "send", "--source", "github", "--config", str(bridge.config_path),
               "--json", str(payload))
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["status"] == 202
    pruned = cli(bridge, "prune")
    assert pruned.returncode == 0 and pruned.stderr == ""
    assert pruned.stdout.split() == ["removed", "-------", "0"]


def test_every_subcommand_lists_its_actions() -> None:
    for command, actions in (("events", ("list", "show", "tail", "replay")),
                             ("dead-letters", ("list", "redrive", "discard")),
                             ("routes", ("list", "pause", "resume")),
                             ("deliveries", ("retry",))):
        shown = subprocess.run([sys.executable, "-m", "bridge", command, "--help"],
                               capture_output=True, text=True, timeout=30)
        for action in actions:
            assert f"    {action} " in shown.stdout, (command, action)
    listed = subprocess.run([sys.executable, "-m", "bridge", "events", "list", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert "{queued,unrouted,delivered,dead}" in listed.stdout
    sign = subprocess.run([sys.executable, "-m", "bridge", "sign", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert "--data-binary" in sign.stdout


def trigger(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BRIDGE_URL": bridge.url}
    env.pop("BRIDGE_ADMIN_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "bridge", "trigger", *args, "--config",
                           str(bridge.config_path)], capture_output=True, text=True, env=env,
                          timeout=60)


def test_trigger_sends_signed_samples_and_follows_them(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    bridge = make_bridge(ADMIN + '\n[[sources]]\nname = "hooks"\nprovider = "standard"\n'
                         'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n')
    sent = trigger(bridge, "github", "push")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "routed to github-push -> delivered, execution exe_" in sent.stdout
    assert sent.stdout.rstrip().endswith("completed")
    opened = trigger(bridge, "github", "pull_request.opened")
    assert "routed to github-push -> delivered" in opened.stdout, opened.stdout
    stripe = trigger(bridge, "stripe", "checkout.session.completed")
    assert "routed to stripe-events -> delivered" in stripe.stdout, stripe.stdout
    [execution] = [x for x in emulator.emulator.executions_for("stripe-events")]
    assert execution.input["event_type"] == "checkout.session.completed"
    unrouted = trigger(bridge, "github", "issues.opened")
    assert "UNROUTED: no route matches `issues.opened` (routes for github: github-push: " \
           "push, pull_request.*)" in unrouted.stdout
    first = trigger(bridge, "hooks", "user.created", "--id", "msg_same", "--wait", "0")
    again = trigger(bridge, "hooks", "user.created", "--id", "msg_same", "--wait", "0")
    assert "accepted as event" in first.stdout and "duplicate of event" in again.stdout
    assert "the same key was stored before" in again.stdout  # and why
    unknown = trigger(bridge, "github", "pushed")
    assert unknown.returncode == 1 and "samples: push, pull_request.opened" in unknown.stderr


def test_tools_that_sign_need_only_the_source(make_bridge: Callable[..., Bridge],
                                              emulator: EmulatorServer, tmp_path: Path) -> None:
    """`send` and `trigger` read the source and its routes; an unset admin token (or anything
    else of the config) does not stop them."""
    bridge = make_bridge('\n[admin]\ntokens = ["${UNSET_ADMIN_TOKEN_FOR_TEST}"]\n', start=False, process=True)
    env = {**os.environ, "UNSET_ADMIN_TOKEN_FOR_TEST": "adm-token-5f0e9c1b2a7d"}
    bridge.env = env
    bridge.start()
    sent = trigger(bridge, "github", "push")
    assert sent.returncode == 0 and "delivered" in sent.stdout, sent.stdout + sent.stderr


def test_a_body_off_by_a_trailing_newline_is_named_as_such(make_bridge: Callable[..., Bridge]
                                                          ) -> None:
    bridge = make_bridge()
    body = b'{"ref":"newline"}'
    headers = github_headers(body, delivery="nl-1")
    answer = bridge.post("/hooks/github", body + b"\n", headers)
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert "without its trailing newline" in message and "--data-binary" in message
    plain = bridge.post("/hooks/github", b'{"ref":"other"}', headers)
    assert "newline" not in plain.json()["error"]["message"]


def test_events_tail_prints_events_and_their_outcomes(make_bridge: Callable[..., Bridge],
                                                      emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=1.0)  # queued first, delivered a second later
    bridge = make_bridge(ADMIN)
    env = {**os.environ, "BRIDGE_URL": bridge.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    tail = subprocess.Popen([sys.executable, "-m", "bridge", "events", "tail", "--interval",
                             "0.1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert tail.stderr is not None  # its first look is done: what was there is history
        assert tail.stderr.readline().startswith("waiting for events")
        ack = push(bridge, "tail-1")
        lines: list[dict[str, object]] = []
        assert tail.stdout is not None
        while not any(line.get("state") == "delivered" for line in lines):
            lines.append(json.loads(tail.stdout.readline()))
        assert lines[0]["id"] == ack["id"] and lines[0]["change"] == "new"
        assert lines[0]["state"] == "queued"
        assert lines[-1]["change"] == "outcome" and lines[-1]["id"] == ack["id"]
    finally:
        tail.send_signal(signal.SIGINT)
        _, errors = tail.communicate(timeout=10)  # and closes its pipes
    assert tail.returncode == 0 and "Traceback" not in errors


def test_a_delivered_event_whose_workflow_failed_shows_it_in_the_table(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer) -> None:
    emulator.emulator.configure(failing_triggers=["github-push"], execution_delay=0.1)
    bridge = make_bridge(ADMIN)
    push(bridge, "fails-1")
    wait_for(lambda: [x["status"] for x in bridge.executions()] == ["failed"])
    listed = cli(bridge, "events", "list")
    row = listed.stdout.splitlines()[2]
    assert "delivered" in row and "failed" in row


def test_config_mistakes_are_explained(tmp_path: Path) -> None:
    from tests.support.cli import run_cli

    path = tmp_path / "c.toml"
    path.write_text(f'[[route]]\nsource = "github"\n[[sources]]\nname = "github"\n'
                    f'provider = "github"\nsecret = "${{GH_SECRET:-{GITHUB_SECRET}}}"\n')
    typo = run_cli("check-config", "--config", str(path))
    assert typo.returncode == 2 and "route: unknown key (did you mean 'routes'?)" in typo.stderr
    path.write_text('[[sources]]\nname = "github"\nprovider = "github"\nsecret = "${GH}"\n'
                    '[[sources]]\nname = "s"\nprovider = "stripe"\nsecret = "${EMPTY:-whsec_x}"\n'
                    '[[routes]]\nsource = "s"\ntrigger = "t"\n'
                    '[[routes]]\nsource = "github"\ntrigger = "u"\nevents = ["pushh"]\n'
                    '[platform]\ntrigger_key = "tk"\nbase_url = "http://127.0.0.1:9/api"\n')
    missing = run_cli("check-config", "--config", str(path), env={**os.environ, "EMPTY": ""})
    assert missing.returncode == 2
    assert missing.stderr.count("\n  ") == 1  # one line for the unset variable
    assert "sources[0].secret: environment variable GH is not set" in missing.stderr
    ok = run_cli("check-config", "--config", str(path),
                 env={**os.environ, "EMPTY": "", "GH": "changeme"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "ok: 2 sources, 2 routes, 2 warnings"
    assert "'pushh' can never match a GitHub event (did you mean 'push'?)" in ok.stderr
    assert "looks like a placeholder" in ok.stderr
    dumped = run_cli("check-config", "--config", str(path), "--print",
                     env={**os.environ, "EMPTY": "", "GH": "changeme"})
    assert json.loads(dumped.stdout.rsplit("\nok:", 1)[0])["sources"][1]["secrets"] == [
        "********"]
