"""The SSRF guard: a sender-supplied URL may only reach a public address.

A sender can name a callback URL (`?callback_url=`); without a guard it could make the bridge
POST signed execution output into the operator's private network. The rules:

- at ingest, a URL whose host is an IP literal must be public (`check_literal`); its port must be
  one the operator allows (80/443 by default, `[callbacks] allowed_ports`);
- at send time, the host is resolved by `GuardedResolver`, aiohttp's resolver hook: every
  address the name resolves to must be public, and the connection goes to one of exactly those
  addresses, so a DNS answer that changes between the check and the connection (rebinding)
  cannot redirect it. TLS is still verified against the original name;
- "public" excludes loopback, private, link-local, CGNAT, multicast, reserved and unspecified
  ranges, and IPv6 forms that embed one of them: IPv4-mapped, 6to4, Teredo and NAT64.

A sender's URL is first put in the form the HTTP client connects to (`canonical_url`: yarl's
parse, IDNA and Unicode normalisation applied), and every rule is checked on that form, so
`http://１２７.０.０.１/` is seen as the loopback address it reaches. A host that is neither a
valid DNS name nor an IP literal (`127.1`, `0x7f.1`, a backslash) is refused at the door.

The reasons given name the addresses a host resolved to; they are for logs and the admin API,
never for the public status page (`public_reason`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from bridge.core.errors import CallbackNotAllowed

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
DEFAULT_PORTS = (80, 443)
DEFAULT_SCHEME_PORTS = {"http": 80, "https": 443}
PREFIX = "refused by the SSRF guard: "
PUBLIC_REASON = PREFIX + "the callback host is not a public address"
MAX_URL = 2048
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")  # a last label a URL parser reads as IPv4


class Blocked(OSError):
    """A sender-supplied URL that resolves to, or names, a non-public address. An `OSError` so
    that aiohttp reports it as a failed connection (which it is: nothing was sent)."""

    def __init__(self, message: str) -> None:
        super().__init__(message if message.startswith(PREFIX) else PREFIX + message)


def public_reason(reason: str | None) -> str | None:
    """A stored reason as a sender may see it: the guard's refusals without the addresses."""
    if reason is not None and reason.startswith(PREFIX):
        return PUBLIC_REASON
    return reason


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address; the server's is a public relay
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return _public(inner)
    return _public(ip)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def valid_hostname(host: str) -> bool:
    """A DNS name as the client sends it (ASCII, IDNA applied): LDH labels, and a last label
    that is not a number (WHATWG parsers read `127.1` or `0x7f.1` as IPv4 addresses)."""
    labels = host.rstrip(".").split(".")
    return (0 < len(host) <= 253 and all(_LABEL.match(label) for label in labels)
            and not _NUMERIC.match(labels[-1]))


def canonical_url(url: str) -> str:
    """`url` as the HTTP client will read it (yarl's parse: Unicode digits and dots folded,
    IDNA applied), so that every check sees the host that is connected to. Refuses control
    characters, spaces and backslashes anywhere, user info, and a host that is neither a valid
    DNS name nor an IP literal."""
    if len(url) > MAX_URL or any(c <= " " or c in "\\\x7f" for c in url):
        raise CallbackNotAllowed("callback_url has a character a URL may not hold")
    parsed, host = _parse(url)
    if parsed.scheme not in ("http", "https") or not host:
        raise CallbackNotAllowed("callback_url must be an http or https URL with a host")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise CallbackNotAllowed("callback_url may not hold user info")
    if not (is_ip_literal(host) or valid_hostname(host)):
        raise CallbackNotAllowed("callback_url's host is not a valid hostname or address")
    return str(parsed.with_fragment(None))


def connect_host(url: str) -> str:
    """The host the client connects to for `url` (after IDNA and Unicode normalisation)."""
    return _parse(url)[1]


def _parse(url: str) -> tuple[URL, str]:
    """yarl's parse and the host it connects to; its errors as `CallbackNotAllowed`."""
    try:
        parsed = URL(url)
        return parsed, parsed.raw_host or ""
    except (ValueError, TypeError, UnicodeError):
        raise CallbackNotAllowed("callback_url is not a valid URL") from None


def url_port(url: str) -> int:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise CallbackNotAllowed("callback_url has an invalid port") from None
    if port is None:
        return 443 if parts.scheme == "https" else 80
    if port == 0:
        raise CallbackNotAllowed("callback_url has an invalid port")
    return port


def check_literal(url: str, allow_private: bool, ports: tuple[int, ...] = DEFAULT_PORTS) -> None:
    """At ingest: refuse a sender-supplied URL on a port not allowed, or whose host is a
    non-public IP literal (a name is checked after resolution, at send time)."""
    port = url_port(url)
    if ports and port not in ports:
        raise CallbackNotAllowed(f"callback_url port {port} is not allowed")
    host = connect_host(url).strip("[]")
    if not is_ip_literal(host):
        return
    if not allow_private and not is_public(host):
        raise CallbackNotAllowed("callback_url points at a non-public address")


def allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """Does any allow-list pattern take `url`? Each part is matched on its own, after parsing,
    so no wildcard can reach across into another part (with a whole-URL glob,
    `https://*.example.com/*` took `https://evil.com/.example.com/x`):

    - scheme: exactly;
    - host: exactly (case-insensitive), `*` for any host, or `*.example.com` for any host under
      example.com (whole labels; not example.com itself);
    - port: the pattern's port, or `*` for any; with none, the scheme's default only;
    - path: a glob over the path alone (`/hooks/*`); with none, any path. The query is not
      matched; user info in the URL is refused outright.
    """
    try:
        parts = urlsplit(url)
        host, port = connect_host(url).lower(), url_port(url)
    except (ValueError, CallbackNotAllowed):
        return False
    if not host or "@" in parts.netloc:
        return False
    return any(_matches(parts.scheme, host, port, parts.path or "/", p) for p in patterns)


def _matches(scheme: str, host: str, port: int, path: str, pattern: str) -> bool:
    p_scheme, sep, rest = pattern.partition("://")
    if not sep or p_scheme.lower() != scheme:
        return False
    authority, slash, p_path = rest.partition("/")
    p_host, colon, p_port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    p_host = p_host.lower()
    if p_port == "*":
        pass
    elif (int(p_port) if colon and p_port.isdigit() else DEFAULT_SCHEME_PORTS.get(scheme)) != port:
        return False
    if p_host != "*" and p_host != host:
        if not (p_host.startswith("*.") and host.endswith(p_host[1:])
                and len(host) > len(p_host) - 1):
            return False
    return not slash or fnmatchcase(path, "/" + p_path)


class GuardedResolver(ThreadedResolver):
    """aiohttp's resolver, refusing any name with a non-public address among its answers.
    Hosts in `trusted` (the operator's proxy) are resolved without the check."""

    def __init__(self, trusted: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.trusted = trusted

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await super().resolve(host, port, family)
        if host.rstrip(".") in self.trusted:
            return answers
        bad = [a["host"] for a in answers if not is_public(a["host"])]
        if not answers or bad:
            raise Blocked(f"{host} resolves to a non-public address ({', '.join(bad) or 'none'})")
        return answers


async def check_host(resolver: GuardedResolver, host: str, port: int) -> None:
    """Check a name without connecting: for requests that go through a proxy, which resolves
    the name itself (so the check cannot pin the address; see docs/security.md)."""
    if not is_ip_literal(host):
        await resolver.resolve(host, port, socket.AF_UNSPEC)
        return
    if not is_public(host):
        raise Blocked(f"{host} is not a public address")
