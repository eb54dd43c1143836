"""Checks across tables (routes name sources that exist, ...), warnings, and the masked view
of a config for `check-config` and logs."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from bridge.config.model import LOOPBACK, Config, Secret
from bridge.config.reader import did_you_mean


def cross_check(config: Config, problems: list[str]) -> None:
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
    if config.edge is not None:
        out += _agent_warnings(config)
    return out


def _agent_warnings(config: Config) -> list[str]:
    """What an agent's config lacks that it will miss at run time (what it cannot start
    without, the platform's trigger key and a signing secret for callbacks, are errors)."""
    assert config.edge is not None
    out = []
    if not config.platform.api_key:
        out.append("platform.api_key is not set: the agent cannot follow executions, so the "
                   "edge never hears how they ended and no callback is sent")
    if config.edge.url.startswith("http://") and not _loopback(config.edge.url):
        out.append("edge.url is plain http: the agent's token crosses the network in the clear;"
                   " use https")
    if config.sources or config.routes:
        out.append("an agent takes its events from the edge: its [[sources]] and [[routes]] "
                   "are not used")
    return out


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


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
