"""Testing tools of the kind the Stripe and Hookdeck CLIs offer: `bridge trigger` sends a
realistic, correctly signed sample event and follows it to its end; `bridge events tail` prints
events as they arrive, with their outcome as it changes.

Both talk to a running bridge over HTTP like any sender or operator would: `trigger` posts to
`/hooks/{source}` and follows the answer's `status_url`; `tail` reads the admin API.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bridge.cli import samples
from bridge.cli.admin_client import (
    EXIT_ERROR,
    EXIT_OK,
    OpsError,
    Unreachable,
    call,
    source_of,
)

SETTLED = ("delivered", "dead", "unrouted")
HANDLERS: dict[tuple[str, str | None], Any] = {}  # filled below, for `ops.run`


def add_commands(commands: Any) -> None:
    trigger = commands.add_parser(
        "trigger", help="send a realistic signed sample event and follow it to its end",
        description="Signs a sample payload exactly as the source's provider would (event type "
                    "and delivery id headers included), posts it to a running bridge, and "
                    "follows it: where it was routed, the execution, or why nothing happened. "
                    "Samples: " + "; ".join(f"{p}: {', '.join(samples.events_for(p))}"
                                            for p in samples.SAMPLES))
    trigger.add_argument("source", help="a source of the config, e.g. github")
    trigger.add_argument("event", help="the event type to send, e.g. push")
    trigger.add_argument("--config", help="config holding the source (default $BRIDGE_CONFIG)")
    trigger.add_argument("--url", default=None,
                         help="the bridge (default $BRIDGE_URL or http://127.0.0.1:8080)")
    trigger.add_argument("--id", help="the provider's delivery id (repeat one to try dedupe)")
    trigger.add_argument("--payload", help="send this file's bytes instead of the sample")
    trigger.add_argument("--wait", type=float, default=30.0,
                         help="seconds to follow the event (default 30; 0: do not follow)")
    trigger.add_argument("--json", action="store_true", help="print the final status as JSON")
    trigger.add_argument("--print", action="store_true",
                         help="print the sample's body and send nothing (for `routes test`)")


def trigger(args: argparse.Namespace) -> int:
    import os

    source, routes = source_of(args)
    provider = source.provider
    payload = _read(args.payload) if args.payload else None
    if payload is None and args.event not in samples.events_for(provider):
        known = ", ".join(samples.events_for(provider)) or "none"
        raise OpsError(f"no {provider} sample for {args.event!r} (samples: {known}); "
                       "or give --payload FILE")
    base = (args.url or os.environ.get("BRIDGE_URL") or "http://127.0.0.1:8080").rstrip("/")
    url = f"{base}/hooks/{source.name}"
    try:
        body, headers = samples.request(provider, args.event, source.secrets[0].reveal(), url,
                                        args.id, payload)
    except KeyError:
        raise OpsError(f"cannot sign for provider {provider!r}") from None
    if args.print:
        sys.stdout.write(body.decode("utf-8", "replace") + "\n")
        return EXIT_OK
    try:
        answer = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise OpsError(f"cannot reach {base}: {exc.__class__.__name__}") from None
    data = _json(answer)
    if answer.status_code >= 300:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise OpsError(f"{answer.status_code} {error.get('code', '')}: "
                       f"{error.get('message') or answer.text[:200]}")
    kind = "duplicate of" if data.get("duplicate") else "accepted as"
    print(f"sent {source.name} {args.event} ({len(body)} bytes) -> {answer.status_code}, "
          f"{kind} event {data['id']} (key {data['idempotency_key']})")
    if data.get("duplicate"):
        print(f"  {DUPLICATE_REASONS.get(data.get('duplicate_reason'), 'seen before')}"
              + (f"; this request's key was {data['request_key']}" if "request_key" in data
                 else ""))
    if args.wait <= 0:
        return EXIT_OK
    view = follow(data["status_url"], args.wait)
    if args.json:
        print(json.dumps(view, indent=2))
    code = report(view, source.name, routes)
    for name, reason in declined(source, routes, args.event, headers, body):
        print(f"declined by route {name}: {reason}")
    return code


def declined(source: Any, routes: tuple[Any, ...], event_type: str, headers: dict[str, str],
             body: bytes) -> list[tuple[str, str]]:
    """The routes whose event types take this event but whose filter declined it, and why:
    the bridge's own decision (`routing.decide`), run here on what was sent, with this config.
    (The public status link counts them; it does not name routes.)"""
    from bridge.core.models import VerifiedEvent, new_id
    from bridge.ingest import routing

    event = VerifiedEvent(new_id(), source.name, source.provider, event_type, "trigger:local",
                          time.time(), {k.lower(): v for k, v in headers.items()}, body)
    matching = routing.matching(list(routes), source.name, event_type)
    return list(routing.decide(event, matching, {})[1]) if matching else []


DUPLICATE_REASONS = {
    "same_key": "the same key was stored before (the provider's delivery id, or the body's "
                "hash where it sends none): the provider retried, or --id was reused",
    "same_signed_body": "the same signed body was stored before under another delivery id "
                        "(this provider does not sign its ids, so the body decides)",
    "same_items": "every item of this batch was stored before",
}


def follow(status_url: str, seconds: float) -> dict[str, Any]:
    """The event's public status, once it has settled (or when `seconds` have passed)."""
    deadline = time.monotonic() + seconds
    while True:
        view: dict[str, Any] = _json(httpx.get(status_url, timeout=10))
        if _settled(view) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def report(view: dict[str, Any], source: str, routes: tuple[Any, ...]) -> int:
    if view.get("state") == "unrouted":
        listed = "; ".join(f"{r.trigger}: {', '.join(r.events)}" for r in routes) or "none"
        print(f"UNROUTED: no route matches `{view['event_type']}` "
              f"(routes for {source}: {listed})")
        return EXIT_OK
    ok = True
    for delivery in view.get("deliveries", []):
        line = f"routed to {delivery['trigger']} -> {delivery['status']}"
        execution = delivery.get("execution")
        if execution:
            line += f", execution {execution['id']} {execution['status']}"
            if execution.get("error"):
                line += f": {execution['error']}"
            ok &= execution["status"] == "completed"
        elif delivery.get("execution_id"):
            line += f", execution {delivery['execution_id']}"
        if delivery.get("waiting"):
            line += f" (waiting: {delivery['waiting']})"
            ok = False
        elif delivery["status"] == "dead":  # the reason is for operators: `bridge events show`
            line += ": see `bridge events show` for why"
            ok = False
        print(line)
    return EXIT_OK if ok else EXIT_ERROR


def _settled(view: dict[str, Any]) -> bool:
    if view.get("state") not in SETTLED:
        return False
    executions = [d.get("execution") for d in view.get("deliveries", [])]
    return all(x is None or x["status"] not in ("pending", "running") for x in executions)


RECENT = 10.0  # seconds: events received this long before tail started are news too
FOLLOWED = 50  # unsettled events whose attempts tail follows at once, newest kept


def tail(args: argparse.Namespace) -> int:
    """Print each event as it arrives, each attempt of its deliveries (retries included), and
    each change of its outcome. Events received in the RECENT seconds before the first look
    count as arrivals (the command takes a moment to start: an event sent just after typing it
    must not be missed). When the bridge stops answering (a restart), tail says so once and
    keeps trying; it stops only on Ctrl-C or a refusal (a wrong token)."""
    params: dict[str, Any] = {"limit": 100}
    if args.source:
        params["source"] = args.source
    known: dict[str, tuple[str, str | None]] = {}
    attempts: dict[str, int] = {}  # event id -> attempts printed
    started, first, lost = time.time(), True, False
    try:
        while True:
            try:
                rows = call(args, "GET", "/admin/events", params=params)["events"]
                for row in reversed(rows):  # oldest first
                    outcome = (row["state"], row.get("workflows"))
                    before = known.get(row["id"])
                    known[row["id"]] = outcome
                    if first and _seconds(row["received_at"]) < started - RECENT:
                        attempts[row["id"]] = -1  # history: not followed
                        continue
                    if before != outcome:
                        _print_event(args, row, new=before is None)
                    if row["state"] not in SETTLED or attempts.get(row["id"], 0) >= 0:
                        _print_attempts(args, row["id"], attempts)
            except Unreachable as exc:
                if not lost:
                    print(f"bridge: {exc}; trying again (Ctrl-C to stop)", file=sys.stderr,
                          flush=True)
                lost = True
                time.sleep(max(args.interval, 1.0))
                continue
            if lost:
                print("bridge: reachable again", file=sys.stderr, flush=True)
                lost = False
            if first:  # on stderr, in every format: a script waits for it to know it is on
                print("waiting for events (Ctrl-C to stop)", file=sys.stderr, flush=True)
            first = False
            if len(known) > 1000:  # remember the recent ones only
                for event_id in sorted(known)[:-500]:
                    del known[event_id]
                    attempts.pop(event_id, None)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _print_attempts(args: argparse.Namespace, event_id: str, printed: dict[str, int]) -> None:
    """The event's delivery attempts not printed yet, one line each; an event stops being
    followed once it is settled and every attempt is out."""
    if printed.get(event_id, 0) < 0:
        return
    followed = [e for e, n in printed.items() if n >= 0]
    if event_id not in printed and len(followed) >= FOLLOWED:
        return
    detail = call(args, "GET", f"/admin/events/{event_id}")
    lines = sorted(((a["started_at"], d["trigger"], a) for d in detail.get("deliveries", [])
                    for a in d.get("attempt_log", [])), key=lambda line: line[0])
    done = printed.get(event_id, 0)
    for _, trigger, attempt in lines[done:]:
        if args.json:
            print(json.dumps({"id": event_id, "change": "attempt", "trigger": trigger,
                              **attempt}))
            continue
        status = attempt.get("status_code")
        error = f" {attempt['error']}" if attempt.get("error") else ""
        print(f"{'':24}  {event_id} attempt to {trigger}: {attempt['outcome']}"
              f"{f' (HTTP {status})' if status else ''}{error}")
    printed[event_id] = len(lines)
    if detail.get("state") in SETTLED:
        printed[event_id] = -1  # settled and printed: no more requests for it


def _print_event(args: argparse.Namespace, row: dict[str, Any], new: bool) -> None:
    if args.json:
        print(json.dumps({**row, "change": "new" if new else "outcome"}))
        return
    workflows = f" workflow {row['workflows']}" if row.get("workflows") else ""
    if new:
        print(f"{row['received_at']}  {row['source']:<10} {row['event_type']:<24} "
              f"{row['state']:<9}{workflows}  {row['id']}")
    else:
        print(f"{'':24}  {row['id']} -> {row['state']}{workflows}")


def _seconds(when: str) -> float:
    """An answer's ISO 8601 time as Unix seconds."""
    return datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _read(file: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise OpsError(f"cannot read {file}: {exc.strerror}") from None


HANDLERS.update({("trigger", None): trigger, ("events", "tail"): tail})
