"""Configuration: strict TOML parsed once into frozen dataclasses.

`load(path, environ)` reads the file, substitutes `${VAR}` / `${VAR:-default}` from `environ`,
rejects unknown keys, checks every cross-reference and returns a `Config`. Every problem is
reported with its key path (`sources[1].secret: required`) in one `ConfigError`.

Provider-specific source keys (the generic `hmac` model's `header`, `algorithm`, ...) are kept in
`SourceConfig.options` and validated by the provider registry when verifiers are built, which
happens before the port is bound as well.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge import signing
from bridge.core.errors import ConfigError
from bridge.core.expressions import Expression, ExpressionError, compile_expression, compile_mapping
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
             "jira")
ENVELOPES = ("envelope", "raw")
SOURCE_KEYS = ("name", "provider", "secret", "secrets", "tolerance", "max_body_bytes", "insecure",
               "allow_callback_urls", "gzip", "body_dedupe")
TOP_KEYS = ("server", "store", "platform", "forwarder", "callbacks", "tracking", "admin",
            "emulator", "sources", "routes", "channels", "edge")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
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


def parse_duration(text: str) -> float:
    """'300s', '5m', '72h', '7d', '250ms' -> seconds. Raises ValueError."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a duration like '300s', '5m', '72h' or '7d', got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def interpolate(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Substitute ${VAR} and ${VAR:-default} in every string; `$$` is a literal `$`."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if environ.get(name):
                return environ[name]
            if default is not None:  # unset or empty, as a shell's ${VAR:-default}
                return default
            if name in environ:
                return ""
            problems.append(f"{path}: environment variable {name} is not set")
            return ""

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, _join(path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Section:
    """Reads typed keys out of one TOML table, recording problems with their key paths."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{path}: expected a table")
            data = {}
        self.data = dict(data)
        self.asked: set[str] = set()  # every key read, for "did you mean"

    def where(self, key: str) -> str:
        return _join(self.path, key)

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.where(key)}: {message}")

    def _take(self, key: str, kinds: tuple[type, ...], kind_name: str, default: Any) -> Any:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(key, f"expected {kind_name}")
            return default
        if not isinstance(value, kinds):
            self.fail(key, f"expected {kind_name}")
            return default
        return value

    def string(self, key: str, default: Any = None, required: bool = False) -> Any:
        if required and key not in self.data:
            self.fail(key, "required")
        return self._take(key, (str,), "a string", default)

    def integer(self, key: str, default: Any = None, minimum: int | None = None) -> Any:
        value = self._take(key, (int,), "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}")
            return default
        return value

    def number(self, key: str, default: float) -> float:
        value = self._take(key, (int, float), "a number", default)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._take(key, (bool,), "true or false", default))

    def duration(self, key: str, default: Any) -> Any:
        raw = self._take(key, (str,), "a duration string such as '5m'", None)
        if raw is None:
            return default
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.fail(key, str(exc))
            return default

    def secret(self, key: str, required: bool = False) -> Secret | None:
        value = self.string(key, required=required)
        if value is None:
            return None
        if required and not value:
            self.fail(key, "must not be empty")
        return Secret(value) if value else None

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "expected a list of strings")
            return default
        return tuple(value)

    def ports(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        self.asked.add(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value):
            self.fail(key, "expected a list of port numbers (1-65535)")
            return default
        return tuple(value)

    def url(self, key: str, default: str = "") -> str:
        value = self.string(key, default) or ""
        if value and not is_http_url(value):
            self.fail(key, "expected an http:// or https:// URL")
        return str(value)

    def finish(self, known: tuple[str, ...] = ()) -> None:
        for key in self.data:
            self.fail(key, "unknown key" + did_you_mean(key, known or tuple(self.asked)))

    def rest(self) -> dict[str, Any]:
        rest, self.data = self.data, {}
        return rest


def did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file; `None` gives the built-in defaults."""
    env = os.environ if environ is None else environ
    if path is None:
        return parse({}, env, origin="built-in defaults (no config file)")
    return parse(_read(Path(path)), env, origin=str(path))


def load_sources(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
                 ) -> tuple[tuple[SourceConfig, ...], tuple[RouteConfig, ...]]:
    """Only the sources and routes of a config file, for the tools that sign and send as a
    provider would (`bridge send`, `bridge trigger`): they need a source's secret and its routes,
    so nothing else (an unset admin token, a server setting) may stop them."""
    env = os.environ if environ is None else environ
    raw = _read(Path(path))
    problems: list[str] = []
    data = interpolate({k: raw[k] for k in ("sources", "routes") if k in raw}, env, "",
                       problems)
    sources = _tables(data.get("sources", []), "sources", problems, _source)
    routes = _tables(data.get("routes", []), "routes", problems, _route)
    if problems:
        raise ConfigError(_one_per_key(problems))
    return tuple(sources), tuple(routes)


def _read(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None


def parse(raw: dict[str, Any], environ: Mapping[str, str], origin: str = "") -> Config:
    problems: list[str] = []
    data = interpolate(raw, environ, "", problems)
    top = _Section(data, "", problems)
    server = _server(_Section(top.data.pop("server", None), "server", problems))
    store = _store(_Section(top.data.pop("store", None), "store", problems))
    platform = _platform(_Section(top.data.pop("platform", None), "platform", problems))
    forwarder = _forwarder(_Section(top.data.pop("forwarder", None), "forwarder", problems))
    callbacks = _callbacks(_Section(top.data.pop("callbacks", None), "callbacks", problems))
    tracking = _tracking(_Section(top.data.pop("tracking", None), "tracking", problems))
    admin = _admin(_Section(top.data.pop("admin", None), "admin", problems))
    emulator = _emulator(_Section(top.data.pop("emulator", None), "emulator", problems))
    sources = _tables(top.data.pop("sources", []), "sources", problems, _source)
    routes = _tables(top.data.pop("routes", []), "routes", problems, _route)
    channels = _tables(top.data.pop("channels", []), "channels", problems, _channel)
    edge = _edge(_Section(top.data.pop("edge"), "edge", problems)) if "edge" in top.data else None
    top.finish(TOP_KEYS)
    config = Config(server, store, platform, forwarder, callbacks, tracking, admin, emulator,
                    tuple(sources), tuple(routes), origin, tuple(channels), edge)
    _cross_check(config, problems)
    if problems:
        raise ConfigError(_one_per_key(problems))
    return config


def _one_per_key(problems: list[str]) -> list[str]:
    """A missing variable explains whatever else its key then lacks: one line per key."""
    unset = {p.split(": ", 1)[0] for p in problems if "environment variable" in p}
    return [p for p in problems if "environment variable" in p
            or p.split(": ", 1)[0] not in unset]


def _tables(value: Any, path: str, problems: list[str], build: Any) -> list[Any]:
    if not isinstance(value, list):
        problems.append(f"{path}: expected an array of tables ([[{path}]])")
        return []
    return [build(_Section(item, f"{path}[{i}]", problems), i) for i, item in enumerate(value)]


def _server(s: _Section) -> ServerConfig:
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


def _store(s: _Section) -> StoreConfig:
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


def _platform(s: _Section) -> PlatformConfig:
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


def _retry(s: _Section, max_age: float = 3 * DAY) -> RetryPolicy:
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


def _forwarder(s: _Section) -> ForwarderConfig:
    retry = _retry(_Section(s.data.pop("retry", None), s.where("retry"), s.problems),
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


def _callbacks(s: _Section) -> CallbacksConfig:
    retry = _retry(_Section(s.data.pop("retry", None), s.where("retry"), s.problems))
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


def _channel(s: _Section, index: int) -> ChannelConfig:
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


def _edge(s: _Section) -> EdgeConfig:
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


def _check_whsec(s: _Section, key: str, secret: Secret | None) -> None:
    if not secret or not secret.reveal():
        return
    try:
        signing.decode_secret(secret.reveal())
    except ValueError:
        s.fail(key, "expected 'whsec_' followed by base64")


def _admin(s: _Section) -> AdminConfig:
    tokens = tuple(Secret(t) for t in s.strings("tokens") if t)
    cfg = AdminConfig(tokens=tokens, protect_metrics=s.boolean("protect_metrics", False))
    if any(len(t.reveal()) < 16 for t in tokens):
        s.fail("tokens", "each admin token must be at least 16 characters")
    s.finish()
    return cfg


def _tracking(s: _Section) -> TrackingConfig:
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


def _emulator(s: _Section) -> EmulatorConfig:
    cfg = EmulatorConfig(
        enabled=s.boolean("enabled", False),
        host=s.string("host", DEFAULT_HOST),
        port=s.integer("port", 8090, minimum=0),
        execution_delay=s.duration("execution_delay", 0.5),
    )
    s.finish()
    return cfg


def _source(s: _Section, index: int) -> SourceConfig:
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
    elif provider and provider != "none" and not secrets:
        s.fail("secret", "required")
    return cfg


def _route(s: _Section, index: int) -> RouteConfig:
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


def _expression(s: _Section, key: str) -> Any:
    text = s.string(key)
    if text is None:
        return None
    try:
        return compile_expression(text)
    except ExpressionError as exc:
        s.fail(key, str(exc))
        return None


def _mapping(s: _Section, key: str) -> Any:
    value = s._take(key, (dict,), "a table of JMESPath expressions, such as "
                    "{ title = \"body.issue.title\" }", None)
    if value is None:
        return None
    if not value:
        s.fail(key, "is empty: name at least one field")
        return None
    return compile_mapping(value, s.where(key), s.problems)


def _cross_check(config: Config, problems: list[str]) -> None:
    seen: dict[str, int] = {}
    for source in config.sources:
        if source.name in seen:
            problems.append(f"sources[{source.index}].name: duplicate source {source.name!r}")
        seen[source.name] = source.index
    names: set[str] = set()
    channels = {channel.name for channel in config.channels}
    if len(channels) < len(config.channels):
        problems.append("channels: each channel needs its own name")
    for i, route in enumerate(config.routes):
        if route.source and route.source not in seen:
            problems.append(f"routes[{i}].source: no source named {route.source!r}")
        if route.channel is not None and route.channel not in channels:
            problems.append(f"routes[{i}].channel: no channel named {route.channel!r}"
                            + did_you_mean(route.channel, tuple(channels)))
        if route.name in names:
            problems.append(f"routes[{i}].name: duplicate route {route.name!r}")
        names.add(route.name)
    wants_callbacks = any(r.callbacks for r in config.routes) or any(
        s.allow_callback_urls for s in config.sources) or bool(config.callbacks.urls)
    if wants_callbacks and not config.callbacks.signing_secret:
        problems.append("callbacks.signing_secret: required when routes have callbacks or "
                        "sources allow callback URLs")
    direct = [route for route in config.routes if route.channel is None]
    if config.edge is not None:
        if config.sources or config.routes or config.channels:
            problems.append("edge: an agent's config has no sources, routes or channels "
                            "(its edge has them)")
        if config.server.host not in LOOPBACK:
            problems.append("server.host: an agent listens on loopback only (127.0.0.1 or ::1)")
        if not config.platform.base_url:
            problems.append("platform.base_url: required: the on-premises platform")
        if not config.platform.trigger_key:
            problems.append("platform.trigger_key: required: the on-premises platform's key")
    if direct and config.forwarder.enabled:
        if not config.platform.base_url and not config.emulator.enabled:
            problems.append("platform.base_url: required when routes are configured")
        if not config.platform.trigger_key:
            problems.append("platform.trigger_key: required when routes are configured")


def masked(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced by '********'."""
    plain: dict[str, Any] = _plain(config)
    return plain


# GitHub's event names (the part before `.action`): a route glob that matches none of them can
# never match. Other providers' catalogues are too large or too open to check this way.
GITHUB_EVENTS = (
    "branch_protection_rule", "check_run", "check_suite", "code_scanning_alert",
    "commit_comment", "create", "delete", "dependabot_alert", "deploy_key", "deployment",
    "deployment_status", "discussion", "discussion_comment", "fork", "github_app_authorization",
    "gollum", "installation", "installation_repositories", "issue_comment", "issues", "label",
    "marketplace_purchase", "member", "membership", "merge_group", "meta", "milestone",
    "organization", "org_block", "package", "page_build", "ping", "project", "project_card",
    "project_column", "projects_v2_item", "public", "pull_request", "pull_request_review",
    "pull_request_review_comment", "pull_request_review_thread", "push", "registry_package",
    "release", "repository", "repository_dispatch", "repository_import",
    "repository_vulnerability_alert", "secret_scanning_alert", "security_advisory",
    "sponsorship", "star", "status", "team", "team_add", "watch", "workflow_dispatch",
    "workflow_job", "workflow_run")
_PLACEHOLDER = re.compile(r"^(changeme|change-me|change_me|secret|password|xxx+|todo|"
                          r"replace[-_ ]?me|your[-_ ].*|<.*>|dev[-_].*|test|example.*)$", re.I)


def warnings(config: Config) -> list[str]:
    """What is valid but probably not what the operator wants."""
    out = []
    routed = {route.source for route in config.routes}
    for source in config.sources:
        if source.name not in routed:
            out.append(f"sources[{source.index}] ({source.name}): no route takes its events "
                       "(they are stored as unrouted)")
        for secret in source.secrets:
            if _PLACEHOLDER.match(secret.reveal()):
                out.append(f"sources[{source.index}] ({source.name}): the secret looks like a "
                           "placeholder; set the provider's real signing secret")
    providers = {source.name: source.provider for source in config.sources}
    for i, route in enumerate(config.routes):
        if providers.get(route.source) != "github":
            continue
        for glob in route.events:
            name = glob.split(".", 1)[0]
            if not any(fnmatchcase(event, name) for event in GITHUB_EVENTS):
                close = difflib.get_close_matches(name, GITHUB_EVENTS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                out.append(f"routes[{i}].events: {glob!r} can never match a GitHub event"
                           f"{hint}")
    lifetime = config.platform.idempotency_key_lifetime
    if config.routes and config.forwarder.retry.max_age > lifetime:
        out.append(
            f"forwarder.retry.max_age ({config.forwarder.retry.max_age / 3600:g}h) exceeds "
            f"platform.idempotency_key_lifetime ({lifetime / 3600:g}h): a delivery whose answer "
            "was lost is not retried past the key's lifetime (it goes dead, redrive with "
            "--force), so retries after that only help deliveries that never reached the "
            "platform")
    return out


def mask_url(value: str) -> str:
    """A URL with its user info (credentials) replaced by '********'."""
    parts = urlsplit(value)
    if not parts.scheme or "@" not in parts.netloc:
        return value
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"********@{host}").geturl()


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "********"
    if hasattr(value, "parsed") and isinstance(getattr(value, "text", None), str):
        return value.text  # a compiled expression: its source
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.name != "index"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
