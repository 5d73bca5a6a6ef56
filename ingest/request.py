"""What a provider posted, as bytes and headers: signatures are checked on exactly these bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from ingest.errors import ContentTypeError, MalformedError

MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    query: str  # the raw query string, as sent
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    received_at: datetime
    query_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    def require_media_type(self, *allowed: str) -> str:
        kind = self.media_type
        if kind not in allowed:
            raise ContentTypeError(f"content type {kind or 'none'!r} is not accepted here: send {' or '.join(allowed)}")
        return kind

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError(f"the body is not UTF-8 (byte {exc.start})") from exc

    def json(self) -> Any:
        try:
            value = json.loads(self.text())
        except ValueError as exc:
            raise MalformedError(f"the body is not JSON: {exc}") from exc
        check_depth(value)
        return value

    def form(self) -> dict[str, str]:
        try:
            pairs = parse_qsl(self.text(), keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise MalformedError(f"the body is not a form: {exc}") from exc
        return dict(pairs)


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than *limit* (a cheap way to make parsers and us work hard)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise MalformedError(f"the JSON is nested deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
