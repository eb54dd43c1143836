"""The configuration's model: frozen dataclasses with every default as a named constant, and
`Secret`, whose repr is masked. Built only by `bridge.config.parse`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from bridge.core.expressions import Expression
from bridge.core.retry import RetryPolicy
from bridge.web.server import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 25 * 1024 * 1024
DEFAULT_DB_PATH = "data/bridge.db"
DEFAULT_MAX_CONNECTIONS = 1024
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_MAX_RESPONSE = 1024 * 1024
DAY = 86400.0
MIN_DEDUPE_WINDOW = 72 * 3600.0
# Just under the platform's 24 h key memory, so every retry the forwarder makes on its own is
# one the platform still recognises; later, deliveries are dead letters an operator redrives.
FORWARD_MAX_AGE = 23 * 3600.0
PROVIDERS = ("github", "stripe", "standard", "hmac", "token", "none", "slack", "shopify",
             "twilio", "gitlab", "bitbucket", "linear", "paddle", "square", "zoom", "twitch",
             "hubspot", "intercom", "discord", "sendgrid", "mailgun", "pagerduty", "typeform",
             "jira", "meta", "dropbox", "okta", "clerk", "resend", "microsoft-graph",
             "asana", "razorpay", "workos", "coinbase-commerce", "box", "vercel", "sentry",
             "lemonsqueezy", "calendly", "mux", "zendesk", "trello", "telegram",
             "webflow", "docusign", "airtable")
LEARNS_SECRET = ("asana",)  # the provider hands its secret over in a handshake
ENVELOPES = ("envelope", "raw")
SOURCE_KEYS = ("name", "provider", "secret", "secrets", "tolerance", "max_body_bytes", "insecure",
               "allow_callback_urls", "gzip", "body_dedupe")
TOP_KEYS = ("server", "store", "platform", "forwarder", "callbacks", "tracking", "admin",
            "emulator", "sources", "routes", "channels", "edge")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A trigger's name: one path segment under /workflows/triggers/, never `.` or `..`.
TRIGGER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class Secret:
    """A secret value whose repr and str are masked; `.reveal()` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY
    secret_key: Secret | None = None
    log_format: str = "json"
    # "warning" drops the lines of what went well (each webhook accepted, attempt delivered,
    # execution finished, callback delivered) and keeps failures, rejections and dead letters.
    log_level: str = "info"
    shutdown_timeout: float = 8.0
    workers: int = 1  # uvicorn worker processes; each runs the loops too (leases keep them apart)
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # request line + headers; past it, 431
    max_headers: int = DEFAULT_MAX_HEADERS  # header fields per request; past it, 431
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open at once per worker; past it, 503
    # Proxies whose X-Forwarded-For/-Proto are believed (addresses or CIDRs); none by default,
    # so a client cannot claim another address (the auth throttle's key) or scheme.
    forwarded_allow_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    path: str = DEFAULT_DB_PATH
    url: str | None = None  # postgresql://user@host:5432/db: PostgreSQL instead of `path`
    statement_timeout: float = 10.0  # PostgreSQL: a statement running longer fails (503)
    pool_size: int = 4  # PostgreSQL: read connections per process (writes use one more)
    dedupe_window: float = 7 * DAY
    prune_interval: float = 3600.0
    max_size_bytes: int | None = None
    busy_timeout: float = 2.0
    deadline: float = 5.0  # any wait on the store: past it, 503 + Retry-After, the link is cut
    # Group commit: a batch waits at most this long for company, less when senders in a closed
    # loop are all back, not at all after a lone webhook (0: commit at once; see
    # bridge/store/writer.py).
    commit_delay: float = 0.01


@dataclass(frozen=True)
class PlatformConfig:
    base_url: str = ""
    trigger_key: Secret | None = None
    api_key: Secret | None = None
    project_slug: str | None = None
    project_id: str | None = None
    rate_limit: int | None = None  # requests per minute
    timeout: float = 30.0
    idempotency_key_max_length: int = 255
    webhook_secret: Secret | None = None  # verifies execution pushes to POST /platform/events
    max_response_bytes: int = DEFAULT_MAX_RESPONSE  # read at most this much of any answer
    idempotency_key_lifetime: float = DAY  # how long the platform remembers an Idempotency-Key


@dataclass(frozen=True)
class ForwarderConfig:
    enabled: bool = True
    concurrency: int = 64
    batch_size: int = 64
    lease: float = 60.0
    poll_interval: float = 0.5
    pause_probe: float = 30.0
    shutdown_grace: float = 5.0
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_age=FORWARD_MAX_AGE))


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    deadline: float = DAY  # an execution unfinished by then becomes timed_out
    max_streams: int = 100  # open SSE streams at most; beyond that, poll
    # While executions start faster than one per `list_every`, one list request per trigger
    # every `list_every` follows them all instead of a stream each ("0s": never list).
    list_every: float = 0.1
    list_limit: int = 500  # executions asked for per list request at most
    poll_initial: float = 1.0
    poll_max: float = 30.0
    lease: float = 300.0  # a stream is reopened (and a dead tracker's claim freed) after this
    concurrency: int = 1000  # executions held at once (waiting on a list costs a future)
    batch_size: int = 64
    poll_interval: float = 0.5


@dataclass(frozen=True)
class CallbacksConfig:
    signing_secret: Secret | None = None
    allow_private: bool = False
    allowed_ports: tuple[int, ...] = (80, 443)  # for sender-supplied URLs; empty: any port
    timeout: float = 10.0
    concurrency: int = 64
    batch_size: int = 32
    lease: float = 60.0
    poll_interval: float = 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    urls: tuple[str, ...] = ()  # told of every finished execution, beside the route's own


@dataclass(frozen=True)
class AdminConfig:
    tokens: tuple[Secret, ...] = ()  # bearer tokens for /admin/*; none: the admin API is off
    protect_metrics: bool = False  # require an admin token for /metrics too


@dataclass(frozen=True)
class EmulatorConfig:
    enabled: bool = False
    host: str = DEFAULT_HOST
    port: int = 8090
    execution_delay: float = 0.5


@dataclass(frozen=True)
class SourceConfig:
    name: str
    provider: str
    secrets: tuple[Secret, ...] = ()
    tolerance: float | None = None
    max_body_bytes: int | None = None
    insecure: bool = False
    allow_callback_urls: tuple[str, ...] = ()
    gzip: bool = False  # accept Content-Encoding: gzip (decompressed under max_body_bytes)
    body_dedupe: bool = True  # where the scheme signs no id: a signed body seen before is a duplicate
    options: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class RouteConfig:
    name: str
    source: str
    trigger: str
    events: tuple[str, ...] = ("*",)
    callbacks: tuple[str, ...] = ()
    envelope: str = "envelope"
    channel: str | None = None  # delivered by that channel's agents, not this bridge's platform
    filter: Expression | None = field(default=None, compare=False)  # take the event if true
    input: dict[str, Any] | None = field(default=None, compare=False)  # {key: Expression | table}


@dataclass(frozen=True)
class ChannelConfig:
    """An edge's outbound-only path to a private network: agents holding one of `tokens` pull
    its events; every batch is signed with `signing_secret` (Standard Webhooks)."""

    name: str
    tokens: tuple[Secret, ...] = ()
    signing_secret: Secret | None = None
    lease: float = 30.0  # a batch not acknowledged by then goes to any agent again
    # A hand-off whose agent reports nothing for this long goes back to the channel.
    report_within: float = 3600.0
    index: int = 0


@dataclass(frozen=True)
class EdgeConfig:
    """An agent's side of a channel: where the edge is, and how to prove who it is."""

    url: str
    channel: str
    token: Secret
    signing_secret: Secret
    ca_file: str | None = None  # a private CA for the edge's certificate
    batch_size: int = 500  # events per pull at most
    wait: float = 20.0  # how long one pull waits for events (long poll)
    tolerance: float = 300.0  # a batch signed longer ago (or ahead) than this is refused


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    forwarder: ForwarderConfig = field(default_factory=ForwarderConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    sources: tuple[SourceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    origin: str = "built-in defaults"
    channels: tuple[ChannelConfig, ...] = ()
    edge: EdgeConfig | None = None  # set: this config runs an agent (`bridge agent`)

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    def source(self, name: str) -> SourceConfig | None:
        for source in self.sources:
            if source.name == name:
                return source
        return None

    def secrets(self) -> list[str]:
        """Every secret value in the config, for the log redaction filter."""
        found: list[str] = []
        _collect_secrets(self, found)
        return [s for s in found if s]


def _collect_secrets(value: Any, found: list[str]) -> None:
    if isinstance(value, Secret):
        found.append(value.reveal())
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _collect_secrets(getattr(value, f.name), found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_secrets(item, found)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_secrets(item, found)
