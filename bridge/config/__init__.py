"""Configuration: strict TOML parsed once into frozen dataclasses.

`load(path, environ)` reads the file, substitutes `${VAR}` / `${VAR:-default}` from `environ`,
rejects unknown keys, checks every cross-reference and returns a `Config`. Every problem is
reported with its key path (`sources[1].secret: required`) in one `ConfigError`.

Provider-specific source keys (the generic `hmac` model's `header`, `algorithm`, ...) are kept in
`SourceConfig.options` and validated by the provider registry when verifiers are built, which
happens before the port is bound as well.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.config import sections
from bridge.config.checks import cross_check, mask_url, masked, warnings
from bridge.config.model import (
    DAY,
    LOG_LEVELS,
    SOURCE_KEYS,
    SOURCE_NAME,
    TOP_KEYS,
    TRIGGER_NAME,
    AdminConfig,
    CallbacksConfig,
    ChannelConfig,
    Config,
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
from bridge.config.reader import Section, did_you_mean, interpolate, is_http_url, parse_duration, tables
from bridge.core.errors import ConfigError
from bridge.core.retry import RetryPolicy

__all__ = [  # the model and the readers, for `from bridge.config import ...`
    "DAY", "LOG_LEVELS", "SOURCE_KEYS", "SOURCE_NAME", "TRIGGER_NAME", "AdminConfig",
    "CallbacksConfig", "ChannelConfig", "Config", "EdgeConfig", "EmulatorConfig", "ForwarderConfig",
    "PlatformConfig", "RetryPolicy", "RouteConfig", "Secret", "ServerConfig", "SourceConfig",
    "StoreConfig", "TrackingConfig", "did_you_mean", "is_http_url", "load", "load_sources",
    "mask_url", "masked", "parse", "parse_duration", "warnings",
]


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
    sources = tables(data.get("sources", []), "sources", problems, sections.source)
    routes = tables(data.get("routes", []), "routes", problems, sections.route)
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
    top = Section(data, "", problems)
    server = sections.server(Section(top.data.pop("server", None), "server", problems))
    store = sections.store(Section(top.data.pop("store", None), "store", problems))
    platform = sections.platform(Section(top.data.pop("platform", None), "platform", problems))
    forwarder = sections.forwarder(Section(top.data.pop("forwarder", None), "forwarder", problems))
    callbacks = sections.callbacks(Section(top.data.pop("callbacks", None), "callbacks", problems))
    tracking = sections.tracking(Section(top.data.pop("tracking", None), "tracking", problems))
    admin = sections.admin(Section(top.data.pop("admin", None), "admin", problems))
    emulator = sections.emulator(Section(top.data.pop("emulator", None), "emulator", problems))
    sources = tables(top.data.pop("sources", []), "sources", problems, sections.source)
    routes = tables(top.data.pop("routes", []), "routes", problems, sections.route)
    channels = tables(top.data.pop("channels", []), "channels", problems, sections.channel)
    edge = sections.edge(Section(top.data.pop("edge"), "edge", problems)) if "edge" in top.data else None
    top.finish(TOP_KEYS)
    config = Config(server, store, platform, forwarder, callbacks, tracking, admin, emulator,
                    tuple(sources), tuple(routes), origin, tuple(channels), edge)
    cross_check(config, problems)
    if problems:
        raise ConfigError(_one_per_key(problems))
    return config


def _one_per_key(problems: list[str]) -> list[str]:
    """A missing variable explains whatever else its key then lacks: one line per key."""
    unset = {p.split(": ", 1)[0] for p in problems if "environment variable" in p}
    return [p for p in problems if "environment variable" in p
            or p.split(": ", 1)[0] not in unset]
