"""Operator commands: the CLI side of the admin API, plus `sign` and `send`.

Each command talks to a running bridge over HTTP (`--url`, default $BRIDGE_URL or
http://127.0.0.1:8080) with an admin token (`--token`, default $BRIDGE_ADMIN_TOKEN), prints a
table for people or JSON with `--json`, and fails with one clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bridge.core.models import iso

EXIT_OK, EXIT_ERROR = 0, 1


class OpsError(Exception):
    """One line for the operator; exit 1."""


class Unreachable(OpsError):
    """The bridge did not answer at all (down, restarting, wrong --url)."""


def add_commands(commands: Any) -> None:
    def client_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=os.environ.get("BRIDGE_URL", "http://127.0.0.1:8080"))
        p.add_argument("--token", default=os.environ.get("BRIDGE_ADMIN_TOKEN"))
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    events = commands.add_parser("events", help="list, show, follow and replay events",
                                 description="Events: list | show | tail | replay.")
    ev = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = client_options(ev.add_parser("list", help="newest first, a page at a time"))
    event_filters(listing)
    listing.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    listing.add_argument("--limit", type=int, default=50, help="events per page, 1-500")
    client_options(ev.add_parser("show", help="one event: deliveries, why any waits, "
                                              "executions, callbacks")).add_argument("id")
    tail = client_options(ev.add_parser("tail", help="events as they arrive, one line each, "
                                                     "with their outcome as it changes (Ctrl-C)"))
    tail.add_argument("--source", help="only this source")
    tail.add_argument("--interval", type=float, default=0.5, help="seconds between looks")
    replay = client_options(ev.add_parser("replay", help="run an event's workflows again"))
    replay.add_argument("id", nargs="?", help="one event; or filter with the options below")
    event_filters(replay)

    deliveries = commands.add_parser("deliveries", help="act on one delivery",
                                     description="Deliveries: retry.")
    dv = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    client_options(dv.add_parser("retry", help="send a pending delivery now instead of at the "
                                               "end of its backoff (resumes its route if paused)")
                   ).add_argument("id", help="the delivery id (events show lists them)")

    dead = commands.add_parser("dead-letters", help="list, redrive and discard dead deliveries",
                               description="Dead letters: list | redrive | discard.")
    dl = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    dead_list = client_options(dl.add_parser("list", help="dead deliveries, oldest first"))
    for name in ("route", "source", "cursor"):
        dead_list.add_argument(f"--{name}")
    dead_list.add_argument("--limit", type=int, default=50)
    helps = {"redrive": "send dead deliveries again, with their own idempotency keys",
             "discard": "give up on dead deliveries, with a reason"}
    for action in ("redrive", "discard"):
        p = client_options(dl.add_parser(action, help=helps[action]))
        p.add_argument("ids", nargs="*", help="delivery ids, or event ids (all of an event's "
                                              "dead deliveries)")
        p.add_argument("--all", action="store_true", help="every dead delivery (with filters)")
        p.add_argument("--route")
        p.add_argument("--source")
        if action == "discard":
            p.add_argument("--reason", required=True)
        else:
            p.add_argument("--force", action="store_true",
                           help="also resend deliveries that may already have run on the platform "
                                "and whose Idempotency-Key it may have forgotten (may run twice)")

    routes = commands.add_parser("routes", help="list, pause and resume routes",
                                 description="Routes: list | pause | resume. A route is named "
                                             "by its trigger (or its `name`).")
    rt = routes.add_subparsers(dest="action", required=True, metavar="ACTION")
    client_options(rt.add_parser("list", help="each route's state, why, and its backlog"))
    pause = client_options(rt.add_parser("pause", help="stop sending on a route"))
    pause.add_argument("name", help="the route's trigger (or name)")
    pause.add_argument("--reason")
    client_options(rt.add_parser("resume", help="send on a route again")).add_argument(
        "name", help="the route's trigger (or name)")
    test = rt.add_parser("test", help="would a payload match a route, and what exact body would "
                                      "its trigger receive? (reads the config; sends nothing)")
    test.add_argument("name", help="the route's trigger (or name)")
    test.add_argument("payload", help="a file with the body the provider would send ('-': stdin)")
    test.add_argument("--event", help="the event type (default: the route's first event glob, "
                                      "when it is not a pattern)")
    test.add_argument("--content-type", default="application/json",
                      help="the body's content type (application/x-www-form-urlencoded for forms)")
    test.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                      help="a request header the expressions may read (repeatable)")
    test.add_argument("--query", default="", help="the query string, e.g. 'team=ops'")
    test.add_argument("--config", help="TOML config (default: $BRIDGE_CONFIG)")
    test.add_argument("--json", action="store_true", help="print the result as JSON")

    channels = commands.add_parser("channels", help="agents behind firewalls, and their lag",
                                   description="Channels: list.")
    ch = channels.add_subparsers(dest="action", required=True, metavar="ACTION")
    client_options(ch.add_parser("list", help="each channel's agents (connected, last seen, "
                                              "cursor) and what waits for them"))

    client_options(commands.add_parser(
        "sources", help="each source: events stored, the last one, and the last signature "
                        "failure with why (the first place to look after a 401)"))

    client_options(commands.add_parser("prune", help="forget events past the dedupe window"))

    from bridge.devtools.signers import SIGNERS

    sign = commands.add_parser(
        "sign", help="print the headers a provider would send for a body",
        description="Reads the body on standard input and prints the headers that sign it. "
                    "Send the body byte for byte (curl --data-binary @file, not -d, which "
                    "drops newlines): one byte more or less and the signature does not match.")
    sign.add_argument("--provider", required=True, choices=sorted(SIGNERS))
    sign.add_argument("--secret", default=os.environ.get("BRIDGE_SIGN_SECRET"),
                      help="default $BRIDGE_SIGN_SECRET")
    sign.add_argument("--url", default="", help="the URL signed by URL-signing providers")
    sign.add_argument("--json", action="store_true", help="print the headers as JSON")

    send = commands.add_parser("send", help="sign a payload and post it to a running bridge")
    send.add_argument("--source", required=True)
    send.add_argument("--config", help="config holding the source (default $BRIDGE_CONFIG)")
    send.add_argument("--url", default=os.environ.get("BRIDGE_URL", "http://127.0.0.1:8080"))
    send.add_argument("--json", action="store_true", help="print the answer as JSON")
    send.add_argument("file", help="the payload; - for standard input")


def event_filters(p: argparse.ArgumentParser) -> None:
    from bridge.core.models import EventState

    p.add_argument("--source")
    p.add_argument("--event-type")
    p.add_argument("--state", choices=[s.value for s in EventState])
    p.add_argument("--since", help="Unix time or ISO 8601 date")
    p.add_argument("--until", help="Unix time or ISO 8601 date")
    p.add_argument("--key", help="text in the idempotency key")


def run(args: argparse.Namespace, extra: dict[tuple[str, str | None], Any] | None = None) -> int:
    try:
        handler = {**HANDLERS, **(extra or {})}[(args.command, getattr(args, "action", None))]
        code: int = handler(args)
        return code
    except OpsError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return EXIT_ERROR


def call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, headers=headers,
                                 timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {args.url}: {exc.__class__.__name__}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400:
        error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = error.get("message") or response.text[:200]
        raise OpsError(f"{response.status_code} {error.get('code', '')}: {message}".replace(
            "  ", " "))
    return data


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)]).rstrip()


def _cell(value: Any) -> str:
    if isinstance(value, float) and value > 1e9:
        return iso(value) or "-"
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def output(args: argparse.Namespace, data: Any, rows: Sequence[dict[str, Any]] | None = None,
           columns: Sequence[str] = ()) -> int:
    if args.json or rows is None:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(table(rows, columns))
    return EXIT_OK


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int | None = None, quiet: bool = False) -> None:
        self.label, self.total, self.done = label, total, 0
        self.tty = sys.stderr.isatty()
        self.quiet = quiet

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.quiet:
            return
        if self.total:
            filled = int(30 * self.done / max(self.total, 1))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done}"
        end = "\r" if self.tty else "\n"
        print(f"{self.label} {bar}", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _filters(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = getattr(args, name.replace("-", "_"), None)
        if value is not None:
            out[name.replace("-", "_")] = value
    return out


def events_list(args: argparse.Namespace) -> int:
    params = _filters(args, ("source", "event-type", "state", "since", "until", "key", "cursor",
                             "limit"))
    data = call(args, "GET", "/admin/events", params=params)
    code = output(args, data, data["events"], ("id", "received_at", "source", "event_type",
                                               "state", "workflows", "idempotency_key"))
    if data.get("next_cursor") and not args.json:
        print(f"(more: --cursor {data['next_cursor']})", file=sys.stderr)
    return code


def events_show(args: argparse.Namespace) -> int:
    data = call(args, "GET", f"/admin/events/{args.id}")
    if args.json:
        return output(args, data)
    for key in ("id", "source", "provider", "event_type", "idempotency_key", "state"):
        print(f"{key:16} {data.get(key)}")
    print(f"{'received_at':16} {_cell(data.get('received_at'))}")
    print("\ndeliveries:")
    print(table(data["deliveries"], ("id", "trigger", "status", "attempts", "execution_id",
                                     "last_error")))
    for delivery in data["deliveries"]:
        if delivery.get("waiting"):
            print(f"  {delivery['id']} waiting: {delivery['waiting']}")
    for skipped in data.get("filtered") or []:
        print(f"  route {skipped['route']} did not take it: {skipped['reason']}")
    if data.get("executions"):
        print("\nexecutions:")
        print(table(data["executions"], ("id", "trigger", "status", "completed_at", "error")))
    if data.get("callbacks"):
        print("\ncallbacks:")
        print(table(data["callbacks"], ("id", "url", "status", "attempts", "last_error")))
    return EXIT_OK


def events_replay(args: argparse.Namespace) -> int:
    if args.id:
        data = call(args, "POST", f"/admin/events/{args.id}/replay")
        return output(args, data, [data], ("event_id", "replayed"))
    filters = _filters(args, ("source", "event-type", "state", "since", "until", "key"))
    if not filters:
        raise OpsError("name an event id, or at least one filter to replay every match")
    ids: list[str] = []
    cursor = None
    while True:  # gather the matching events, then replay them one by one with progress
        page = call(args, "GET", "/admin/events", params={**filters, "limit": 500,
                                                           **({"cursor": cursor} if cursor else {})})
        ids += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    progress = Progress("replaying", len(ids))
    replayed = 0
    for event_id in ids:
        replayed += call(args, "POST", f"/admin/events/{event_id}/replay")["replayed"]
        progress.advance()
    progress.close()
    data = {"events": len(ids), "replayed": replayed}
    return output(args, data, [data], ("events", "replayed"))


def dead_list(args: argparse.Namespace) -> int:
    data = call(args, "GET", "/admin/dead-letters",
                params=_filters(args, ("route", "source", "cursor", "limit")))
    return output(args, data, data["dead_letters"], ("id", "source", "route", "attempts",
                                                     "last_error"))


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    if args.ids:
        return {"ids": args.ids}
    if args.all:
        return {"all": True, **_filters(args, ("route", "source"))}
    raise OpsError("name delivery ids, or --all")


def dead_redrive(args: argparse.Namespace) -> int:
    body = {**_selection(args), **({"force": True} if args.force else {})}
    data = call(args, "POST", "/admin/dead-letters/redrive", json=body)
    if data.get("warning") and not args.json:
        print(f"warning: {data['warning']}", file=sys.stderr)
    elif args.force and not args.json:
        print("warning: forced: deliveries that may already have run on the platform were sent "
              "again; their workflows may run twice", file=sys.stderr)
    return output(args, data, [data], ("redriven", "held"))


def dead_discard(args: argparse.Namespace) -> int:
    data = call(args, "POST", "/admin/dead-letters/discard",
                json={**_selection(args), "reason": args.reason})
    return output(args, data, [data], ("discarded",))


def routes_list(args: argparse.Namespace) -> int:
    data = call(args, "GET", "/admin/routes")
    return output(args, data, data["routes"], ("name", "trigger", "state", "pending", "reason"))


def sources_list(args: argparse.Namespace) -> int:
    data = call(args, "GET", "/admin/sources")
    rows = [{"name": s["name"], "provider": s["provider"], "events": s["events"],
             "last_event": s.get("last_received_at") or "-",
             "last_failure": (s.get("last_failure") or {}).get("at") or "-",
             "why": (s.get("last_failure") or {}).get("reason", "")}
            for s in data["sources"]]
    return output(args, data, rows, ("name", "provider", "events", "last_event",
                                     "last_failure", "why"))


def channels_list(args: argparse.Namespace) -> int:
    data = call(args, "GET", "/admin/channels")
    rows = []
    for channel in data["channels"]:
        agents = channel["agents"] or [{}]
        for agent in agents:
            rows.append({
                "channel": channel["name"], "lag_events": channel["lag"]["events"],
                "lag_seconds": channel["lag"]["seconds"], "agent": agent.get("agent", "-"),
                "connected": {True: "yes", False: "no"}.get(agent.get("connected"), "-"),
                "last_seen": agent.get("last_seen") or "-",
                "cursor": agent.get("cursor") or "-"})
    return output(args, data, rows, ("channel", "lag_events", "lag_seconds", "agent",
                                     "connected", "last_seen", "cursor"))


def routes_test(args: argparse.Namespace) -> int:
    """Run a route's filter and input mapping over a payload, offline: the same code the bridge
    runs when it accepts an event."""
    from urllib.parse import parse_qsl

    from bridge.config import load_sources
    from bridge.core.errors import ConfigError
    from bridge.core.models import VerifiedEvent, new_id
    from bridge.ingest import routing as outbox
    from bridge.ingest.filters import null_fields

    path = args.config or os.environ.get("BRIDGE_CONFIG")
    if not path:
        raise OpsError("give --config (or $BRIDGE_CONFIG): the route is read there")
    try:
        sources, routes = load_sources(path)
    except ConfigError as exc:
        raise OpsError("invalid config: " + "; ".join(exc.problems)) from None
    found = [r for r in routes if args.name in (r.name, r.trigger)]
    if not found:
        names = ", ".join(r.trigger for r in routes) or "none"
        raise OpsError(f"no route named {args.name!r} in {path} (routes: {names})")
    route = found[0]
    event_type = args.event
    if event_type is None:
        if any(ch in route.events[0] for ch in "*?["):
            raise OpsError(f"route {route.name!r} takes {', '.join(route.events)}: "
                           "give --event TYPE")
        event_type = route.events[0]
    body = _read_payload(args.payload)
    headers = {"content-type": args.content_type}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise OpsError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip().lower()] = value.strip()
    provider = next((s.provider for s in sources if s.name == route.source), "none")
    event = VerifiedEvent(new_id(), route.source, provider, event_type,
                          f"{route.source}:test", time.time(), headers, body)
    matches = outbox.matching([route], route.source, event_type)
    result: dict[str, Any] = {"route": route.name, "trigger": route.trigger,
                              "event_type": event_type}
    if not matches:
        result.update(match=False, reason=f"event type {event_type!r} matches none of "
                                          f"{', '.join(route.events)}")
    else:
        taken, skipped = outbox.decide(event, matches, dict(parse_qsl(args.query)))
        if skipped:
            result.update(match=False, reason=skipped[0][1])
        else:
            delivery = outbox.render(event, route, 255, built=taken[0][1])
            result.update(match=True, content_type=delivery.content_type,
                          body=delivery.body.decode("utf-8", "replace"))
            if route.input is not None:
                result["null_fields"] = null_fields(route.input, json.loads(delivery.body))
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif result["match"]:
        print(f"match: route {route.name} would call trigger {route.trigger} "
              f"({result['content_type']}) with:")
        print(result["body"])
        for field in result.get("null_fields", ()):
            print(f"warning: {field} came out null: check its expression against this payload "
                  "(a misspelt field? JMESPath slices only arrays: for text use split, "
                  "trim_prefix or replace; see docs/routes.md)", file=sys.stderr)
    else:
        print(f"no match: {result['reason']}")
    return EXIT_OK if result["match"] else EXIT_ERROR


def _read_payload(file: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise OpsError(f"cannot read {file}: {exc.strerror}") from None


def routes_pause(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    data = call(args, "POST", f"/admin/routes/{args.name}/pause", json=body)
    return output(args, data, [data], ("name", "state", "reason"))


def routes_resume(args: argparse.Namespace) -> int:
    data = call(args, "POST", f"/admin/routes/{args.name}/resume")
    return output(args, data, [data], ("name", "state"))


def deliveries_retry(args: argparse.Namespace) -> int:
    data = call(args, "POST", f"/admin/deliveries/{args.id}/retry")
    if data.get("resumed") and not args.json:
        print(f"route {data['route']} resumed", file=sys.stderr)
    return output(args, data, [data], ("id", "route", "retrying"))


def prune(args: argparse.Namespace) -> int:
    progress = Progress("pruning", quiet=not sys.stderr.isatty())  # the total says it after
    total = 0
    while True:
        data = call(args, "POST", "/admin/prune", json={"limit": 1000})
        total += data["removed"]
        progress.advance(data["removed"])
        if not data["more"]:
            break
    progress.close()
    return output(args, {"removed": total}, [{"removed": total}], ("removed",))


def sign(args: argparse.Namespace) -> int:
    from bridge.devtools.signers import SIGNERS

    if args.provider not in SIGNERS:
        raise OpsError(f"no signer for {args.provider!r}; one of: {', '.join(sorted(SIGNERS))}")
    if not args.secret:
        raise OpsError("give --secret (or $BRIDGE_SIGN_SECRET)")
    body = sys.stdin.buffer.read()
    try:
        headers = SIGNERS[args.provider](body, args.secret, int(time.time()), args.url)
    except ValueError as exc:
        raise OpsError(f"cannot sign: {exc}") from None
    if args.json:
        print(json.dumps(headers, indent=2))
        return EXIT_OK
    for name, value in headers.items():
        print(f"{name}: {value}")
    return EXIT_OK


def source_of(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...]]:
    """The named source of the config (`--config` or $BRIDGE_CONFIG) and its routes, reading
    nothing else of the config."""
    from bridge.config import load_sources
    from bridge.core.errors import ConfigError

    path = args.config or os.environ.get("BRIDGE_CONFIG")
    if not path:
        raise OpsError("give --config (or $BRIDGE_CONFIG): the source's secret is read there")
    try:
        sources, routes = load_sources(path)
    except ConfigError as exc:
        raise OpsError(f"invalid config: {exc}") from None
    for source in sources:
        if source.name == args.source:
            if not source.secrets and source.provider != "none":
                raise OpsError(f"source {source.name!r} has no secret to sign with")
            return source, tuple(r for r in routes if r.source == source.name)
    names = ", ".join(s.name for s in sources) or "none"
    raise OpsError(f"no source named {args.source!r} in {path} (sources: {names})")


def send(args: argparse.Namespace) -> int:
    from bridge.devtools.signers import SIGNERS

    source, _ = source_of(args)
    if source.provider not in SIGNERS:
        raise OpsError(f"cannot sign for provider {source.provider!r}")
    body = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
    url = f"{args.url.rstrip('/')}/hooks/{source.name}"
    headers = SIGNERS[source.provider](body, source.secrets[0].reveal(), int(time.time()), url)
    try:
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json",
                                                          **headers}, timeout=30)
    except httpx.HTTPError as exc:
        raise Unreachable(f"cannot reach {args.url}: {exc.__class__.__name__}") from None
    if args.json:
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        print(json.dumps({"status": response.status_code, "answer": answer}, indent=2))
    else:
        print(f"{response.status_code} {response.text}")
    return EXIT_OK if response.status_code < 300 else EXIT_ERROR


def _read(file: str) -> bytes:
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise OpsError(f"cannot read {file}: {exc.strerror}") from None


HANDLERS = {
    ("events", "list"): events_list, ("events", "show"): events_show,
    ("events", "replay"): events_replay,
    ("dead-letters", "list"): dead_list, ("dead-letters", "redrive"): dead_redrive,
    ("dead-letters", "discard"): dead_discard,
    ("deliveries", "retry"): deliveries_retry,
    ("routes", "list"): routes_list, ("routes", "pause"): routes_pause,
    ("routes", "resume"): routes_resume, ("routes", "test"): routes_test,
    ("channels", "list"): channels_list,
    ("prune", None): prune, ("sources", None): sources_list, ("sign", None): sign, ("send", None): send,
}
