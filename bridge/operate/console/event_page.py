"""What the console's event page shows of one event: its timeline (received, routed, each
attempt, the execution, each callback, in order), its body as text, and the commands that
resend it signed. Pure functions of the stored event and the config."""

from __future__ import annotations

import base64
import datetime
import json
import shlex
from typing import Any
from urllib.parse import parse_qsl

from bridge.devtools.signers import SIGNERS
from bridge.store.records import EventRecord

MAX_SHOWN_BODY = 256 * 1024  # larger bodies are shown cut, and can be downloaded whole


def _when(value: str | None) -> float | None:
    """The platform's ISO times, as epoch seconds (for ordering the timeline)."""
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def timeline(event: EventRecord, reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Everything that happened to the event, in order: received (its signature verified, and
    stored: nothing is stored otherwise), routes that did not take it, each delivery attempt,
    the executions' states and each callback attempt."""
    steps: list[dict[str, Any]] = [{
        "at": event.received_at, "kind": "received", "state": "ok",
        "text": f"Received from {event.source} ({event.provider}), signature verified, stored "
                f"as {event.event_type}"}]
    for skipped in event.filtered:
        steps.append({"at": event.received_at, "kind": "filtered", "state": "info",
                      "text": f"Not taken by route {skipped.route}: {skipped.reason}"})
    for d in event.deliveries:
        label = "Replayed" if d.replay_of else "Queued"
        steps.append({"at": d.created_at, "kind": "delivery", "state": "info",
                      "text": f"{label} for trigger {d.trigger} (route {d.route})"
                              + (f" via channel {d.channel}" if d.channel else "")})
        for n, a in enumerate(d.attempt_log, start=1):
            ok = a.outcome == "delivered"
            steps.append({"at": a.started_at, "kind": "attempt", "state": "ok" if ok else "bad",
                          "text": f"Attempt {n} to {d.trigger}: {a.outcome}"
                                  + (f", HTTP {a.status_code}" if a.status_code else "")
                                  + f", {a.latency_ms:.0f} ms"
                                  + (f": {a.error}" if a.error else ""),
                          "delivery": d.id})
        if d.id in reasons:
            steps.append({"at": d.next_attempt_at if d.status == "pending" else d.updated_at,
                          "kind": "waiting", "state": "wait", "text": reasons[d.id]})
        elif d.status in ("dead", "discarded"):
            steps.append({"at": d.updated_at, "kind": "dead", "state": "bad",
                          "text": f"Delivery {d.status}: {d.last_error or ''}"})
        elif d.status == "superseded":
            steps.append({"at": d.updated_at, "kind": "superseded", "state": "info",
                          "text": "Superseded: a replay of this route was delivered (a redrive "
                                  "would run the workflow again)"})
    for x in event.executions:
        started = _when(x.started_at)
        if started is not None:
            steps.append({"at": started, "kind": "execution", "state": "info",
                          "text": f"Execution {x.id} started on {x.trigger}"})
        ended = _when(x.completed_at)
        state = "ok" if x.status == "completed" else "wait" if x.running else "bad"
        steps.append({"at": ended or started or event.received_at, "kind": "execution",
                      "state": state, "text": f"Execution {x.id}: {x.status}"
                      + (f": {x.error}" if x.error else "")})
    for c in event.callbacks:
        for n, a in enumerate(c.attempt_log, start=1):
            steps.append({"at": a.started_at, "kind": "callback",
                          "state": "ok" if a.outcome == "delivered" else "bad",
                          "text": f"Callback attempt {n} to {c.url}: {a.outcome}"
                                  + (f", HTTP {a.status_code}" if a.status_code else "")
                                  + (f": {a.error}" if a.error else "")})
        if c.status != "delivered":
            steps.append({"at": c.updated_at, "kind": "callback",
                          "state": "bad" if c.status == "dead" else "wait",
                          "text": f"Callback to {c.url}: {c.status}"
                                  + (f": {c.last_error}" if c.last_error else "")})
    steps.sort(key=lambda s: s["at"])
    return steps


def show_body(event: EventRecord) -> dict[str, Any]:
    """The body as people read it: pretty JSON, a form's fields, text, or base64."""
    raw = event.body[:MAX_SHOWN_BODY]
    cut = len(event.body) > MAX_SHOWN_BODY
    content_type = str(event.headers.get("content-type", "")).lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if not cut:
            return {"kind": "base64", "text": base64.b64encode(raw).decode(), "cut": cut}
        text = raw.decode("utf-8", "replace")
    if "x-www-form-urlencoded" in content_type:
        return {"kind": "form", "fields": parse_qsl(text, keep_blank_values=True)[:500],
                "cut": cut}
    if not cut:
        try:
            return {"kind": "json", "text": json.dumps(json.loads(text), indent=2,
                                                       ensure_ascii=False), "cut": cut}
        except (ValueError, RecursionError):
            pass
    return {"kind": "text", "text": text, "cut": cut}


def resend_command(event: EventRecord, config: Any, base: str) -> dict[str, Any]:
    """Shell commands that resend the stored body, signed as its provider signs: the body
    fetched byte for byte from the admin API, the signature made by `bridge sign` from the
    secret in the operator's environment. No secret or signature value is in them."""
    source = next((s for s in config.sources if s.name == event.source), None)
    provider = source.provider if source is not None else event.provider
    url = f"{base}/hooks/{event.source}"
    file = f"event-{event.id}.body"
    fetch = (f"curl -sS -H \"Authorization: Bearer $BRIDGE_ADMIN_TOKEN\" -o {shlex.quote(file)}"
             f" {shlex.quote(f'{base}/admin/events/{event.id}/body')}")
    signer = SIGNERS.get(provider)
    signed: set[str] = set()
    if signer is not None:
        try:  # which headers it writes: asked with a throwaway secret, never the real one
            signed = {h.lower() for h in signer(b"{}", "whsec_" + "A" * 32, 0, url)}
        except ValueError:
            signer = None
    keep = [(k, v) for k, v in event.headers.items()
            if k.lower() not in signed and k.lower() not in ("content-length", "host",
                                                             "user-agent", "accept",
                                                             "accept-encoding", "connection")]
    headers = " ".join(f"-H {shlex.quote(f'{k}: {v}')}" for k, v in keep)
    lines = [fetch]
    if signer is not None:
        lines.append(f"readarray -t SIGNED < <(bridge sign --provider {shlex.quote(provider)}"
                     f" --url {shlex.quote(url)} < {shlex.quote(file)})")
        lines.append(f"curl -sS {shlex.quote(url)} --data-binary @{shlex.quote(file)} "
                     f"{headers} \"${{SIGNED[@]/#/-H}}\"")
    else:
        lines.append(f"curl -sS {shlex.quote(url)} --data-binary @{shlex.quote(file)} {headers}")
    return {"lines": lines, "provider": provider, "signed": signer is not None,
            "secret_env": "BRIDGE_SIGN_SECRET"}

