"""``journeys loadtest URL``: signed webhooks at a rate, with throughput and latency.

Every request is a new, correctly signed event (Standard Webhooks for ``events`` sources,
X-Twilio-Signature for ``twilio``), so the server does its full work: verify, normalize,
store. With ``--rate 0`` requests go as fast as the connections allow. Only talk to
servers you run: this is a load generator.

A run has up to two phases on the same connections: the steady one (``--duration`` at
``--rate``), then an optional burst (``--burst N`` requests and/or ``--burst-for S``
seconds, at ``--burst-rate``, by default as fast as the connections allow). Each phase's
acknowledgement latency is reported on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
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

    def summary(self, indent: str = "") -> str:
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
        return "\n".join(indent + line for line in lines)


DEFAULT_TYPE = "invoice.overdue"
DEFAULT_DATA = '{"amount_due":40,"invoice_id":"INV-{n}"}'


class EventData:
    """The ``data`` of each event: a JSON object whose strings may hold ``{n}`` (the request's
    number, from 0, unique in the run) and ``{time}`` (the Unix time the request is made, in
    seconds with microseconds, for measuring latency end to end)."""

    def __init__(self, text: str) -> None:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--data is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError("--data must be a JSON object (the event's data)")
        self.text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self.has_n, self.has_time = "{n}" in self.text, "{time}" in self.text

    def render(self, n: int) -> bytes:
        text = self.text
        if self.has_n:
            text = text.replace("{n}", str(n))
        if self.has_time:
            text = text.replace("{time}", f"{time.time():.6f}")
        return text.encode()


_DEFAULT_DATA = EventData(DEFAULT_DATA)


def events_request(secret: str, contacts: int, n: int, kind: str = DEFAULT_TYPE,
                   data: EventData = _DEFAULT_DATA) -> tuple[bytes, dict[str, str]]:
    from ingest.providers.events import sign

    event_id = uuid.uuid4().hex
    who = n % contacts
    # a phone, so that a journey's SMS to the contact goes out (the Twilio callbacks use the same numbers)
    body = (b'{"id":"' + event_id.encode() + b'","type":' + json.dumps(kind).encode() + b',"contact":{"id":"c-'
            + str(who).encode() + b'","phone":"+1555' + b"%07d" % who + b'"},"data":' + data.render(n) + b'}')
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


@dataclass(frozen=True)
class Phase:
    """A part of a run: *duration* seconds (0: no time limit) at *rate* requests/s in total
    (0: as fast as the connections allow), at most *requests* of them (0: no limit)."""

    name: str
    duration: float
    rate: float
    requests: int = 0

    def describe(self) -> str:
        pace = "as fast as possible" if not self.rate else f"{self.rate:,.0f} requests/s"
        limits = ([f"{self.duration:g} s"] if self.duration else []) + (
            [f"at most {self.requests:,} requests" if self.duration else f"{self.requests:,} requests"]
            if self.requests else [])
        return f"{pace}, {' or '.join(limits)}"


@dataclass
class _PhaseState:
    start: float = 0.0
    deadline: float = float("inf")
    end: float = 0.0
    taken: itertools.count[int] = field(default_factory=itertools.count)
    entered: bool = False


async def run_load(url: str, make: Any, *, duration: float, concurrency: int, rate: float,
                   max_requests: int = 0) -> Result:
    """One phase: as fast as possible or at *rate*, for *duration* s or *max_requests* requests."""
    return (await run_phases(url, make, [Phase("load", duration, rate, max_requests)], concurrency=concurrency))[0]


async def run_phases(url: str, make: Any, phases: list[Phase], *, concurrency: int) -> list[Result]:
    """The phases one after the other on the same keep-alive connections; a Result each.

    A phase starts when the first connection is done with the one before, and ends at its
    deadline or once its requests are taken; its elapsed time runs to its last answer. At a
    rate, each connection sends once per ``concurrency / rate`` seconds, the connections in
    turn; one that falls behind sends at once until it is on time again.
    """
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    results = [Result() for _ in phases]
    states = [_PhaseState() for _ in phases]
    numbers = itertools.count()  # the request numbers (make's n), unique over the whole run

    async def send(connection: _Connection, result: Result, state: _PhaseState) -> None:
        body, headers = make(next(numbers))
        start = time.perf_counter()
        try:
            status = await connection.post(path, body, headers)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            result.errors[type(exc).__name__] += 1
            await connection.close()
        else:
            result.latencies.append(time.perf_counter() - start)
            result.statuses[status] += 1
        state.end = max(state.end, time.perf_counter())

    async def worker(number: int) -> None:
        connection = _Connection(host, port, tls)
        try:
            for phase, result, state in zip(phases, results, states, strict=True):
                if not state.entered:
                    state.entered, state.start = True, time.perf_counter()
                    state.end = state.start
                    if phase.duration:
                        state.deadline = state.start + phase.duration
                interval = concurrency / phase.rate if phase.rate else 0.0
                # paced: the connections take turns, rather than all sending at once every interval
                next_at = state.start + interval * number / concurrency - interval
                while True:
                    now = time.perf_counter()
                    if now >= state.deadline:
                        break
                    if phase.requests and next(state.taken) >= phase.requests:
                        break
                    if interval:
                        next_at += interval
                        if next_at > now:
                            await asyncio.sleep(next_at - now)
                            if time.perf_counter() >= state.deadline:
                                break
                    await send(connection, result, state)
        finally:
            await connection.close()

    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    for result, state in zip(results, states, strict=True):
        result.elapsed = state.end - state.start
    return results


def phases_of(duration: float, rate: float, requests: int, burst: int, burst_for: float,
              burst_rate: float) -> list[Phase]:
    """The steady phase (unless *duration* is 0), then the burst when one is asked for."""
    if duration < 0 or burst < 0 or burst_for < 0 or rate < 0 or burst_rate < 0 or requests < 0:
        raise UsageError("durations, rates and request counts cannot be negative")
    out = [Phase("steady", duration, rate, requests)] if duration else []
    if burst or burst_for:
        out.append(Phase("burst", burst_for, burst_rate, burst))
    elif burst_rate:
        raise UsageError("--burst-rate needs --burst N (requests) or --burst-for S (seconds)")
    if not out:
        raise UsageError("nothing to send: --duration is 0 and there is no --burst")
    return out


def run(url: str, provider: str, secret: str | None, public_url: str | None, duration: float,
        concurrency: int, rate: float, contacts: int, requests: int, *, kind: str | None = None,
        data: str | None = None, burst: int = 0, burst_for: float = 0.0, burst_rate: float = 0.0) -> int:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r} is not an http(s) URL")
    if concurrency < 1 or contacts < 1:
        raise UsageError("--concurrency and --contacts must be at least 1")
    phases = phases_of(duration, rate, requests, burst, burst_for, burst_rate)
    if provider == "events":
        if not secret:
            raise UsageError("--secret whsec_... is required for an events source")
        key, event_type, event_data = secret, kind or DEFAULT_TYPE, EventData(data or DEFAULT_DATA)

        def make(n: int) -> tuple[bytes, dict[str, str]]:
            return events_request(key, contacts, n, event_type, event_data)
    else:
        if kind is not None or data is not None:
            raise UsageError("--type and --data are for events sources; a twilio run sends status callbacks")
        if not secret:
            raise UsageError("--secret (the auth token) is required for a twilio source")
        token, signed_url = secret, public_url or url

        def make(n: int) -> tuple[bytes, dict[str, str]]:
            return twilio_request(token, signed_url, contacts, n)

    started = datetime.now(UTC).isoformat(timespec="seconds")
    what = "; then ".join(f"{p.name + ': ' if len(phases) > 1 else ''}{p.describe()}" for p in phases)
    if len(phases) == 1 and phases[0].name == "steady" and not requests:
        # the line as it always was
        what = f"{'as fast as possible' if not rate else f'{rate:,.0f} requests/s'}, {duration:.0f} s"
    print(f"loadtest {url} ({provider}) from {started}: {concurrency} connections, {what}")
    results = asyncio.run(run_phases(url, make, phases, concurrency=concurrency))
    if len(phases) == 1:
        print(results[0].summary())
    else:
        for phase, result in zip(phases, results, strict=True):
            print(f"{phase.name}:")
            print(result.summary(indent="  "))
    # every phase must have had something accepted (a burst nobody took is a failure too)
    return 0 if all(result.ok for result in results) else 1
