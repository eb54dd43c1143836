"""Route filters and input mapping (JMESPath): the decision table over real provider payloads,
load-time errors, hostile bodies and expressions, and the whole path against the emulator."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.cli import samples
from bridge.config import RouteConfig
from bridge.core import expressions
from bridge.core.models import VerifiedEvent, new_id
from bridge.ingest import filters as glue
from bridge.ingest import routing as outbox
from tests.support import http
from tests.support.harness import ALL_SECRETS, github_headers, wait_for

ADMIN = "adm-token-5f0e9c1b2a7d"
TWILIO_FORM = (b"ToCountry=US&ToState=CA&SmsMessageSid=SM1234&NumMedia=0&From=%2B14155550100"
               b"&Body=deploy+api+%E2%9C%93&To=%2B14155550199&MessageSid=SM1234")
SLACK_COMMAND = (b"token=unused&team_id=T0001&channel_name=ops&user_name=ada&command=%2Fdeploy"
                 b"&text=api+prod&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1")


def route(filter_: str | None = None, input_: dict[str, Any] | None = None,
          envelope: str = "envelope") -> RouteConfig:
    problems: list[str] = []
    mapping = expressions.compile_mapping(input_, "input", problems) if input_ else None
    assert not problems, problems
    return RouteConfig(name="r", source="s", trigger="t", envelope=envelope,
                       filter=expressions.compile_expression(filter_) if filter_ else None,
                       input=mapping)


def event(body: bytes, event_type: str = "push", content_type: str = "application/json",
          items: tuple[str, ...] = ()) -> VerifiedEvent:
    return VerifiedEvent(new_id(), "s", "github", event_type, "s:1", time.time(),
                         {"content-type": content_type, "x-team": "ops"}, body, items=items)


def run(r: RouteConfig, e: VerifiedEvent, query: dict[str, str] | None = None
        ) -> tuple[bool, Any]:
    taken, skipped = outbox.decide(e, [r], query or {})
    if skipped:
        return False, skipped[0][1]
    delivery = outbox.render(e, r, 255, built=taken[0][1])
    return True, json.loads(delivery.body)


def sample(provider: str, kind: str) -> bytes:
    return json.dumps(samples.SAMPLES[provider][kind]("d-1", 1_700_000_000)).encode()


MAIN_API = "body.ref == 'refs/heads/main' && body.repository.full_name == 'octocat/Hello-World'"

MATRIX = [
    # (payload, event type, content type, filter, input, expected: None = filtered out)
    (sample("github", "push"), "push", "application/json", MAIN_API,
     {"ref": "body.ref", "commits": "body.commits[].id", "who": "body.pusher.name"},
     {"ref": "refs/heads/main", "commits": [json.loads(sample("github", "push"))["after"]],
      "who": "octocat"}),
    (sample("github", "push"), "push", "application/json",
     "body.ref == 'refs/heads/dev'", None, None),
    (sample("github", "pull_request.opened"), "pull_request.opened", "application/json",
     "body.pull_request.base.ref == 'main' && !(body.pull_request.draft)",
     {"title": "body.pull_request.title", "url": "body.pull_request.html_url",
      "author": "body.pull_request.user.login"},
     {"title": "Add a webhook bridge", "author": "octocat",
      "url": json.loads(sample("github", "pull_request.opened"))["pull_request"]["html_url"]}),
    (sample("github", "issues.opened"), "issues.opened", "application/json",
     "contains(body.issue.labels[].name, 'bug')",
     {"title": "body.issue.title", "labels": "body.issue.labels[].name",
      "nested": {"number": "body.issue.number", "missing": "body.issue.milestone.title"}},
     {"title": "Found a bug", "labels": ["bug"],
      "nested": {"number": json.loads(sample("github", "issues.opened"))["issue"]["number"],
                 "missing": None}}),
    (sample("github", "issues.opened"), "issues.opened", "application/json",
     "contains(body.issue.labels[].name, 'enhancement')", None, None),
    (sample("stripe", "payment_intent.succeeded"), "payment_intent.succeeded",
     "application/json", "body.data.object.amount > `1000` && body.livemode == `false`",
     {"amount": "body.data.object.amount", "currency": "body.data.object.currency"},
     {"amount": 2000, "currency": "usd"}),
    (sample("stripe", "invoice.paid"), "invoice.paid", "application/json",
     "body.data.object.amount_paid > `10000`", None, None),
    (sample("shopify", "orders/create"), "orders/create", "application/json",
     "to_number(body.total_price) > `100`",
     {"order": "body.order_number", "items": "body.line_items[].title",
      "name": "join(' ', [body.customer.first_name, body.customer.last_name])"},
     {"order": json.loads(sample("shopify", "orders/create"))["order_number"],
      "items": ["IPod Nano - 8GB"], "name": "John Smith"}),
    (sample("slack", "app_mention"), "app_mention", "application/json",
     "starts_with(body.event.text, '<@U0BOT> deploy')", {"text": "body.event.text",
                                                        "type": "event_type"},
     {"text": "<@U0BOT> deploy api", "type": "app_mention"}),
    (SLACK_COMMAND, "/deploy", "application/x-www-form-urlencoded",
     "body.command == '/deploy' && headers.\"x-team\" == 'ops'",
     {"args": "body.text", "user": "body.user_name", "team": "query.team"},
     {"args": "api prod", "user": "ada", "team": "blue"}),
    (TWILIO_FORM, "message", "application/x-www-form-urlencoded",
     "starts_with(body.Body, 'deploy')", {"from": "body.From", "text": "body.Body"},
     {"from": "+14155550100", "text": "deploy api \u2713"}),
    (TWILIO_FORM, "message", "application/x-www-form-urlencoded",
     "body.NumMedia != '0'", None, None),
    ("{\"msg\": \"h\u00e9llo \U0001f680\", \"tags\": [\"\u00fc\"]}".encode(), "note",
     "application/json", "contains(body.tags, '\u00fc')", {"msg": "body.msg"},
     {"msg": "h\u00e9llo \U0001f680"}),
]


@pytest.mark.parametrize("payload,event_type,content_type,filter_,input_,expected", MATRIX)
def test_filters_and_mappings_over_provider_payloads(payload: bytes, event_type: str,
                                                     content_type: str, filter_: str,
                                                     input_: dict[str, Any] | None,
                                                     expected: Any) -> None:
    taken, result = run(route(filter_, input_), event(payload, event_type, content_type),
                        {"team": "blue"})
    if expected is None:
        assert not taken and result == "filter did not match"
    elif input_ is None:
        assert taken and result["event_type"] == event_type
    else:
        assert taken and result == expected


def test_without_input_the_envelope_is_sent_unchanged() -> None:
    body = sample("github", "push")
    taken, result = run(route(MAIN_API), event(body))
    assert taken and result["payload"] == json.loads(body)
    raw = outbox.render(event(body), route(MAIN_API, envelope="raw"), 255)
    assert raw.body == body


def test_a_batch_is_filtered_and_mapped_item_by_item() -> None:
    batch = json.dumps([{"event": "bounce", "email": "a@example.com", "sg_event_id": "1"},
                        {"event": "delivered", "email": "b@example.com", "sg_event_id": "2"},
                        {"event": "bounce", "email": "c@example.com", "sg_event_id": "3"}])
    items = ("s:1", "s:2", "s:3")
    taken, result = run(route("body.event == 'bounce'", {"to": "body.email"}),
                        event(batch.encode(), "batch", items=items))
    assert taken and result == [{"to": "a@example.com"}, {"to": "c@example.com"}]
    taken, result = run(route("body.event == 'bounce'"), event(batch.encode(), "batch",
                                                               items=items))
    assert taken and [i["sg_event_id"] for i in result["payload"]] == ["1", "3"]
    taken, reason = run(route("body.event == 'open'"), event(batch.encode(), "batch",
                                                             items=items))
    assert not taken and reason == "filter did not match any item"


@pytest.mark.parametrize("body", [
    b"[" * 200_000 + b"]" * 200_000,                                # nested far too deep
    b'{"a":' * 5000 + b"1" + b"}" * 5000,                           # deep, under the body cap
    json.dumps({"xs": list(range(100_000))}).encode(),              # a huge array, under 1 MiB
    json.dumps({"xs": ["x" * 100] * 20_000}).encode(),              # over 1 MiB
    b"\xff\xfe not json at all",
    b"a=" + b"&a=" * 50_000,                                        # a form with many fields
])
def test_hostile_bodies_are_bounded(body: bytes) -> None:
    expressions = ["length(body.xs[?@ > `10`]) > `3`", "sort_by(body.xs[*].{v: @}, &v)[0]",
                   "body.a.a.a.a.a.a", "max(body.xs)", "body[*][*][*][*][*][*]"]
    for text in expressions:
        r = route(text, {"first": "body.xs[0]", "n": "length(body.xs || `[]`)"})
        started = time.perf_counter()
        for content_type in ("application/json", "application/x-www-form-urlencoded"):
            taken, result = run(r, event(body, content_type=content_type))
            assert isinstance(taken, bool)
        assert time.perf_counter() - started < 5.0, text


def test_an_expression_that_fails_on_an_event_does_not_take_it() -> None:
    taken, reason = run(route("abs(body.ref) > `1`"), event(sample("github", "push")))
    assert not taken and reason == "expression failed on this event (ValueError)" or \
        reason.startswith("expression failed on this event")


@pytest.mark.parametrize("text,message", [
    ("body.ref == ", "incomplete expression at 12"),
    ("body.ref ==== 'x'", "unexpected token '==' at 11"),
    ("body.`unclosed", "at 5"),
    ("", "empty expression"),
    ("a" * 5000, "longer than 4096 characters"),
])
def test_bad_expressions_are_config_errors_with_the_position(text: str, message: str,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"""
[platform]
base_url = "http://127.0.0.1:9/api/v1"
trigger_key = "k"
[[sources]]
name = "github"
provider = "github"
secret = "{ALL_SECRETS[0]}"
[[routes]]
source = "github"
trigger = "a"
[[routes]]
source = "github"
trigger = "b"
[[routes]]
source = "github"
trigger = "c"
filter = {json.dumps(text)}
""")
    for command in ("check-config", "serve"):
        out = subprocess.run([sys.executable, "-m", "bridge", command, "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert f"routes[2].filter: {message}" in out.stderr or (
            message.startswith("at") and "routes[2].filter:" in out.stderr
            and message in out.stderr), out.stderr


GLUE_ROUTES = f"""
[admin]
tokens = ["{ADMIN}"]

[[routes]]
source = "github"
trigger = "deploy"
events = ["push"]
filter = "body.ref == 'refs/heads/main' && body.repository.full_name == 'acme/api'"
input = {{ ref = "body.ref", repo = "body.repository.full_name", by = "body.pusher.name", \
missing = "body.nothing.here" }}

[[routes]]
source = "github"
trigger = "triage"
events = ["issues.*"]
filter = "event_type == 'issues.opened' && contains(body.issue.labels[].name, 'bug')"
input = {{ title = "body.issue.title", labels = "body.issue.labels[].name" }}
"""

PLAIN_ROUTES = """
[[routes]]
source = "github"
trigger = "github-push"
events = ["never"]
"""


def test_end_to_end_only_the_matching_route_runs_with_exactly_the_mapped_body(
        make_bridge: Any, emulator: Any) -> None:
    from tests.support.harness import BASE_CONFIG

    base = BASE_CONFIG.split("[[routes]]")[0]
    bridge = make_bridge(GLUE_ROUTES, base=base)
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def push(delivery: str, ref: str, repo: str = "acme/api") -> httpx.Response:
        body = json.dumps({"ref": ref, "repository": {"full_name": repo},
                           "pusher": {"name": "Zoë"}}).encode()
        return bridge.post("/hooks/github", body, github_headers(body, delivery=delivery))

    first = push("g-1", "refs/heads/main")
    assert first.status_code == 202
    assert push("g-1", "refs/heads/main").json()["duplicate"] is True  # still a duplicate
    skipped = push("g-2", "refs/heads/dev")
    assert skipped.status_code == 202
    issue = json.dumps({"action": "opened", "issue": {"title": "Broken ✗", "labels": [
        {"name": "bug"}, {"name": "p1"}]}}).encode()
    assert bridge.post("/hooks/github", issue, github_headers(
        issue, delivery="g-3", event="issues")).status_code == 202
    wait_for(lambda: len(emulator.emulator.calls) >= 2, timeout=20)
    time_limit = time.monotonic() + 1
    while time.monotonic() < time_limit and len(emulator.emulator.calls) < 3:
        time.sleep(0.05)
    calls = emulator.emulator.calls
    assert sorted(c["trigger"] for c in calls) == ["deploy", "triage"]
    executions = {e.trigger: e.input for e in emulator.emulator.executions_for()}
    assert executions["deploy"] == {"ref": "refs/heads/main", "repo": "acme/api", "by": "Zoë",
                                    "missing": None}
    assert executions["triage"] == {"title": "Broken ✗", "labels": ["bug", "p1"]}
    deploy = [c for c in calls if c["trigger"] == "deploy"][0]
    assert deploy["key"] == "github:g-1:deploy" and deploy["content_type"] == "application/json"

    # The push to dev: no route took it, and the event says which route did not, and why.
    event_id = skipped.json()["id"]
    shown = http.get(f"{bridge.url}/admin/events/{event_id}", headers=admin, timeout=10).json()
    assert shown["state"] == "unrouted"
    assert shown["filtered"] == [{"route": "github->deploy", "reason": "filter did not match"}]
    status = http.get(skipped.json()["status_url"], timeout=10).json()
    assert status["filtered"] == 1  # the sender learns it was filtered, not by what
    out = subprocess.run([sys.executable, "-m", "bridge", "events", "show", event_id, "--url",
                          bridge.url, "--token", ADMIN], capture_output=True, text=True,
                         timeout=30)
    assert "route github->deploy did not take it: filter did not match" in out.stdout


def test_reload_applies_new_filters_to_new_events_only(make_bridge: Any,
                                                       emulator: Any) -> None:
    from tests.support.harness import BASE_CONFIG

    base = BASE_CONFIG.split("[[routes]]")[0]
    bridge = make_bridge(GLUE_ROUTES, base=base, process=True)
    emulator.emulator.add_fault(trigger="deploy", count=1, status=503)  # first send fails
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/api"},
                       "pusher": {"name": "a"}}).encode()
    assert bridge.post("/hooks/github", body, github_headers(body, delivery="r-1")
                       ).status_code == 202
    wait_for(lambda: emulator.emulator.calls, timeout=20)
    # New mapping: only `ref`. The event already accepted keeps its rendered body on retry.
    text = bridge.config_path.read_text().replace(
        'input = { ref = "body.ref", repo = "body.repository.full_name", by = "body.pusher.name",'
        ' missing = "body.nothing.here" }', 'input = { ref2 = "body.ref" }')
    assert "ref2" in text
    bridge.config_path.write_text(text)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in bridge.logs(), timeout=10)
    body2 = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/api"},
                        "pusher": {"name": "b"}}).encode()
    assert bridge.post("/hooks/github", body2, github_headers(body2, delivery="r-2")
                       ).status_code == 202
    wait_for(lambda: len(emulator.emulator.executions_for("deploy")) == 2, timeout=30)
    inputs = sorted((e.input for e in emulator.emulator.executions_for("deploy")),
                    key=lambda i: "ref2" in i)
    assert inputs[0] == {"ref": "refs/heads/main", "repo": "acme/api", "by": "a",
                         "missing": None}
    assert inputs[1] == {"ref2": "refs/heads/main"}
    digests = {c["key"]: set() for c in emulator.emulator.calls}
    for c in emulator.emulator.calls:
        digests[c["key"]].add(c["sha256"])
    assert all(len(d) == 1 for d in digests.values())  # every retry byte-identical


def test_routes_test_shows_the_match_and_the_exact_body(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"""
[platform]
base_url = "http://127.0.0.1:9/api/v1"
trigger_key = "k"
[[sources]]
name = "github"
provider = "github"
secret = "{ALL_SECRETS[0]}"
{GLUE_ROUTES.split("[[routes]]", 1)[1].join(["[[routes]]", ""])}
""".replace(f'[admin]\ntokens = ["{ADMIN}"]', ""))
    payload = tmp_path / "push.json"
    payload.write_text(json.dumps({"ref": "refs/heads/main",
                                   "repository": {"full_name": "acme/api"}}))
    out = subprocess.run([sys.executable, "-m", "bridge", "routes", "test", "deploy",
                          str(payload), "--config", str(config)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        '{"ref":"refs/heads/main","repo":"acme/api","by":null,"missing":null}')
    # The fields that came out null are named, each in a warning of its own.
    assert [line.split(" came out null")[0] for line in out.stderr.splitlines()] == [
        "warning: input.by", "warning: input.missing"]
    payload.write_text(json.dumps({"ref": "refs/heads/dev"}))
    out = subprocess.run([sys.executable, "-m", "bridge", "routes", "test", "deploy",
                          str(payload), "--config", str(config), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert json.loads(out.stdout) == {"route": "github->deploy", "trigger": "deploy",
                                      "event_type": "push", "match": False,
                                      "reason": "filter did not match"}


@pytest.mark.parametrize(("expression", "expected"), [
    ("split(body.ref, '/')[-1]", "main"),
    ("split(body.ref, '/')", ["refs", "heads", "main"]),
    ("replace(body.ref, 'refs/heads/', '')", "main"),
    ("replace(body.title, 'o', '0')", "  F00 B00  "),
    ("trim_prefix(body.ref, 'refs/heads/')", "main"),
    ("trim_prefix(body.ref, 'refs/tags/')", "refs/heads/main"),
    ("trim_suffix(body.repo, '.git')", "acme/api"),
    ("trim_suffix(body.repo, '.svn')", "acme/api.git"),
    ("lower(body.user)", "ada lovelace"),
    ("upper(body.user)", "ADA LOVELACE"),
    ("trim(body.title)", "Foo Boo"),
    ("join('-', split(body.ref, '/'))", "refs-heads-main"),
    ("to_number(split(body.version, '.')[0])", 12),
    ("body.ref[11:]", None),  # JMESPath slices arrays only: why the functions exist
])
def test_string_functions(expression: str, expected: Any) -> None:
    doc = {"body": {"ref": "refs/heads/main", "repo": "acme/api.git", "user": "Ada Lovelace",
                    "title": "  Foo Boo  ", "version": "12.4.1"}}
    assert expressions.compile_expression(expression).search(doc) == expected


@pytest.mark.parametrize("expression", [
    "split(body.n, '/')",  # a number where text is expected
    "split(body.ref, '')",  # an empty separator
    "replace(body.ref, '', 'x')",
    "lower(`null`)",
])
def test_a_string_function_given_the_wrong_thing_does_not_take_the_event(
        expression: str) -> None:
    taken, reason = run(route(filter_=expression), event(b'{"ref":"refs/heads/main","n":1}'))
    assert not taken and reason.startswith("expression failed on this event")


def test_a_mapped_branch_name_reaches_the_workflow(make_bridge: Any, emulator: Any) -> None:
    bridge = make_bridge("""
[[routes]]
source = "github"
trigger = "deploy-branch"
events = ["push"]
filter = "starts_with(body.ref, 'refs/heads/')"
[routes.input]
branch = "split(body.ref, '/')[-1]"
repo = "lower(body.repository.full_name)"
""")
    body = json.dumps({"ref": "refs/heads/feature-x",
                       "repository": {"full_name": "Acme/API"}}).encode()
    assert bridge.post("/hooks/github", body, github_headers(body, delivery="fn-1")
                       ).status_code == 202
    [call] = wait_for(lambda: emulator.emulator.executions_for("deploy-branch"))
    assert call.input == {"branch": "feature-x", "repo": "acme/api"}
    # The emulator's call log shows the body the workflow got, not only its digest.
    control = emulator.base_url.removesuffix("/api/v1")
    [logged] = [c for c in http.get(f"{control}/_emulator/calls").json()
                if c["trigger"] == "deploy-branch"]
    assert json.loads(logged["body"]) == call.input and logged["bytes"] == len(logged["body"])


def test_the_emulators_call_log_keeps_bodies_bounded() -> None:
    from bridge.devtools.emulator import SHOWN_BODY, SHOWN_CALLS, Emulator, EmulatorServer

    server = EmulatorServer(Emulator()).start()
    try:
        big = b'{"x":"' + b"y" * 10_000 + b'"}'
        for i in range(SHOWN_CALLS + 2):
            last = i == SHOWN_CALLS + 1
            http.post(f"{server.base_url}/workflows/triggers/t", content=big if last else b"{}",
                      headers={"Authorization": "Bearer dev-trigger-key",
                               "Idempotency-Key": f"k-{i}"})
        calls = http.get(f"{server.base_url.removesuffix('/api/v1')}/_emulator/calls").json()
    finally:
        server.stop()
    assert len(calls) == SHOWN_CALLS + 2
    assert "body" not in calls[0] and "body" not in calls[1]  # past the last 1,000
    assert all(c["body"] == "{}" for c in calls[2:-1])
    assert calls[-1]["bytes"] == len(big) and calls[-1]["body"] == big[:SHOWN_BODY].decode()


@pytest.mark.parametrize(("text", "table"), [
    ("a=1&b=2", {"a": "1", "b": "2"}),
    ("a=1&b=2&a=3", {"a": ["1", "3"], "b": "2"}),
    ("a=&a=&a=x", {"a": ["", "", "x"]}),
    ("&".join(["k=v"] * 10_000), {"k": ["v"] * 10_000}),
], ids=["plain", "repeated", "blanks", "ten-thousand-repeats"])
def test_a_form_keeps_every_value_of_a_repeated_field_in_order(
        text: str, table: dict[str, object]) -> None:
    """Linear in the fields (bench/form.py: a repeat costs what a distinct field costs)."""
    assert glue.form(text) == table
