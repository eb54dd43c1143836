"""One reader per table of the file (`[server]`, `[[sources]]`, ...): typed values, defaults, and
the checks that need only that table."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from bridge import signing
from bridge.config.model import (
    _CHANNEL_NAME,
    DAY,
    DEFAULT_DB_PATH,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE,
    DEFAULT_PORT,
    ENVELOPES,
    FORWARD_MAX_AGE,
    LEARNS_SECRET,
    LOG_LEVELS,
    MIN_DEDUPE_WINDOW,
    PROVIDERS,
    SOURCE_NAME,
    TRIGGER_NAME,
    AdminConfig,
    CallbacksConfig,
    ChannelConfig,
    EdgeConfig,
    EmulatorConfig,
    ForwarderConfig,
    PlatformConfig,
    RouteConfig,
    Secret,
    ServerConfig,
    SourceConfig,
    StoreConfig,
    TrackingConfig,
)
from bridge.config.reader import Section, is_http_url
from bridge.core.expressions import ExpressionError, compile_expression, compile_mapping
from bridge.core.retry import RetryPolicy
from bridge.web.server import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS


def server(s: Section) -> ServerConfig:
    cfg = ServerConfig(
        host=s.string("host", DEFAULT_HOST),
        port=s.integer("port", DEFAULT_PORT, minimum=0),
        public_url=s.url("public_url"),
        max_body_bytes=s.integer("max_body_bytes", DEFAULT_MAX_BODY, minimum=1),
        secret_key=s.secret("secret_key"),
        log_format=s.string("log_format", "json"),
        log_level=s.string("log_level", "info"),
        shutdown_timeout=s.duration("shutdown_timeout", 8.0),
        workers=s.integer("workers", 1, minimum=1),
        max_header_bytes=s.integer("max_header_bytes", DEFAULT_MAX_HEADER_BYTES, minimum=1024),
        max_headers=s.integer("max_headers", DEFAULT_MAX_HEADERS, minimum=8),
        max_connections=s.integer("max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1),
        forwarded_allow_ips=s.strings("forwarded_allow_ips"),
    )
    for address in cfg.forwarded_allow_ips:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            s.fail("forwarded_allow_ips", f"{address!r} is not an address or network")
    if cfg.log_format not in ("json", "text"):
        s.fail("log_format", "expected 'json' or 'text'")
    if cfg.log_level not in LOG_LEVELS:
        s.fail("log_level", f"expected one of {', '.join(LOG_LEVELS)}")
    if cfg.port > 65535:
        s.fail("port", "must be <= 65535")
    s.finish()
    return cfg


def store(s: Section) -> StoreConfig:
    cfg = StoreConfig(
        path=s.string("path", DEFAULT_DB_PATH),
        url=s.string("url"),
        statement_timeout=s.duration("statement_timeout", 10.0),
        pool_size=s.integer("pool_size", 4, minimum=1),
        dedupe_window=s.duration("dedupe_window", 7 * DAY),
        prune_interval=s.duration("prune_interval", 3600.0),
        max_size_bytes=s.integer("max_size_bytes", None, minimum=65536),
        busy_timeout=s.duration("busy_timeout", 2.0),
        commit_delay=s.duration("commit_delay", 0.01),
        deadline=s.duration("deadline", 5.0),
    )
    if not 0.5 <= cfg.deadline <= 120:
        s.fail("deadline", "must be between 500ms and 120s")
    if not 0 <= cfg.commit_delay <= 0.1:
        s.fail("commit_delay", "must be between 0 and 100ms")
    if cfg.url is not None and urlsplit(cfg.url).scheme not in ("postgresql", "postgres"):
        s.fail("url", "expected a postgresql:// URL")
    if cfg.dedupe_window < MIN_DEDUPE_WINDOW:
        s.fail("dedupe_window", "must be >= 72h (providers such as Stripe retry for ~3 days)")
    s.finish()
    return cfg


def platform(s: Section) -> PlatformConfig:
    cfg = PlatformConfig(
        base_url=s.url("base_url").rstrip("/"),
        trigger_key=s.secret("trigger_key"),
        api_key=s.secret("api_key"),
        project_slug=s.string("project_slug"),
        project_id=s.string("project_id"),
        rate_limit=s.integer("rate_limit", None, minimum=1),
        timeout=s.duration("timeout", 30.0),
        idempotency_key_max_length=s.integer("idempotency_key_max_length", 255, minimum=32),
        webhook_secret=s.secret("webhook_secret"),
        max_response_bytes=s.integer("max_response_bytes", DEFAULT_MAX_RESPONSE, minimum=1024),
        idempotency_key_lifetime=s.duration("idempotency_key_lifetime", DAY),
    )
    if cfg.project_slug and cfg.project_id:
        s.fail("project_id", "set project_slug or project_id, not both")
    s.finish()
    return cfg


def _retry(s: Section, max_age: float = 3 * DAY) -> RetryPolicy:
    cfg = RetryPolicy(
        base=s.duration("base", 5.0),
        factor=s.number("factor", 2.0),
        cap=s.duration("cap", 3600.0),
        max_age=s.duration("max_age", max_age),
        jitter=s.string("jitter", "full"),
    )
    if cfg.jitter not in ("full", "none"):
        s.fail("jitter", "expected 'full' or 'none'")
    if cfg.factor < 1:
        s.fail("factor", "must be >= 1")
    s.finish()
    return cfg


def forwarder(s: Section) -> ForwarderConfig:
    retry = _retry(Section(s.data.pop("retry", None), s.where("retry"), s.problems),
                   FORWARD_MAX_AGE)
    cfg = ForwarderConfig(
        enabled=s.boolean("enabled", True),
        concurrency=s.integer("concurrency", 64, minimum=1),
        batch_size=s.integer("batch_size", 64, minimum=1),
        lease=s.duration("lease", 60.0),
        poll_interval=s.duration("poll_interval", 0.5),
        pause_probe=s.duration("pause_probe", 30.0),
        shutdown_grace=s.duration("shutdown_grace", 5.0),
        retry=retry,
    )
    s.finish()
    return cfg


def callbacks(s: Section) -> CallbacksConfig:
    retry = _retry(Section(s.data.pop("retry", None), s.where("retry"), s.problems))
    cfg = CallbacksConfig(
        signing_secret=s.secret("signing_secret"),
        allow_private=s.boolean("allow_private", False),
        allowed_ports=s.ports("allowed_ports", (80, 443)),
        timeout=s.duration("timeout", 10.0),
        concurrency=s.integer("concurrency", 64, minimum=1),
        batch_size=s.integer("batch_size", 32, minimum=1),
        lease=s.duration("lease", 60.0),
        poll_interval=s.duration("poll_interval", 0.5),
        retry=retry,
        urls=s.strings("urls"),
    )
    for i, url in enumerate(cfg.urls):
        if not is_http_url(url):
            s.problems.append(f"{s.where('urls')}[{i}]: expected an http(s) URL")
    s.finish()
    return cfg


def channel(s: Section, index: int) -> ChannelConfig:
    cfg = ChannelConfig(
        name=s.string("name", "", required=True),
        tokens=tuple(Secret(t) for t in s.strings("tokens") if t),
        signing_secret=s.secret("signing_secret", required=True),
        lease=s.duration("lease", 30.0),
        report_within=s.duration("report_within", 3600.0),
        index=index,
    )
    if cfg.report_within < 1.0:
        s.fail("report_within", "must be at least 1s")
    if cfg.name and not _CHANNEL_NAME.match(cfg.name):
        s.fail("name", "use lower-case letters, digits, '_' or '-' (at most 64)")
    if any(len(t.reveal()) < 16 for t in cfg.tokens):
        s.fail("tokens", "each agent token must be at least 16 characters")
    _check_whsec(s, "signing_secret", cfg.signing_secret)
    s.finish()
    return cfg


def edge(s: Section) -> EdgeConfig:
    cfg = EdgeConfig(
        url=s.url("url").rstrip("/"),
        channel=s.string("channel", "", required=True),
        token=s.secret("token", required=True) or Secret(""),
        signing_secret=s.secret("signing_secret", required=True) or Secret(""),
        ca_file=s.string("ca_file"),
        batch_size=s.integer("batch_size", 500, minimum=1),
        wait=s.duration("wait", 20.0),
        tolerance=s.duration("tolerance", 300.0),
    )
    if not cfg.url:
        s.fail("url", "required")
    if cfg.batch_size > 5000:
        s.fail("batch_size", "must be <= 5000")
    if not 0 <= cfg.wait <= 60:
        s.fail("wait", "must be between 0s and 60s")
    _check_whsec(s, "signing_secret", cfg.signing_secret)
    s.finish()
    return cfg


def _check_whsec(s: Section, key: str, secret: Secret | None) -> None:
    if not secret or not secret.reveal():
        return
    try:
        signing.decode_secret(secret.reveal())
    except ValueError:
        s.fail(key, "expected 'whsec_' followed by base64")


def admin(s: Section) -> AdminConfig:
    tokens = tuple(Secret(t) for t in s.strings("tokens") if t)
    cfg = AdminConfig(tokens=tokens, protect_metrics=s.boolean("protect_metrics", False))
    if any(len(t.reveal()) < 16 for t in tokens):
        s.fail("tokens", "each admin token must be at least 16 characters")
    s.finish()
    return cfg


def tracking(s: Section) -> TrackingConfig:
    cfg = TrackingConfig(
        enabled=s.boolean("enabled", True),
        deadline=s.duration("deadline", DAY),
        max_streams=s.integer("max_streams", 100, minimum=0),
        list_every=s.duration("list_every", 0.1),
        list_limit=s.integer("list_limit", 500, minimum=10),
        poll_initial=s.duration("poll_initial", 1.0),
        poll_max=s.duration("poll_max", 30.0),
        lease=s.duration("lease", 300.0),
        concurrency=s.integer("concurrency", 1000, minimum=1),
        batch_size=s.integer("batch_size", 64, minimum=1),
        poll_interval=s.duration("poll_interval", 0.5),
    )
    if cfg.list_every and not 0.05 <= cfg.list_every <= 60:
        s.fail("list_every", "must be \"0s\" (never list) or between 50ms and 60s")
    s.finish()
    return cfg


def emulator(s: Section) -> EmulatorConfig:
    cfg = EmulatorConfig(
        enabled=s.boolean("enabled", False),
        host=s.string("host", DEFAULT_HOST),
        port=s.integer("port", 8090, minimum=0),
        execution_delay=s.duration("execution_delay", 0.5),
    )
    s.finish()
    return cfg


def source(s: Section, index: int) -> SourceConfig:
    name = s.string("name", "", required=True)
    provider = s.string("provider", "", required=True)
    secrets: list[Secret] = []
    single = s.secret("secret")
    if single:
        secrets.append(single)
    if "secrets" in s.data:
        if single:
            s.fail("secrets", "set secret or secrets, not both")
        secrets.extend(Secret(v) for v in s.strings("secrets") if v)
    cfg = SourceConfig(
        name=name,
        provider=provider,
        secrets=tuple(secrets),
        tolerance=s.duration("tolerance", None),
        max_body_bytes=s.integer("max_body_bytes", None, minimum=1),
        insecure=s.boolean("insecure", False),
        allow_callback_urls=s.strings("allow_callback_urls"),
        gzip=s.boolean("gzip", False),
        body_dedupe=s.boolean("body_dedupe", True),
        options=s.rest(),
        index=index,
    )
    if name and not SOURCE_NAME.match(name):
        s.fail("name", "use letters, digits, '.', '_' or '-' (at most 64)")
    if provider and provider not in PROVIDERS:
        s.fail("provider", f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    if provider == "none" and not cfg.insecure:
        s.fail("insecure", "provider 'none' accepts unsigned requests: set insecure = true")
    elif provider and provider not in ("none", *LEARNS_SECRET) and not secrets:
        s.fail("secret", "required")
    return cfg


def route(s: Section, index: int) -> RouteConfig:
    source = s.string("source", "", required=True)
    trigger = s.string("trigger", "", required=True)
    cfg = RouteConfig(
        name=s.string("name", None) or f"{source}->{trigger}",
        source=source,
        trigger=trigger,
        events=s.strings("events", ("*",)) or ("*",),
        callbacks=s.strings("callbacks"),
        envelope=s.string("envelope", "envelope"),
        channel=s.string("channel"),
        filter=_expression(s, "filter"),
        input=_mapping(s, "input"),
    )
    if cfg.input is not None and cfg.envelope == "raw":
        s.fail("input", "builds the body itself: remove envelope = \"raw\"")
    if cfg.envelope not in ENVELOPES:
        s.fail("envelope", "expected 'envelope' or 'raw'")
    if trigger and not TRIGGER_NAME.match(trigger):
        s.fail("trigger", "use letters, digits, '.', '_' or '-'")
    for i, url in enumerate(cfg.callbacks):
        if not is_http_url(url):
            s.problems.append(f"{s.where('callbacks')}[{i}]: expected an http(s) URL")
    s.finish()
    return cfg


def _expression(s: Section, key: str) -> Any:
    text = s.string(key)
    if text is None:
        return None
    try:
        return compile_expression(text)
    except ExpressionError as exc:
        s.fail(key, str(exc))
        return None


def _mapping(s: Section, key: str) -> Any:
    value = s._take(key, (dict,), "a table of JMESPath expressions, such as "
                    "{ title = \"body.issue.title\" }", None)
    if value is None:
        return None
    if not value:
        s.fail(key, "is empty: name at least one field")
        return None
    return compile_mapping(value, s.where(key), s.problems)
