"""The ``http`` action: call an outside system (a helpdesk, a CRM, your own API).

Inputs (already rendered): ``method`` (default ``POST``), ``url``, ``headers`` (a mapping
of strings; numbers are written as text), and ``json`` (any JSON value, sent as
``application/json``) or ``body`` (a string, sent as is; ``text/plain`` unless a
``Content-Type`` header says otherwise), not both.

What is sent:

* ``Idempotency-Key: <job id>``: the same on every attempt and every re-run of the job,
  so the receiver can drop duplicates. It is not overridable (a header of that name in
  ``headers`` is ignored), nor are ``Host``, ``Content-Length``, ``Transfer-Encoding``,
  ``Connection`` and ``Accept-Encoding`` (hop-by-hop and framing headers are ours).
* ``User-Agent: journeys`` and ``Accept: */*`` unless ``headers`` name others; ``Accept-Encoding: identity``
  (the size cap below counts bytes on the wire, so no compression bombs).
* The request goes only to addresses :mod:`actions.net` checked (SSRF guard and DNS
  rebinding: see there); when a name has several, a refused connection tries the next.
* Redirects are never followed: a 3xx is a permanent failure whose reason names the
  ``Location``. Following them would need a fresh check per hop and, for POST, a choice
  between re-sending the body (307/308) and turning it into a GET (301-303); a webhook
  URL that redirects is a URL to fix in the journey.

The whole attempt (resolution, connection, request, response headers) must finish
within ``ctx.timeout`` seconds, and the body is read within what remains of it.

Response body: at most ``max_body_bytes`` (1 MiB by default) are read; beyond that the
action stops reading, drops the connection and keeps the first bytes. It does not fail:
the status is the answer (a 2xx means the call happened, and failing it would only make
the journey believe otherwise), and the result keeps just the first 2,000 characters
anyway. The cap bounds memory and time. Likewise, a body cut short by the deadline or a
dropped connection after the status arrived keeps what was read.

Result: ``{"status": <code>, "body": <first 2,000 characters>}`` for a 2xx. Failures:
408, 429 and 5xx are transient (``retry_after`` from ``Retry-After``, seconds or an HTTP
date); timeouts are transient (``timeout: ...``), as are connection errors and DNS
failures (``connection: ...``); a refused URL, bad inputs, a 3xx and any other status are
permanent. ``ActionError.status`` carries the HTTP status when there is one.

The client: the action brings its own, an aiohttp session per running event loop, made on
the first call and reused by every later one (``ctx.http``, the httpx client that channels
and plugins use, is not used here). Why: per call, httpx (h11 in pure Python, anyio, its
connection pool) cost 1.3 ms of CPU sequentially and 2.5 ms with 50 calls at once on the
development machine; aiohttp (C parser, asyncio protocols) about 0.2 ms, and the whole
action about 0.33 ms, 0.26 ms with 50 at once (``tests/benchmarks/bench_http_client.py``;
a URL by name adds about 0.2 ms for the lookup in asyncio's thread pool). Its connections are
kept alive and pooled by checked IP and port, so the next job to the same receiver skips
the TCP handshake; idle ones are dropped after 5 s. Except for https to a name: each such
call gets a new connection, verified for that name, with ``Connection: close``, and it is
closed after the answer. A response read to its end gives its connection back to the
pool; one cut short (the cap, the deadline) closes it. As with httpx before, the
environment's ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` are followed
(read once per client, and a proxy is only ever sent the checked address), and https
certificates are checked against httpx's default trust (certifi, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR``). Unlike the shared httpx client, it keeps no cookies between calls and
reads no ``.netrc``. Whoever stops the event loop's work calls :func:`close` (the executor
does), which closes the pooled connections of the running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
import ssl
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from actions.base import ActionContext, ActionError, Outcome
from actions.net import IPAddress, IPNetwork, Target, parse, resolve_url
from actions.retry import retry_after

MAX_BODY_BYTES = 1_048_576
RESULT_BODY_CHARS = 2_000
REASON_BODY_CHARS = 200
USER_AGENT = "journeys"
# Idle pooled connections are dropped after this many seconds, as httpx did: many servers
# (uvicorn among them) close theirs after 5 s, and a request sent on a connection the server
# is closing fails.
KEEPALIVE_SECONDS = 5.0

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# one encoder for every call: json.dumps with options builds a new one each time
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Headers the action sets itself: a journey's headers of these names are ignored.
_OURS = frozenset({"host", "idempotency-key", "content-length", "transfer-encoding", "connection",
                   "accept-encoding", "te", "trailer", "upgrade", "keep-alive", "proxy-connection"})
_TRANSIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    content: bytes | None


def _bad(reason: str) -> ActionError:
    return ActionError(f"invalid http inputs: {reason}", transient=False)


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(f"header {name!r} must be a string, not {type(value).__name__}")
    text = str(value)
    if any(c in text for c in "\r\n\0"):
        raise _bad(f"header {name!r} contains a line break or NUL")
    return text.strip()  # sent UTF-8 encoded


def _read_inputs(inputs: Mapping[str, Any], job_id: str) -> _Call:
    url = inputs.get("url")
    if not isinstance(url, str) or not url.strip():
        raise _bad("url is required (a string)")
    method = inputs.get("method")
    method = "POST" if method is None else method
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise _bad(f"method {method!r} is not an HTTP method")
    method = method.upper()

    raw_headers = inputs.get("headers")
    if raw_headers is None:
        raw_headers = {}
    if not isinstance(raw_headers, Mapping):
        raise _bad("headers must be a mapping of names to strings")
    headers: dict[str, tuple[str, str]] = {}  # lower-case name -> (name, value)
    for name, value in raw_headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _bad(f"{name!r} is not a header name")
        if name.lower() in _OURS:
            continue
        headers[name.lower()] = (name, _header_value(name, value))

    json_value, body = inputs.get("json"), inputs.get("body")
    content: bytes | None = None
    if json_value is not None and body is not None:
        raise _bad("give json or body, not both")
    if json_value is not None:
        try:
            content = _JSON.encode(json_value).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise _bad(f"json cannot be encoded: {exc}") from None
        headers.setdefault("content-type", ("Content-Type", "application/json"))
    elif body is not None:
        if isinstance(body, str):
            content = body.encode("utf-8")
        elif isinstance(body, bytes):
            content = body
        else:
            raise _bad(f"body must be a string, not {type(body).__name__} (use json for structured data)")
        headers.setdefault("content-type", ("Content-Type", "text/plain; charset=utf-8"))

    headers.setdefault("user-agent", ("User-Agent", USER_AGENT))
    headers.setdefault("accept", ("Accept", "*/*"))
    headers["accept-encoding"] = ("Accept-Encoding", "identity")
    headers["idempotency-key"] = ("Idempotency-Key", _header_value("Idempotency-Key", job_id))
    return _Call(method, url, tuple(headers.values()), content)


def _decode(raw: bytes, content_encoding: str | None, charset: str | None, cap: int) -> str:
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # asked for identity, got compressed anyway: inflate at most `cap` bytes
        wbits = 47 if encoding != "deflate" else 15  # 32+15: gzip or zlib header
        with contextlib.suppress(zlib.error):
            raw = zlib.decompressobj(wbits).decompress(raw, cap)
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Proxies:
    """The environment's proxies (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``),
    read when a client is made, as httpx read them for ``ctx.http``.

    A proxy is sent the checked address (absolute-form URL, or ``CONNECT ip:port`` for
    https), never the name, so it cannot resolve the name to somewhere else. ``NO_PROXY``
    lists names (``example.com`` covers its subdomains too), IP addresses or networks, or
    ``*``; it is matched against the URL's host and the checked address.
    """

    by_scheme: Mapping[str, str]
    bypass_names: tuple[str, ...]
    bypass_networks: tuple[IPNetwork, ...]

    @classmethod
    def from_environment(cls) -> _Proxies:
        found = urllib.request.getproxies_environment()
        entries = [h.strip().lower() for h in found.get("no", "").split(",") if h.strip()]
        if "*" in entries:
            return cls({}, (), ())
        by_scheme: dict[str, str] = {}
        for scheme in ("http", "https"):
            url = found.get(scheme) or found.get("all")
            if url:
                by_scheme[scheme] = url if "://" in url else f"http://{url}"
        names: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.append(entry.lstrip("."))
        return cls(by_scheme, tuple(names), tuple(networks))

    def names(self) -> frozenset[str]:
        """The proxies' host names: the only names the client may resolve."""
        return frozenset(URL(url).raw_host or "" for url in self.by_scheme.values())

    def for_call(self, target: Target, address: IPAddress) -> str | None:
        proxy = self.by_scheme.get(target.url.scheme)
        if proxy is None:
            return None
        host = target.host.lower()
        if any(host == name or host.endswith("." + name) for name in self.bypass_names):
            return None
        if any(address in network for network in self.bypass_networks):
            return None
        return proxy


class _ProxyNamesOnly(AbstractResolver):
    """The action's client connects to checked IP addresses only; the one name it may look up
    is an environment proxy's. Any other name to resolve would be a bug: it is refused."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._resolver: aiohttp.ThreadedResolver | None = None

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self._names:
            raise OSError(f"the http action's client resolves no names (asked for {host!r})")
        if self._resolver is None:
            self._resolver = aiohttp.ThreadedResolver()
        return await self._resolver.resolve(host, port, family)

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()


@dataclass(frozen=True)
class _Clients:
    """The action's HTTP clients on one event loop."""

    pooled: aiohttp.ClientSession  # keep-alive connections, by checked IP and port
    fresh: aiohttp.ClientSession  # https to a name: one new, verified connection per call
    proxies: _Proxies

    @property
    def closed(self) -> bool:
        return self.pooled.closed or self.fresh.closed

    async def close(self) -> None:
        await self.pooled.close()
        await self.fresh.close()


class HttpAction:
    """The built-in ``http`` action (see the module docstring).

    It owns its HTTP client: aiohttp sessions per running event loop, made on first use and
    reused by every call on that loop (a pool of keep-alive connections), until
    :meth:`close`. *tls* is the context https calls verify certificates with (default:
    httpx's, so the trust is the same as before: certifi's bundle, or ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR``). *connector* makes the sessions' connectors instead of
    ``TCPConnector`` (tests use one that records requests and sends none).
    """

    name = "http"

    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES, tls: ssl.SSLContext | None = None,
                 connector: Callable[[], aiohttp.BaseConnector] | None = None) -> None:
        self.max_body_bytes = max_body_bytes
        self._tls = tls
        self._connector = connector
        self._clients: dict[asyncio.AbstractEventLoop, _Clients] = {}

    def _clients_of(self, loop: asyncio.AbstractEventLoop) -> _Clients:
        clients = self._clients.get(loop)
        if clients is not None and not clients.closed:
            return clients
        # a loop that ended without close(): its sessions cannot be closed any more, only forgotten
        for old in [old for old in self._clients if old.is_closed()]:
            del self._clients[old]
        proxies = _Proxies.from_environment()
        clients = _Clients(pooled=self._new_session(proxies, force_close=False),
                           fresh=self._new_session(proxies, force_close=True), proxies=proxies)
        self._clients[loop] = clients
        return clients

    def _new_session(self, proxies: _Proxies, *, force_close: bool) -> aiohttp.ClientSession:
        if self._connector is not None:
            connector = self._connector()
        else:
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            # force_close: aiohttp closes each connection after its answer (and never pools it),
            # whatever the server says; keepalive_timeout does not apply then
            connector = aiohttp.TCPConnector(ssl=self._tls, resolver=_ProxyNamesOnly(proxies.names()),
                                             force_close=force_close,
                                             keepalive_timeout=None if force_close else KEEPALIVE_SECONDS)
        return aiohttp.ClientSession(
            connector=connector,
            # our deadline (asyncio.timeout_at) bounds each call; aiohttp's own would only race it
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
            auto_decompress=False,  # _decode inflates at most max_body_bytes
            cookie_jar=aiohttp.DummyCookieJar(),  # one journey's cookies are no other's business
            # not aiohttp's reading of the environment: it looks up proxies (in a thread) and
            # .netrc credentials on every request; _Proxies reads the proxies once
            trust_env=False,
            # a POST without a body gets no made-up Content-Type (aiohttp's application/octet-stream)
            skip_auto_headers=("Content-Type",),
        )

    async def close(self) -> None:
        """Close the client of the running event loop (its pooled connections), if a call made one."""
        clients = self._clients.pop(asyncio.get_running_loop(), None)
        if clients is not None:
            await clients.close()

    async def run(self, ctx: ActionContext) -> Outcome:
        call = _read_inputs(ctx.inputs, ctx.job_id)
        where = f"{call.method} {parse(call.url).described}"
        loop = asyncio.get_running_loop()
        clients = self._clients_of(loop)
        response: aiohttp.ClientResponse | None = None
        body = bytearray()
        whole = False
        try:
            # one deadline for all of it: the body is read within what the rest left
            async with asyncio.timeout_at(loop.time() + ctx.timeout):
                target = await resolve_url(call.url, ctx.config.policies.http_allow_networks)
                response = await self._send(clients, call, target, where, ctx.timeout)
                whole = await self._read_body(response, body)
        except TimeoutError:
            if response is None:
                raise ActionError(f"timeout: no response from {where} within {ctx.timeout:g}s",
                                  transient=True) from None
            # the status came in time and is the answer; the body keeps what was read
        finally:
            if response is not None:
                if whole:
                    response.release()  # read to its end: the connection may serve the next call
                else:
                    response.close()  # cut short: the rest may still come, so hang up
        text = _decode(bytes(body), response.headers.get("Content-Encoding"), response.charset, self.max_body_bytes)
        return _classify(response.status, response.headers, text, where, ctx.now)

    async def _send(self, clients: _Clients, call: _Call, target: Target, where: str,
                    timeout: float) -> aiohttp.ClientResponse:
        headers: list[tuple[str, str]] = [("Host", target.host_header), *call.headers]
        session, server_hostname = clients.pooled, None
        if target.url.scheme == "https" and target.host_is_name:
            # certificate and SNI for the name, not the IP we connect to
            server_hostname = target.host
            # and a fresh, verified connection per call: never a pooled one (aiohttp would
            # pool by IP, port and SNI name; we keep the documented, stricter rule)
            session = clients.fresh
            headers.append(("Connection", "close"))
        refused: OSError | None = None
        for address in target.addresses:
            try:
                return await session.request(call.method, target.pinned(address), headers=headers,
                                             data=call.content, allow_redirects=False,
                                             server_hostname=server_hostname,
                                             proxy=clients.proxies.for_call(target, address))
            except aiohttp.ClientConnectorError as exc:
                refused = exc.os_error  # nothing was sent: try the next checked address
            except TimeoutError as exc:
                raise ActionError(f"timeout: {where}: {type(exc).__name__} after at most {timeout:g}s",
                                  transient=True) from None
            except aiohttp.InvalidURL as exc:
                raise ActionError(f"request failed: {where}: {type(exc).__name__}", transient=False) from None
            except aiohttp.ClientResponseError as exc:
                # the answer was not HTTP; the message only (aiohttp's str() adds the URL, query and all)
                raise ActionError(f"connection: {where}: {type(exc).__name__}: {exc.message}",
                                  transient=True) from None
            except aiohttp.ClientError as exc:
                # the connection broke: another attempt may do better
                raise ActionError(f"connection: {where}: {type(exc).__name__}: {exc}", transient=True) from None
            except ValueError as exc:
                raise ActionError(f"request failed: {where}: {type(exc).__name__}: {exc}",
                                  transient=False) from None
        tried = ", ".join(str(a) for a in target.addresses)
        raise ActionError(f"connection: {where}: cannot connect to {tried}: {refused}", transient=True)

    async def _read_body(self, response: aiohttp.ClientResponse, body: bytearray) -> bool:
        """Read up to ``max_body_bytes`` of the body into *body*; True when it was read to its end.

        A dropped connection keeps what came, as the deadline does (see :meth:`run`).
        """
        try:
            while len(body) < self.max_body_bytes:
                chunk = await response.content.readany()
                if not chunk:
                    return True
                body += chunk[: self.max_body_bytes - len(body)]
        except aiohttp.ClientError:
            pass
        return False


def _classify(code: int, headers: Mapping[str, str], text: str, where: str, now: datetime) -> Outcome:
    if 200 <= code < 300:
        return Outcome(detail=f"{where}: HTTP {code}",
                       result={"status": code, "body": text[:RESULT_BODY_CHARS]})
    said = text[:REASON_BODY_CHARS].strip()
    said = f": {said}" if said else ""
    if 300 <= code < 400:
        location = headers.get("location")
        to = f"to {location[:500]!r}" if location else "without a Location"
        raise ActionError(f"redirect: {where} answered HTTP {code} {to}; redirects are not followed, "
                          "write the final URL in the journey", transient=False, status=code)
    if code in _TRANSIENT_STATUSES or 500 <= code < 600:
        raise ActionError(f"HTTP {code} from {where}{said}", transient=True, status=code,
                          retry_after=retry_after(headers.get("retry-after"), now))
    raise ActionError(f"HTTP {code} from {where}{said}", transient=False, status=code)


HTTP_ACTION = HttpAction()


async def close() -> None:
    """Close the built-in ``http`` action's client on the running event loop (the executor's ``close``)."""
    await HTTP_ACTION.close()
