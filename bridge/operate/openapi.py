"""The admin API's contract: every parameter, request body and answer, as OpenAPI 3.1.

This document is served at `/admin/openapi.json` and is also what the admin handlers check their
JSON bodies against (`check_body`, with the `jsonschema` library), so the contract and the
behaviour cannot drift apart. The suite runs a property-based fuzzer (schemathesis, every check)
against a real server with this document: an answer it does not declare, or a 500, fails it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from jsonschema import Draft202012Validator

from bridge.core.errors import BadRequest
from bridge.core.models import EventState, ExecutionStatus

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_BULK = 10_000

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
}
OBJECT = {"type": "object"}
STATES = [state.value for state in EventState]
WORKFLOWS = [status.value for status in ExecutionStatus]
TIME = {"type": "number", "description": "Unix time in seconds (an ISO 8601 date with a zone "
                                         "is accepted too)"}
# No text the bridge takes in a path or query may hold a NUL (no store can keep one): such a
# request is answered 400 before it reaches the API, and the document says so.
NO_NUL = "^[^\x00]*$"
NAME = {"type": "string", "maxLength": 200, "pattern": NO_NUL}

BODIES: dict[str, dict[str, Any]] = {
    "replay": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "source": NAME, "event_type": NAME, "state": {"enum": STATES}, "key": NAME,
            "since": TIME, "until": TIME,
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_BULK},
        },
    },
    "redrive": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "ids": {"type": "array", "items": NAME, "maxItems": MAX_BULK},
            "all": {"type": "boolean"}, "route": NAME, "source": NAME,
            "force": {"type": "boolean", "description": "also resend deliveries that may "
                      "already have run on the platform and whose Idempotency-Key it may "
                      "have forgotten (they may run twice)"},
        },
        "anyOf": [{"required": ["ids"]},
                  {"required": ["all"], "properties": {"all": {"const": True}}}],
    },
    "discard": {
        "type": "object", "additionalProperties": False, "required": ["reason"],
        "properties": {
            "ids": {"type": "array", "items": NAME, "maxItems": MAX_BULK},
            "all": {"type": "boolean"}, "route": NAME, "source": NAME,
            "reason": {"type": "string", "minLength": 1, "maxLength": 1000,
                       "pattern": r"\S"},
        },
        "anyOf": [{"required": ["ids"]},
                  {"required": ["all"], "properties": {"all": {"const": True}}}],
    },
    "pause": {
        "type": "object", "additionalProperties": False,
        "properties": {"reason": {"type": "string", "maxLength": 1000}},
    },
    "prune": {
        "type": "object", "additionalProperties": False,
        "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": MAX_BULK}},
    },
}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in BODIES.items()}
# Query parameters: (name, schema).
QUERY: dict[str, dict[str, Any]] = {
    "source": NAME, "event_type": NAME, "state": {"type": "string", "enum": STATES},
    "workflow": {"type": "string", "enum": WORKFLOWS,
                 "description": "only events with an execution in this state"},
    "since": TIME, "until": TIME, "key": NAME, "route": NAME,
    "cursor": {"type": "string", "maxLength": 64, "pattern": NO_NUL},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
}


_QUERY_VALIDATOR = Draft202012Validator({"type": "object", "properties": QUERY})


def check_query(params: Mapping[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """The query parameters `names` converted to their schema's type and checked against it;
    BadRequest naming the first that does not fit. Times may also be ISO 8601 dates."""
    out: dict[str, Any] = {}
    for name in names:
        raw = params.get(name)
        if raw is None:
            continue
        kind = QUERY[name].get("type")
        try:
            if kind == "integer":
                out[name] = int(raw)
            elif kind == "number":
                out[name] = _seconds(raw)
            else:
                out[name] = raw
        except ValueError:
            raise BadRequest(f"{name}: expected {_KINDS.get(str(kind), kind)}") from None
    error = next(iter(_QUERY_VALIDATOR.iter_errors(out)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "query"
        raise BadRequest(f"{where}: {_short(error.message)}")
    return out


_KINDS = {"integer": "an integer", "number": "a Unix time or an ISO 8601 date"}


def _seconds(raw: Any) -> float:
    """A Unix time, or an ISO 8601 date (UTC unless it names a zone)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def check_body(name: str, data: Any) -> dict[str, Any]:
    """`data` if it fits the body schema `name`; else BadRequest naming the first problem."""
    error = next(iter(sorted(_VALIDATORS[name].iter_errors(data), key=lambda e: e.path)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise BadRequest(f"{where}: {_short(error.message)}")
    assert isinstance(data, dict)
    return data


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:197] + "..."


def _answers(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "OK",
                                   "content": {"application/json": {"schema": ok}}}}
    for status in (*errors, 401, 429, 503):
        out[str(status)] = {"description": _REASONS[status],
                            "content": {"application/json": {"schema": ERROR}}}
    return out


_REASONS = {400: "Bad request: the message says which parameter", 401: "No valid admin token",
            429: "Too many failed authentications from this client (Retry-After says when)",
            404: "Not found", 503: "The store is unavailable (Retry-After says when to retry)"}


def _op(summary: str, ok: dict[str, Any], *errors: int, query: tuple[str, ...] = (),
        body: str | None = None, body_required: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                          "responses": _answers(ok, *errors)}
    if query:
        op["parameters"] = [{"name": q, "in": "query", "required": False, "schema": QUERY[q]}
                            for q in query]
    if body:
        op["requestBody"] = {"required": body_required, "content": {
            "application/json": {"schema": BODIES[body]}}}
    return op


def _raw(summary: str) -> dict[str, Any]:
    op = _op(summary, OBJECT, 404)
    op["responses"]["200"] = {"description": "OK", "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "pattern": NO_NUL}}


def _list(key: str) -> dict[str, Any]:
    return {"type": "object", "required": [key, "next_cursor"],
            "properties": {key: {"type": "array", "items": OBJECT},
                           "next_cursor": {"type": ["string", "null"]}}}


def _counts(*keys: str) -> dict[str, Any]:
    return {"type": "object", "required": list(keys),
            "properties": {k: {"type": "integer"} for k in keys}}


EVENT_FILTERS = ("source", "event_type", "state", "workflow", "route", "since", "until", "key",
                 "cursor", "limit")
DEAD_FILTERS = ("route", "source", "cursor", "limit")

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "webhook-bridge admin API", "version": "1", "description": (
        "Every time in an answer is ISO 8601 text in UTC with its zone, to the millisecond "
        "(`2026-12-07T23:19:00.123Z`), as the CLI and the logs print times. Times given in "
        "queries (`since`, `until`) may be Unix seconds or ISO 8601.")},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/admin/events": {"get": _op("List events, newest first", _list("events"), 400,
                                     query=EVENT_FILTERS)},
        "/admin/events/{id}": {"parameters": [_path("id")], "get": _op(
            "One event with its deliveries, attempts, executions and callbacks",
            {"type": "object", "required": ["id", "deliveries"]}, 404)},
        "/admin/events/{id}/body": {"parameters": [_path("id")], "get": _raw(
            "The event's body, byte for byte as it arrived (to resend it signed)")},
        "/admin/events/{id}/replay": {"parameters": [_path("id")], "post": _op(
            "Replay one event to its routes, with new idempotency keys",
            {"type": "object", "required": ["event_id", "replayed"]}, 404)},
        "/admin/events/replay": {"post": _op(
            "Replay every event matching a filter", _counts("events", "replayed"), 400,
            body="replay")},
        "/admin/deliveries/{id}/retry": {"parameters": [_path("id")], "post": _op(
            "Send a pending delivery now instead of at the end of its backoff; its route, if "
            "paused, is resumed", {"type": "object", "required": ["id", "route", "resumed"]},
            404)},
        "/admin/dead-letters": {"get": _op("List dead deliveries", _list("dead_letters"), 400,
                                           404, query=DEAD_FILTERS)},
        "/admin/dead-letters/redrive": {"post": _op(
            "Redrive dead deliveries; those that may already have run past the platform's "
            "key lifetime only with force; ids may name deliveries or events",
            _counts("redriven"), 400, 404, body="redrive")},
        "/admin/dead-letters/discard": {"post": _op(
            "Discard dead deliveries; ids may name deliveries or events", _counts("discarded"),
            400, 404, body="discard")},
        "/admin/routes": {"get": _op("Routes and their state", {
            "type": "object", "required": ["routes"],
            "properties": {"routes": {"type": "array", "items": OBJECT}}})},
        "/admin/routes/{name}/pause": {"parameters": [_path("name")], "post": _op(
            "Pause a route", {"type": "object", "required": ["name", "state"]}, 400, 404,
            body="pause", body_required=False)},
        "/admin/routes/{name}/resume": {"parameters": [_path("name")], "post": _op(
            "Resume a route", {"type": "object", "required": ["name", "state"]}, 404)},
        "/admin/channels": {"get": _op("Channels: their agents (connected, last seen, cursor) "
                                       "and the lag of what waits for them", {
            "type": "object", "required": ["channels"],
            "properties": {"channels": {"type": "array", "items": OBJECT}}})},
        "/admin/sources": {"get": _op("Sources with counts and last verification failure", {
            "type": "object", "required": ["sources"],
            "properties": {"sources": {"type": "array", "items": OBJECT}}})},
        "/admin/prune": {"post": _op(
            "Forget events older than the dedupe window",
            {"type": "object", "required": ["removed", "more"]}, 400, body="prune",
            body_required=False)},
        "/admin/openapi.json": {"get": _op("This document", OBJECT)},
    },
}
