"""``POST /ingest/{source}``: limits, verification on the raw bytes, normalization, group commit.

Order matters: the source must exist (404) and have budget (429) before we read a byte;
the body must fit (413) before we hash it; the signature must hold (401) before we parse
it; only a verified, well-formed request (400, 415) is stored, and the answer comes after
the commit (503 when storage fails, so the provider retries).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath

from ingest import providers
from ingest.committer import Committer, cleaned
from ingest.errors import IngestError, RateLimitedError, TooLargeError, UnknownSourceError
from ingest.optout import with_keywords
from ingest.ratelimit import Bucket
from ingest.request import RawRequest
from journeys.config import Config, SourceConfig

# The largest body any source may configure; each source's own limit is checked after.
MAX_BODY = 16 * 1024 * 1024


class Ingest:
    """What the ingest routes need, kept in app.state["ingest"]."""

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


def _error(exc: IngestError) -> Response[Any]:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    return Response({"error": exc.message}, status_code=exc.status_code, headers=headers)


async def _raw(request: Request[Any, Any, Any], source: SourceConfig) -> RawRequest:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > source.max_body_bytes:
        raise TooLargeError(f"the body is {declared} bytes; this source accepts {source.max_body_bytes}")
    body = await request.body()
    if len(body) > source.max_body_bytes:
        raise TooLargeError(f"the body is {len(body)} bytes; this source accepts {source.max_body_bytes}")
    headers: Mapping[str, str] = {k.lower(): v for k, v in request.headers.items()}
    return RawRequest(method=request.method, path=request.url.path, query=request.url.query or "",
                      headers=headers, body=body, received_at=datetime.now(UTC))


@post("/ingest/{source:str}", request_max_body_size=MAX_BODY, status_code=200)
async def ingest(request: Request[Any, Any, Any], source: FromPath[str]) -> Response[Any]:
    state: Ingest = request.app.state["ingest"]
    try:
        config = state.source(source)
        bucket = state.buckets.get(source)
        if bucket is not None:
            wait = bucket.take()
            if wait:
                raise RateLimitedError(f"over the rate limit of source {source!r}", retry_after=wait)
        raw = await _raw(request, config)
        provider = providers.get(config.provider)
        provider.verify(raw, config)
        items = with_keywords(cleaned(provider.normalize(raw, config)), state.config.policies)
        outcome = await state.committer.submit(source, config.provider, items, raw.received_at)
    except IngestError as exc:
        return _error(exc)
    state.accepted += outcome.stored
    state.duplicates += outcome.duplicates
    reply = provider.reply(raw, items)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)


@get("/ingest/{source:str}")
async def handshake(request: Request[Any, Any, Any], source: FromPath[str]) -> Response[Any]:
    """The subscription handshake of providers that verify an endpoint with a GET (Meta)."""
    state: Ingest = request.app.state["ingest"]
    try:
        config = state.source(source)
        provider = providers.get(config.provider)
        check = getattr(provider, "handshake", None)
        if check is None:
            return Response({"error": f"source {source!r} takes POST only"}, status_code=405)
        raw = await _raw(request, config)
        body: bytes = check(raw, config)
    except IngestError as exc:
        return _error(exc)
    return Response(body, media_type="text/plain")


ROUTES = [ingest, handshake]
