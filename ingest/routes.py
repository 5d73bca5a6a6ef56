"""``/ingest/{source}``: limits, verification on the raw bytes, normalization, group commit.

Order matters: the source must exist (404) and have budget (429) before we read a byte;
the body must fit (413) before we hash it; the signature must hold (401) before we parse
it; only a verified, well-formed request (400, 415) is stored, and the answer comes after
the commit (503 when storage fails, so the provider retries).

The endpoint is a plain ASGI app mounted in the Litestar app at ``/ingest``, not a Litestar
handler. Webhooks are the one hot path of the server, and Litestar's per-request machinery
(parameter extraction, Request and Response objects, its middleware) costs more than
verifying and normalizing a webhook does: about 55 µs a request on the benchmark machine,
a third of a bare Litestar endpoint's time. Everything a webhook needs (bytes, headers,
query string) is in the ASGI scope as sent, which is also what signatures are computed
over. ingest.openapi describes it in the OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from litestar import asgi
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Receive, Scope, Send

from ingest import providers
from ingest.committer import Committer, cleaned
from ingest.errors import IngestError, MalformedError, RateLimitedError, TooLargeError, UnknownSourceError
from ingest.optout import with_keywords
from ingest.providers.base import Reply
from ingest.ratelimit import Bucket
from ingest.request import RawRequest
from journeys.config import Config, SourceConfig

JSON = "application/json"


class Ingest:
    """What the ingest endpoint needs, kept in app.state["ingest"]."""

    def __init__(self, config: Config, committer: Committer) -> None:
        self.config = config
        self.committer = committer
        self.buckets = {name: Bucket(s.rate_limit[0], s.rate_limit[1])
                        for name, s in config.sources.items() if s.rate_limit}
        self.accepted = 0
        self.duplicates = 0

    def source(self, name: str) -> SourceConfig:
        source = self.config.sources.get(name)
        if source is None:
            raise UnknownSourceError(f"no source {name!r} in config.yaml")
        return source

    async def post(self, name: str, scope: HTTPScope, receive: Receive) -> Reply:
        config = self.source(name)
        bucket = self.buckets.get(name)
        if bucket is not None:
            wait = bucket.take()
            if wait:
                raise RateLimitedError(f"over the rate limit of source {name!r}", retry_after=wait)
        raw = await _raw(scope, receive, name, config)
        provider = providers.get(config.provider)
        provider.verify(raw, config)
        items = with_keywords(cleaned(provider.normalize(raw, config)), self.config.policies)
        outcome = await self.committer.submit(name, config.provider, items, raw.received_at)
        self.accepted += outcome.stored
        self.duplicates += outcome.duplicates
        return provider.reply(raw, items)

    async def get(self, name: str, scope: HTTPScope, receive: Receive) -> Reply:
        """The subscription handshake of providers that verify an endpoint with a GET (Meta)."""
        config = self.source(name)
        provider = providers.get(config.provider)
        check = getattr(provider, "handshake", None)
        if check is None:
            return _json(405, {"error": f"source {name!r} takes POST only"})
        raw = await _raw(scope, receive, name, config)
        body: bytes = check(raw, config)
        return Reply(200, body, "text/plain; charset=utf-8")


def _json(status: int, value: Any) -> Reply:
    return Reply(status, json.dumps(value).encode(), JSON)


async def _raw(scope: HTTPScope, receive: Receive, name: str, source: SourceConfig) -> RawRequest:
    """The request as sent; refuses a body over the source's limit before reading it whole."""
    limit = source.max_body_bytes
    headers: Mapping[str, str] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the body is {declared} bytes; this source accepts {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: nothing to answer, nothing stored
            raise MalformedError("the connection closed before the whole body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the body is over {limit} bytes; this source accepts {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return RawRequest(method=scope["method"], path=f"/ingest/{name}",
                      query=scope.get("query_string", b"").decode("latin-1"), headers=headers,
                      body=b"".join(chunks), received_at=datetime.now(UTC))


@lru_cache(maxsize=256)
def _headers(media_type: str, length: int, retry_after: int | None) -> list[tuple[bytes, bytes]]:
    """The response's headers: a provider's replies are few, and the same every time.

    Shared between responses: servers copy them rather than change them (ASGI)."""
    headers = [(b"content-type", media_type.encode()), (b"content-length", str(length).encode())]
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    return headers


async def _send(send: Send, reply: Reply, retry_after: int | None = None) -> None:
    headers = _headers(reply.media_type, len(reply.body), retry_after)
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": reply.status, "headers": headers}
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": reply.body, "more_body": False}
    await send(start)
    await send(body)


@asgi("/ingest", is_mount=True, copy_scope=False)  # the scope is only read
async def ingest_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /ingest/{source}`` and ``GET /ingest/{source}`` (see the module's docstring)."""
    http = cast("HTTPScope", scope)  # a mount only sees HTTP requests
    state: Ingest = http["app"].state["ingest"]
    # the mount leaves the rest of the path: "/twilio" or "/twilio/"
    name = http["path"].strip("/")
    method = http["method"]
    try:
        if not name or "/" in name:
            raise UnknownSourceError(f"no such path: {scope['path']!r} under /ingest; post to /ingest/<source>")
        if method == "POST":
            reply = await state.post(name, http, receive)
        elif method == "GET":
            reply = await state.get(name, http, receive)
        else:
            reply = _json(405, {"error": f"{method} is not allowed here: POST webhooks to /ingest/{name}"})
    except IngestError as exc:
        await _send(send, _json(exc.status_code, {"error": exc.message}), exc.retry_after)
        return
    await _send(send, reply)


ROUTES = [ingest_endpoint]
