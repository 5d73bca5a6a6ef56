"""What a provider posted, as bytes and headers: signatures are checked on exactly these bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any
from urllib.parse import unquote_to_bytes

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
        # Nesting needs an opening bracket per level: with few in the whole body (counted in C,
        # strings included), there is no need to walk the parsed value.
        if self.body.count(b"[") + self.body.count(b"{") > MAX_JSON_DEPTH:
            check_depth(value)
        return value

    @cached_property
    def form_pairs(self) -> list[tuple[str, str]]:
        """The form body's fields in order, repeats kept; parsed once (signature check, then reading).

        What ``parse_qsl(text, keep_blank_values=True)`` gives, without its per-field
        unquoting where a field has nothing to unquote (most of a webhook's fields)."""
        pairs = []
        for field_ in self.text().split("&"):
            if not field_:
                continue
            name, _, value = field_.partition("=")
            pairs.append((_unquote_plus(name), _unquote_plus(value)))
        return pairs

    def form(self) -> dict[str, str]:
        return dict(self.form_pairs)


def _unquote_plus(text: str) -> str:
    """``unquote_plus``, with its work skipped where there is nothing to decode.

    The bytes are decoded as UTF-8 with replacement, as ``unquote`` does."""
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "replace")


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
