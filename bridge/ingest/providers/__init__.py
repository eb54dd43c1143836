"""The provider registry: one class per signature scheme, chosen by name from `SCHEMES`."""

from __future__ import annotations

from bridge.config import Config, SourceConfig
from bridge.core.errors import ConfigError
from bridge.ingest.providers.base import Identity, InboundRequest, Provider
from bridge.ingest.providers.body_hmac import (
    Airtable,
    Bitbucket,
    CoinbaseCommerce,
    DocuSign,
    Intercom,
    Jira,
    LemonSqueezy,
    Linear,
    PagerDuty,
    Razorpay,
    Sentry,
    Shopify,
    Typeform,
    Vercel,
)
from bridge.ingest.providers.box import Box
from bridge.ingest.providers.discord import Discord
from bridge.ingest.providers.generic import Hmac, Token, Unverified
from bridge.ingest.providers.github import GitHub
from bridge.ingest.providers.gitlab import GitLab
from bridge.ingest.providers.handshakes import (
    Asana,
    Dropbox,
    Meta,
    MicrosoftGraph,
    Okta,
    Telegram,
    Trello,
)
from bridge.ingest.providers.hubspot import HubSpot
from bridge.ingest.providers.mailgun import Mailgun
from bridge.ingest.providers.paddle import Paddle
from bridge.ingest.providers.sendgrid import SendGrid
from bridge.ingest.providers.slack import Slack
from bridge.ingest.providers.square import Square
from bridge.ingest.providers.standard import Clerk, Resend, Standard
from bridge.ingest.providers.stripe import Stripe
from bridge.ingest.providers.timestamped import Calendly, Mux, Webflow, Zendesk
from bridge.ingest.providers.twilio import Twilio
from bridge.ingest.providers.twitch import Twitch
from bridge.ingest.providers.workos import WorkOS
from bridge.ingest.providers.zoom import Zoom

SCHEMES: dict[str, type[Provider]] = {
    cls.name: cls for cls in (
        GitHub, Stripe, Standard, Hmac, Token, Unverified, Slack, Shopify, Twilio, GitLab,
        Bitbucket, Linear, Paddle, Square, Zoom, Twitch, HubSpot, Intercom, Discord, SendGrid,
        Mailgun, PagerDuty, Typeform, Jira, Meta, Dropbox, Okta, Clerk, Resend,
        MicrosoftGraph, Asana, Razorpay, WorkOS, CoinbaseCommerce, Box, Vercel, Sentry,
        LemonSqueezy, Calendly, Mux, Zendesk, Trello, Telegram, Webflow, DocuSign, Airtable,
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
