"""The SSRF guard of the ``http`` action: which URLs a journey may call, and where to connect.

A journey's ``http`` action sends whatever URL its (rendered) inputs name, so without a
guard a journey file, or an event field templated into a URL, could make the engine call
its own admin API, the cloud metadata service (``169.254.169.254``) or anything else on
the private network. The rules:

* the scheme is ``http`` or ``https``; the URL has a host and no credentials
  (``user:password@`` would leak into logs and dead letters; use ``headers``);
* every address the host resolves to (all getaddrinfo results, IPv4 and IPv6) must be
  public: not private, loopback, link-local, multicast, reserved, unspecified, shared
  (100.64.0.0/10), site-local, or otherwise not globally routable. Addresses that carry
  an IPv4 address are judged by it too: IPv4-mapped (``::ffff:127.0.0.1``) and NAT64
  (``64:ff9b::/96``) addresses *are* their IPv4 address (so a public site reached
  through DNS64 still works), and 6to4 / Teredo addresses must be public on both sides;
* unless the address (or the IPv4 address it maps to) is inside one of
  ``policies.http_allow_networks``: the operator's explicit "yes, this internal network".
  One bad address refuses the whole URL, even if others are fine.

DNS rebinding: checking a name and then letting the HTTP client resolve it again would
let a hostile DNS server answer "public" to the check and "127.0.0.1" to the connection.
So the check *returns* what it checked (:class:`Target`, with the resolved addresses)
and the caller connects to those addresses only: the request goes to
``scheme://<checked IP>:port/path`` (:meth:`Target.pinned`) with the ``Host`` header of
the original URL and, for https, the original host name as TLS SNI and certificate name
(aiohttp's ``server_hostname``), so certificates are still verified against the name.
The ``http`` action's client (:mod:`actions.http`) never resolves a name itself; a proxy
from the environment, if there is one, is sent the checked address too, not the name.

URLs are parsed by httpx's parser, as when httpx sent them, so what goes on the wire is
the same; a parsed URL is kept in a small cache because webhook URLs repeat and parsing
one costs tens of microseconds.

Resolution failures are transient (``connection: ...``), as httpx treats them: a DNS
outage must not turn a webhook into a dead letter at once. Everything else here is a
permanent :class:`~actions.base.ActionError`: the URL will not get better by waiting.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from yarl import URL

from actions.base import ActionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

# Well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class Parsed:
    """A URL whose form is acceptable, with what the action needs of it worked out once."""

    url: httpx.URL
    host: str  # as it goes on the wire (IDNA-encoded; an IPv6 literal without brackets)
    port: int
    host_is_name: bool  # False when the URL names an IP address itself (nothing to resolve)
    host_header: str  # the Host header of the URL (with its port, if it had one)
    path_qs: str  # the encoded path and query string, as httpx would send them
    described: str  # for messages: no credentials, no query string


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be reached at (resolver order, no duplicates)."""

    parsed: Parsed
    addresses: tuple[IPAddress, ...]

    @property
    def url(self) -> httpx.URL:
        return self.parsed.url

    @property
    def host(self) -> str:
        """The host as it goes on the wire (IDNA-encoded; an IPv6 literal without brackets)."""
        return self.parsed.host

    @property
    def port(self) -> int:
        return self.parsed.port

    @property
    def host_is_name(self) -> bool:
        """False when the URL names an IP address itself (nothing was resolved)."""
        return self.parsed.host_is_name

    @property
    def host_header(self) -> str:
        """The ``Host`` header of the original URL (with its port, if it had one)."""
        return self.parsed.host_header

    def pinned(self, address: IPAddress) -> URL:
        """The URL with its host replaced by one checked address: connect there, nowhere else."""
        host = f"[{address}]" if address.version == 6 else str(address)
        path, _, query = self.parsed.path_qs.partition("?")
        # encoded=True: the path and query stay byte for byte what httpx's parser made of them
        return URL.build(scheme=self.parsed.url.scheme, host=host, port=self.parsed.port, path=path,
                         query_string=query, encoded=True)

    def describe(self) -> str:
        return self.parsed.described


def describe(url: httpx.URL) -> str:
    """A URL for messages: no credentials, no query string (it may hold tokens)."""
    netloc = url.netloc.decode("ascii", "replace")
    return f"{url.scheme}://{netloc}{url.path}"


def parse_networks(allow: Sequence[str]) -> tuple[IPNetwork, ...]:
    """The allowed networks; a bad entry is a permanent error naming it."""
    return _networks(tuple(allow))


@functools.lru_cache(maxsize=16)
def _networks(allow: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    # the policy is the same for every job of a deployment: parse it once
    networks: list[IPNetwork] = []
    for cidr in allow:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ActionError(f"policies.http_allow_networks: {cidr!r} is not a network "
                              "(write a CIDR like 10.0.0.0/8)", transient=False) from None
    return tuple(networks)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is ("a loopback address"), or None for a public one."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def _judged(address: IPAddress) -> list[IPAddress]:
    """The addresses that decide whether *address* may be reached."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    judged: list[IPAddress] = [address]
    if address.sixtofour is not None:
        judged.append(address.sixtofour)
    if address.teredo is not None:
        judged.extend(address.teredo)
    return judged


def refusal(address: IPAddress, networks: Sequence[IPNetwork]) -> str | None:
    """Why *address* may not be reached (None: it may), given the allowed networks."""
    for judged in _judged(address):
        if any(judged in network for network in networks):
            continue
        kind = _kind(judged)
        if kind is None:
            continue
        if judged == address:
            return f"{address} is {kind}"
        return f"{address} is a form of {judged}, {kind}"
    return None


async def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address of *host* (an IP literal is its own address), with the loop's getaddrinfo."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ActionError(f"connection: cannot resolve {host!r}: {exc}", transient=True) from None
    found: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # a link-local IPv6 result may carry a zone ("fe80::1%eth0"); the check ignores it
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise ActionError(f"connection: {host!r} has no IPv4 or IPv6 address", transient=True)
    return tuple(found)


def parse_url(url: str) -> httpx.URL:
    """The URL as httpx parses it, if its form is acceptable (scheme, host, no credentials)."""
    return parse(url).url


@functools.lru_cache(maxsize=1024)
def parse(url: str) -> Parsed:
    """:func:`parse_url` and what follows from it (a refused URL raises, and is not cached)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, UnicodeError) as exc:
        raise ActionError(f"invalid url: {exc}", transient=False) from None
    if parsed.scheme not in SCHEMES:
        shown = f"{parsed.scheme}:// is not allowed" if parsed.scheme else "no scheme"
        raise ActionError(f"url refused: {shown}; only http:// and https:// URLs may be called", transient=False)
    if parsed.userinfo:
        # never echo the credentials themselves
        raise ActionError("url refused: credentials in the URL (user:password@) are not allowed; "
                          f"send them in headers (url {describe(parsed)!r})", transient=False)
    if not parsed.raw_host:
        raise ActionError(f"url refused: no host in {describe(parsed)!r}", transient=False)
    host = parsed.raw_host.decode("ascii")
    return Parsed(url=parsed, host=host, port=parsed.port or DEFAULT_PORTS[parsed.scheme],
                  host_is_name=not _is_ip_literal(host), host_header=parsed.netloc.decode("ascii"),
                  path_qs=parsed.raw_path.decode("ascii"), described=describe(parsed))


async def resolve_url(url: str, allow: Sequence[str]) -> Target:
    """Check *url* and resolve its host once; connect to ``Target.addresses`` only.

    Raises :class:`ActionError`: permanent when the URL or any of its addresses is refused,
    transient (``connection: ...``) when the host cannot be resolved.
    """
    parsed = parse(url)
    networks = parse_networks(allow)
    addresses = await resolve(parsed.host, parsed.port)
    for address in addresses:
        why = refusal(address, networks)
        if why is not None:
            via = f" ({parsed.host} resolves to {address})" if parsed.host_is_name else ""
            raise ActionError(f"url refused: {parsed.described}{via}: {why}; only public addresses are "
                              "allowed unless policies.http_allow_networks lists the network",
                              transient=False)
    return Target(parsed, addresses)


async def check_url(url: str, allow: Sequence[str]) -> None:
    """Raise :class:`ActionError` unless *url* may be called (see :func:`resolve_url`).

    A yes/no answer only: to be safe from DNS rebinding, send the request with
    :func:`resolve_url`'s addresses rather than resolving the name again.
    """
    await resolve_url(url, allow)
