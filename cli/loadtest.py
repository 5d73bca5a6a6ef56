"""``journeys loadtest URL``: signed webhooks at a rate, with throughput and latency.

Every request is a new, correctly signed event (Standard Webhooks for ``events`` sources,
X-Twilio-Signature for ``twilio``), so the server does its full work: verify, normalize,
store. With ``--rate 0`` requests go as fast as the connections allow. Only talk to
servers you run: this is a load generator.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from journeys.errors import UsageError


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

    def summary(self) -> str:
        total = sum(self.statuses.values())
        rate = self.ok / self.elapsed if self.elapsed else 0.0
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        errors = ", ".join(f"{name}: {n}" for name, n in self.errors.items())
        median = statistics.median(self.latencies) * 1000 if self.latencies else 0.0
        lines = [
            f"{total} requests in {self.elapsed:.2f} s ({codes}{'; errors ' + errors if errors else ''})",
            f"throughput: {rate:,.0f} accepted requests/s",
            f"latency: p50 {median:.1f} ms, p90 {self.percentile(0.90):.1f} ms, p99 {self.percentile(0.99):.1f} ms, "
            f"max {max(self.latencies, default=0) * 1000:.1f} ms",
        ]
        return "\n".join(lines)


def events_request(secret: str, contacts: int, n: int) -> tuple[bytes, dict[str, str]]:
    from ingest.providers.events import sign

    event_id = uuid.uuid4().hex
    body = (b'{"id":"' + event_id.encode() + b'","type":"invoice.overdue","contact":{"id":"c-'
            + str(n % contacts).encode() + b'"},"data":{"amount_due":40,"invoice_id":"INV-'
            + str(n).encode() + b'"}}')
    stamp = int(time.time())
    return body, {"content-type": "application/json", "webhook-id": f"msg_{event_id}",
                  "webhook-timestamp": str(stamp), "webhook-signature": sign(secret, f"msg_{event_id}", stamp, body)}


def twilio_request(token: str, public_url: str, contacts: int, n: int) -> tuple[bytes, dict[str, str]]:
    from ingest.providers.twilio import signature

    params = {"MessageSid": f"SM{uuid.uuid4().hex}", "MessageStatus": "delivered", "AccountSid": "AC0",
              "From": "+15005550006", "To": f"+1555{n % contacts:07d}"}
    sig = signature(token, public_url, list(params.items()))
    return urlencode(params).encode(), {"content-type": "application/x-www-form-urlencoded",
                                        "x-twilio-signature": sig}


class _Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams.

    A general-purpose client spends more time in its pool than a journeys server spends on a
    webhook; a load generator that is slower than the server measures itself.
    """

    def __init__(self, host: str, port: int, tls: bool) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls or None)
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, make: Any, *, duration: float, concurrency: int, rate: float,
                   max_requests: int = 0) -> Result:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    result = Result()
    counter = iter(range(10**12))
    deadline = time.perf_counter() + duration
    interval = concurrency / rate if rate else 0.0

    async def worker(number: int) -> None:
        connection = _Connection(host, port, tls)
        # paced: the connections take turns, rather than all sending at once every interval
        next_at = time.perf_counter() + interval * number / concurrency - interval
        try:
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    return
                n = next(counter)
                if max_requests and n >= max_requests:
                    return
                if interval:
                    next_at += interval
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                body, headers = make(n)
                start = time.perf_counter()
                try:
                    status = await connection.post(path, body, headers)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    result.errors[type(exc).__name__] += 1
                    await connection.close()
                    continue
                result.latencies.append(time.perf_counter() - start)
                result.statuses[status] += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def run(url: str, provider: str, secret: str | None, public_url: str | None, duration: float,
        concurrency: int, rate: float, contacts: int, requests: int) -> int:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r} is not an http(s) URL")
    if provider == "events":
        if not secret:
            raise UsageError("--secret whsec_... is required for an events source")
        key = secret

        def make(n: int) -> tuple[bytes, dict[str, str]]:
            return events_request(key, contacts, n)
    else:
        if not secret:
            raise UsageError("--secret (the auth token) is required for a twilio source")
        token, signed_url = secret, public_url or url

        def make(n: int) -> tuple[bytes, dict[str, str]]:
            return twilio_request(token, signed_url, contacts, n)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"loadtest {url} ({provider}) from {started}: {concurrency} connections, "
          f"{'as fast as possible' if not rate else f'{rate:,.0f} requests/s'}, {duration:.0f} s")
    result = asyncio.run(run_load(url, make, duration=duration, concurrency=concurrency, rate=rate,
                                  max_requests=requests))
    print(result.summary())
    return 0 if result.ok else 1
