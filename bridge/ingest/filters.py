"""Route filters and input mapping: JMESPath expressions over the accepted event.

A route may carry a `filter` (the route takes the event only when it is true) and an `input`
(a table of expressions that builds the trigger's JSON body). Both are JMESPath, a query
language made for JSON with a specification, a compliance suite and a maintained Python
implementation: no `eval`, no user code, nothing an expression can reach beyond the document it
is given. Expressions are compiled once, when the config loads; a bad one is a config error that
names the route and the position.

Expressions see one document:

    body        the parsed body: JSON, or a form (`a=1&b=2` -> {"a": "1", "b": "2"}; a repeated
                field is a list); null when it is neither
    event_type  the event type the provider gave
    headers     the stored request headers (lower-case names; credentials are never stored)
    query       the query string, as a form
    source      the source's name

Truthiness is JMESPath's: false, null, "", [] and {} are false; anything else is true. A missing
field is null, not an error. For a batch (SendGrid, HubSpot: one request, many events) each item
is filtered and mapped on its own, as `body`; the route's body is then the list of the items it
took (mapped, with `input`).

Cost is bounded: expressions are at most 4 KiB, and a body above 1 MiB is not evaluated (the
filter counts as not matched, with that reason). Evaluation runs on the accept path, so an
event's filters and mappings are decided, and its deliveries rendered, before it is stored:
every retry sends the same bytes, and a reload changes only events accepted after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from jmespath import exceptions as jmespath_errors

from bridge.core import codec
from bridge.core.expressions import Expression
from bridge.ingest.providers.base import parse_json

MAX_BODY = 1024 * 1024
FORM = "application/x-www-form-urlencoded"


def parse_body(body: bytes, content_type: str) -> Any:
    """JSON, or a form, or None. Never raises: a hostile body is only ever null."""
    if len(body) > MAX_BODY:
        return None
    parsed = parse_json(body)
    if parsed is not None:
        return parsed
    if content_type.split(";", 1)[0].strip().lower() == FORM:
        return form(body.decode("utf-8", "replace"))
    return None


def form(text: str) -> dict[str, Any] | None:
    """A form as a table; None past 10,000 fields. Linear in the fields: each value is
    appended to its key's list once, and a key given once is then its value alone."""
    grouped: dict[str, list[str]] = {}
    try:
        fields = parse_qsl(text, keep_blank_values=True, max_num_fields=10000)
    except ValueError:
        return None
    for key, value in fields:
        grouped.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in grouped.items()}


def document(source: str, event_type: str, headers: Mapping[str, str], body: bytes,
             query: Mapping[str, Any]) -> dict[str, Any]:
    return {"body": parse_body(body, headers.get("content-type", "")),
            "event_type": event_type, "headers": dict(headers), "query": dict(query),
            "source": source}


def truthy(value: Any) -> bool:
    return not (value is None or value is False or value in ("", [], {}))


def mapped(mapping: Mapping[str, Any], doc: Any) -> dict[str, Any]:
    return {key: mapped(item, doc) if isinstance(item, dict) else item.search(doc)
            for key, item in mapping.items()}


def null_fields(mapping: Mapping[str, Any], built: Any, prefix: str = "input") -> list[str]:
    """The keys of an `input` mapping whose expression gave null in `built` (the body it made),
    as `input.key.sub`: most often an expression that cannot match the event (a misspelt
    field, or a slice of a string, which JMESPath gives as null), which the operator should
    hear about rather than find at the workflow. For a batch, a key null in any item."""
    if isinstance(built, list):
        found: list[str] = []
        for item in built:
            found += [f for f in null_fields(mapping, item, prefix) if f not in found]
        return found
    out: list[str] = []
    for key, item in mapping.items():
        value = built.get(key) if isinstance(built, dict) else None
        if isinstance(item, Mapping):
            out += null_fields(item, value, f"{prefix}.{key}")
        elif value is None:
            out.append(f"{prefix}.{key}")
    return out


def null_fields_of(mapping: Mapping[str, Any], doc: dict[str, Any]) -> list[str]:
    """`null_fields` of the body `mapping` builds from `doc`; none when it cannot build one
    (the route's decision says why)."""
    try:
        return null_fields(mapping, mapped(mapping, doc))
    except (jmespath_errors.JMESPathError, RecursionError, TypeError, ValueError):
        return []


@dataclass(frozen=True)
class Decision:
    """What a route makes of one event: taken or not (and why not), and the body it sends when
    it builds one (`input`, or a batch narrowed to the items it took)."""

    taken: bool
    reason: str | None = None
    body: bytes | None = None


def decide(doc: dict[str, Any], body_size: int, batch: bool, filter_: Expression | None,
           mapping: Mapping[str, Any] | None) -> Decision:
    if filter_ is None and mapping is None:
        return Decision(True)
    if body_size > MAX_BODY:
        return Decision(False, f"body over {MAX_BODY // 1024} KiB: the filter and input "
                               "mapping were not evaluated")
    try:
        if batch and isinstance(doc["body"], list):
            taken = []
            for item in doc["body"]:
                one = {**doc, "body": item}
                if filter_ is None or truthy(filter_.search(one)):
                    taken.append(mapped(mapping, one) if mapping is not None else item)
            if not taken:
                return Decision(False, "filter did not match any item")
            return Decision(True, body=codec.dumps(taken))
        if filter_ is not None and not truthy(filter_.search(doc)):
            return Decision(False, "filter did not match")
        return Decision(True, body=codec.dumps(mapped(mapping, doc)) if mapping else None)
    except (jmespath_errors.JMESPathError, RecursionError, TypeError, ValueError) as exc:
        # A runtime type error (a function given the wrong type of value): the event does not
        # fit the route's expression, which is the route not matching, not a failure.
        return Decision(False, f"expression failed on this event ({exc.__class__.__name__})")
