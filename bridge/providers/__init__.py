"""The provider registry: one class per signature scheme, chosen by name from `SCHEMES`."""

from __future__ import annotations

from bridge.config import Config, SourceConfig
from bridge.errors import ConfigError
from bridge.providers.base import Identity, InboundRequest, Provider
from bridge.providers.body_hmac import Bitbucket, Intercom, Jira, Linear, PagerDuty, Shopify, Typeform
from bridge.providers.discord import Discord
from bridge.providers.generic import Hmac, Token, Unverified
from bridge.providers.github import GitHub
from bridge.providers.gitlab import GitLab
from bridge.providers.hubspot import HubSpot
from bridge.providers.mailgun import Mailgun
from bridge.providers.paddle import Paddle
from bridge.providers.sendgrid import SendGrid
from bridge.providers.slack import Slack
from bridge.providers.square import Square
from bridge.providers.standard import Standard
from bridge.providers.stripe import Stripe
from bridge.providers.twilio import Twilio
from bridge.providers.twitch import Twitch
from bridge.providers.zoom import Zoom

SCHEMES: dict[str, type[Provider]] = {
    cls.name: cls for cls in (
        GitHub, Stripe, Standard, Hmac, Token, Unverified, Slack, Shopify, Twilio, GitLab,
        Bitbucket, Linear, Paddle, Square, Zoom, Twitch, HubSpot, Intercom, Discord, SendGrid,
        Mailgun, PagerDuty, Typeform, Jira,
    )
}

__all__ = ["SCHEMES", "Identity", "InboundRequest", "Provider", "build", "build_all"]


def build(source: SourceConfig) -> Provider:
    return SCHEMES[source.provider](source)


def build_all(config: Config) -> dict[str, Provider]:
    """A verifier per source; every bad option or undecodable secret is a ConfigError."""
    built: dict[str, Provider] = {}
    problems: list[str] = []
    for source in config.sources:
        try:
            built[source.name] = build(source)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return built
