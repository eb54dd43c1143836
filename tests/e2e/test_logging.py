"""What a running bridge logs at each `[server] log_level`: real bridge, emulator and callback
receiver, the whole loop from the webhook to its callback."""

from __future__ import annotations

import json
from collections.abc import Callable

from bridge.devtools.emulator import EmulatorServer
from tests.support.harness import BASE_CONFIG, Bridge, github_headers, wait_for
from tests.support.receiver import Receiver
from tests.support.tracking import send_issue, tracked_config

# One line for each step that went well: the webhook, the trigger call, the execution's end and
# the callback.
WENT_WELL = ('"msg":"accepted"', '"msg":"delivered"', '"msg":"execution finished"',
             '"msg":"callback delivered"')


def rejected(bridge: Bridge, delivery: str) -> None:
    body = json.dumps({"action": "opened"}).encode()
    answer = bridge.post("/hooks/github", body, github_headers(
        body, secret="not-the-secret", delivery=delivery, event="issues"))
    assert answer.status_code == 401, answer.text


def called_back(receiver: Receiver, count: int) -> None:
    wait_for(lambda: len(receiver.accepted()) >= count, timeout=20)


def test_warning_keeps_failures_and_drops_the_lines_of_what_went_well(
        make_bridge: Callable[..., Bridge], emulator: EmulatorServer, receiver: Receiver) -> None:
    quiet = make_bridge(tracked_config(receiver), name="quiet", base=BASE_CONFIG.replace(
        'log_format = "json"', 'log_format = "json"\nlog_level = "warning"'))
    assert send_issue(quiet, "quiet-1").status_code == 202
    called_back(receiver, 1)
    rejected(quiet, "quiet-bad")
    wait_for(lambda: '"level":"warning","logger":"bridge.inbound","msg":"rejected"'
             in quiet.logs())
    logs = quiet.logs()
    for line in (*WENT_WELL, '"msg":"config loaded"'):
        assert line not in logs, line

    # The default level writes each of them, for the same webhook on a bridge of its own.
    loud = make_bridge(tracked_config(receiver), name="loud", process=True)
    assert send_issue(loud, "loud-1").status_code == 202
    called_back(receiver, 2)
    for line in WENT_WELL:
        wait_for(lambda line=line: line in loud.logs())  # type: ignore[misc]

    # `--log-level` on the command line overrides the config.
    loud.terminate()
    loud.args = ["--log-level", "warning"]
    before = loud.logs().count('"msg":"accepted"')
    loud.start()
    assert send_issue(loud, "loud-2").status_code == 202
    called_back(receiver, 3)
    rejected(loud, "loud-bad")
    wait_for(lambda: loud.logs().count('"msg":"rejected"') == 1)
    assert loud.logs().count('"msg":"accepted"') == before == 1
