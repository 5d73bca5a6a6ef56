"""Errors of the ingest endpoint, each with the HTTP status a provider should see.

A provider retries on 5xx and 429 and gives up on other 4xx, so the status is part of
the contract: storage down must be 503 (retry later, nothing was acknowledged), a forged
signature 401 (never retried into success).
"""

from __future__ import annotations

from journeys.errors import JourneysError


class IngestError(JourneysError):
    status_code = 400

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MalformedError(IngestError):
    status_code = 400


class SignatureError(IngestError):
    status_code = 401


class UnknownSourceError(IngestError):
    status_code = 404


class TooLargeError(IngestError):
    status_code = 413


class ContentTypeError(IngestError):
    status_code = 415


class RateLimitedError(IngestError):
    status_code = 429


class StorageUnavailableError(IngestError):
    status_code = 503
