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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from actions.base import ActionContext, ActionError, Outcome
from actions.net import Target, describe, parse_url, resolve_url
from actions.retry import retry_after

MAX_BODY_BYTES = 1_048_576
RESULT_BODY_CHARS = 2_000
REASON_BODY_CHARS = 200
USER_AGENT = "journeys"

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the action sets itself: a journey's headers of these names are ignored.
_OURS = frozenset({"host", "idempotency-key", "content-length", "transfer-encoding", "connection",
                   "accept-encoding", "te", "trailer", "upgrade", "keep-alive", "proxy-connection"})
_TRANSIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    headers: tuple[tuple[bytes, bytes], ...]
    content: bytes | None


def _bad(reason: str) -> ActionError:
    return ActionError(f"invalid http inputs: {reason}", transient=False)


def _header_value(name: str, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(f"header {name!r} must be a string, not {type(value).__name__}")
    text = str(value)
    if any(c in text for c in "\r\n\0"):
        raise _bad(f"header {name!r} contains a line break or NUL")
    return text.strip().encode("utf-8")


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
    headers: dict[str, tuple[bytes, bytes]] = {}  # lower-case name -> (name, value)
    for name, value in raw_headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _bad(f"{name!r} is not a header name")
        if name.lower() in _OURS:
            continue
        headers[name.lower()] = (name.encode("ascii"), _header_value(name, value))

    json_value, body = inputs.get("json"), inputs.get("body")
    content: bytes | None = None
    if json_value is not None and body is not None:
        raise _bad("give json or body, not both")
    if json_value is not None:
        try:
            content = json.dumps(json_value, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise _bad(f"json cannot be encoded: {exc}") from None
        headers.setdefault("content-type", (b"Content-Type", b"application/json"))
    elif body is not None:
        if isinstance(body, str):
            content = body.encode("utf-8")
        elif isinstance(body, bytes):
            content = body
        else:
            raise _bad(f"body must be a string, not {type(body).__name__} (use json for structured data)")
        headers.setdefault("content-type", (b"Content-Type", b"text/plain; charset=utf-8"))

    headers.setdefault("user-agent", (b"User-Agent", USER_AGENT.encode()))
    headers.setdefault("accept", (b"Accept", b"*/*"))
    headers["accept-encoding"] = (b"Accept-Encoding", b"identity")
    headers["idempotency-key"] = (b"Idempotency-Key", _header_value("Idempotency-Key", job_id))
    return _Call(method, url, tuple(headers.values()), content)


def _decode(raw: bytes, response: httpx.Response, cap: int) -> str:
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        # asked for identity, got compressed anyway: inflate at most `cap` bytes
        wbits = 47 if encoding != "deflate" else 15  # 32+15: gzip or zlib header
        with contextlib.suppress(zlib.error):
            raw = zlib.decompressobj(wbits).decompress(raw, cap)
    charset = response.charset_encoding or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


class HttpAction:
    """The built-in ``http`` action (see the module docstring)."""

    name = "http"

    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.max_body_bytes = max_body_bytes

    async def run(self, ctx: ActionContext) -> Outcome:
        call = _read_inputs(ctx.inputs, ctx.job_id)
        where = f"{call.method} {describe(parse_url(call.url))}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.timeout
        try:
            async with asyncio.timeout_at(deadline):
                target = await resolve_url(call.url, ctx.config.policies.http_allow_networks)
                response = await self._send(ctx, call, target, where)
        except TimeoutError:
            raise ActionError(f"timeout: no response from {where} within {ctx.timeout:g}s",
                              transient=True) from None
        try:
            raw = await self._read_body(response, deadline)
        finally:
            await response.aclose()
        text = _decode(raw, response, self.max_body_bytes)
        return _classify(response, text, where, ctx.now)

    async def _send(self, ctx: ActionContext, call: _Call, target: Target, where: str) -> httpx.Response:
        headers: list[tuple[bytes, bytes]] = [(b"Host", target.host_header.encode("ascii")), *call.headers]
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(ctx.timeout).as_dict()}
        if target.url.scheme == "https" and target.host_is_name:
            # certificate and SNI for the name; never reuse this IP-keyed TLS connection
            extensions["sni_hostname"] = target.host
            headers.append((b"Connection", b"close"))
        refused: httpx.ConnectError | None = None
        for address in target.addresses:
            request = httpx.Request(call.method, target.pinned(address), headers=headers,
                                    content=call.content, extensions=extensions)
            try:
                return await ctx.http.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                refused = exc  # nothing was sent: try the next checked address
            except httpx.TimeoutException as exc:
                raise ActionError(f"timeout: {where}: {type(exc).__name__} after at most {ctx.timeout:g}s",
                                  transient=True) from None
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
                raise ActionError(f"connection: {where}: {type(exc).__name__}: {exc}", transient=True) from None
            except httpx.HTTPError as exc:
                raise ActionError(f"request failed: {where}: {type(exc).__name__}: {exc}",
                                  transient=False) from None
        tried = ", ".join(str(a) for a in target.addresses)
        raise ActionError(f"connection: {where}: cannot connect to {tried}: {refused}", transient=True)

    async def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        """Up to ``max_body_bytes`` of the body; a cut-off (deadline, dropped connection) keeps what came."""
        body = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.aiter_raw():
                    body += chunk[: self.max_body_bytes - len(body)]
                    if len(body) >= self.max_body_bytes:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass
        return bytes(body)


def _classify(response: httpx.Response, text: str, where: str, now: datetime) -> Outcome:
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(detail=f"{where}: HTTP {code}",
                       result={"status": code, "body": text[:RESULT_BODY_CHARS]})
    said = text[:REASON_BODY_CHARS].strip()
    said = f": {said}" if said else ""
    if 300 <= code < 400:
        location = response.headers.get("location")
        to = f"to {location[:500]!r}" if location else "without a Location"
        raise ActionError(f"redirect: {where} answered HTTP {code} {to}; redirects are not followed, "
                          "write the final URL in the journey", transient=False, status=code)
    if code in _TRANSIENT_STATUSES or 500 <= code < 600:
        raise ActionError(f"HTTP {code} from {where}{said}", transient=True, status=code,
                          retry_after=retry_after(response.headers.get("retry-after"), now))
    raise ActionError(f"HTTP {code} from {where}{said}", transient=False, status=code)


HTTP_ACTION = HttpAction()
