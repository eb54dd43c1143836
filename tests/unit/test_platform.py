"""Pure functions: the retry schedule and classify()."""

from __future__ import annotations

import json
import random

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.core.models import Dead, Delivered, Paused, RetryLater
from bridge.core.retry import RetryPolicy, next_delay, parse_retry_after
from bridge.delivery.platform import classify
from bridge.ingest.routing import delivery_key
from bridge.web.client import BadHeader, Blocked, Broken, ConnectFailed, HttpError, Reply, Timeout

POLICY = RetryPolicy(base=5, factor=2, cap=3600, max_age=3 * 86400, jitter="none")


@pytest.mark.parametrize(("failures", "delay"), [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600),
                                                 (30, 3600)])
def test_backoff_doubles_to_the_cap(failures: int, delay: float) -> None:
    assert next_delay(failures, POLICY, random.Random(1)) == delay


def test_full_jitter_stays_within_bounds_and_is_seeded() -> None:
    policy = RetryPolicy(base=5, factor=2, cap=3600, max_age=3 * 86400, jitter="full")
    for failures in range(1, 20):
        ceiling = min(3600, 5 * 2 ** (failures - 1))
        delays = [next_delay(failures, policy, random.Random(seed)) for seed in range(50)]
        assert all(d is not None and 2.5 <= d <= max(ceiling, 2.5) for d in delays)
    assert next_delay(5, policy, random.Random(7)) == next_delay(5, policy, random.Random(7))


def test_retry_after_is_a_floor_and_max_age_ends_it() -> None:
    assert next_delay(1, POLICY, random.Random(), retry_after=120) == 120
    assert next_delay(1, POLICY, random.Random(), age=3 * 86400 - 1) is None


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), ("0", 0.0), (None, None),
                                                ("soon", None),
                                                ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=1445412480.0) == seconds


def response(status: int, body: object = None, **headers: str) -> Reply:
    content = b"" if body is None else json.dumps(body).encode()
    return Reply(status, CIMultiDictProxy(CIMultiDict(headers)), content)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(response(202, {"execution_id": "e1"}), Delivered("e1", 202), id="202-guide"),
        pytest.param(response(200, {"id": "e2"}), Delivered("e2", 200), id="200-id"),
        pytest.param(response(201, {"executionId": 7}), Delivered("7", 201), id="camel"),
        pytest.param(response(204), Delivered(None, 204), id="no-body"),
        pytest.param(response(400, {"detail": "bad"}), Dead("400: bad", 400), id="400-detail"),
        pytest.param(response(422, {"error": {"code": "agent_archived", "message": "gone"}}),
                     Dead("422 agent_archived: gone", 422), id="422-error"),
        pytest.param(response(409, {"error": {"code": "conflict", "message": "m"}}),
                     Dead("idempotency conflict: 409 conflict: m", 409), id="409"),
        pytest.param(response(401, {"detail": "no key"}), Paused("401: no key", 401), id="401"),
        pytest.param(response(403, {"detail": "role"}), Paused("403: role", 403), id="403"),
        pytest.param(response(404, {"detail": "nope"}), Paused("404: nope", 404), id="404"),
        pytest.param(response(503, {"detail": "down"}, **{"Retry-After": "7"}),
                     RetryLater("503: down", 503, 7.0, reached=True), id="503"),
        pytest.param(response(500, {"error": {"code": "internal", "message": "x"}}),
                     RetryLater("500 internal: x", 500, None, reached=True), id="500"),
        pytest.param(response(429, {"detail": "slow"}, **{"Retry-After": "2"}),
                     RetryLater("429: slow", 429, 2.0, counts_as_failure=False), id="429"),
        pytest.param(response(429, {"detail": "slow"}, **{"X-RateLimit-Reset": "1030"}),
                     RetryLater("429: slow", 429, 30.0, counts_as_failure=False), id="429-reset"),
        # An answer that was lost may have been preceded by a run: `reached`.
        pytest.param(Timeout("timeout (SocketTimeoutError)", "http://p/x"),
                     RetryLater("timeout (SocketTimeoutError) to http://p/x", reached=True),
                     id="timeout"),
        pytest.param(Broken("connection error (ServerDisconnectedError)"),
                     RetryLater("connection error (ServerDisconnectedError)", reached=True),
                     id="broken"),
        # Never connected: provably not run, keeps retrying.
        pytest.param(ConnectFailed("connection failed (ClientConnectorError)", "http://p/x"),
                     RetryLater("connection failed (ClientConnectorError) to http://p/x"),
                     id="refused"),
        pytest.param(Blocked("h resolves to a non-public address"),
                     RetryLater("h resolves to a non-public address"), id="blocked"),
        pytest.param(BadHeader("refused to send header 'Idempotency-Key'"),
                     Dead("refused to send header 'Idempotency-Key'"), id="bad-header"),
        pytest.param(response(202, {"execution_id": "e1"}).__class__(
            202, CIMultiDictProxy(CIMultiDict()), b'{"execution_id": "e', truncated=True),
            Delivered(None, 202), id="202-cut"),
    ],
)
def test_classify(result: Reply | HttpError, expected: object) -> None:
    assert classify(result, now=1000.0) == expected


def test_long_delivery_keys_are_hashed_to_fit() -> None:
    assert delivery_key("gh:abc", "t", 255) == "gh:abc:t"
    long = delivery_key("x" * 300, "t", 64)
    assert len(long) <= 64 and long.startswith("sha256:")
    assert long == delivery_key("x" * 300, "t", 64)
