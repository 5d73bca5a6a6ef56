"""Benchmark: CPU time of this process per HTTP POST, for the ``http`` action and HTTP clients side by side.

Run by hand (not collected by pytest):

    python tests/benchmarks/bench_http_client.py                  # 5,000 requests per figure
    python tests/benchmarks/bench_http_client.py -n 2000 --only action,aiohttp

The receiver is a bare asyncio protocol in a process of its own: it answers every request
``HTTP/1.1 200 OK`` with a small JSON body at once and keeps the connection alive. Each
client POSTs a small JSON body with a few headers (as a journey's webhook would), N times
one after the other ("sequential") and N times from 50 tasks sharing the client
("concurrent", so up to 50 connections). Each figure starts with a warm-up, so connections
are open; then ``time.process_time()`` of this process (every thread of it, so a client
that works in threads of its own pays for them) is divided by N.

Rows:

* ``action``: :class:`actions.http.HttpAction` ``.run`` with a real ActionContext, as the
  executor calls it (input checks, the SSRF check, pinning, the capped read, the result);
* ``action-by-name``: the same with ``localhost`` in the URL instead of ``127.0.0.1``: what
  resolving the name once per call costs (getaddrinfo in asyncio's thread pool);
* ``action-httpx-before``: the action's send path on httpx, as ``actions/http.py`` had it
  until it got a client of its own (aiohttp): the same checks, then
  ``httpx.AsyncClient.send`` of a request pinned to the IP, ``stream=True``, the body read
  with ``aiter_raw``;
* ``httpx``, ``aiohttp``: the plain client, ``post`` and read the body;
* ``aiosonic``, ``pyreqwest``, ``niquests``: other maintained clients, if installed
  (skipped otherwise; ``pip install aiosonic pyreqwest niquests``);
* ``floor``: a hand-written asyncio protocol that writes the request bytes and counts the
  answer's bytes (no real parsing): what the event loop and sockets alone cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BODY = {"contact": "c-1", "event": "invoice.overdue", "amount": 12.5, "tags": ["a", "b"]}
HEADERS = {"Authorization": "Bearer t0k", "X-Tenant": "acme", "Content-Type": "application/json"}
ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CONCURRENCY = 50

# --- the receiver ---------------------------------------------------------------------------


def receiver_main() -> None:
    class Hook(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                length = 0
                at = head.find(b"content-length:")
                if at >= 0:
                    length = int(head[at + 15:].split(b"\r\n", 1)[0])
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                self.transport.write(ANSWER)
                if b"connection: close" in head:
                    self.transport.close()
                    return

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hook, "127.0.0.1", 0, backlog=1024)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())


# --- the clients: each a factory of (one POST, close) ----------------------------------------

Post = Callable[[int], Awaitable[None]]
Client = tuple[Post, Callable[[], Awaitable[None]]]


def _ctx(url: str, http: Any, n: int) -> Any:
    from actions.base import ActionContext
    from actions.templates import TemplateStore
    from journeys.config import Config, Policies

    return ActionContext(
        job_id=f"inst-{n}:0:0", action="http", instance_id=f"inst-{n}", journey="bench", attempt=1,
        inputs={"url": url, "headers": {"Authorization": "Bearer t0k", "X-Tenant": "acme"}, "json": BODY},
        contact=None, vars={}, config=Config(sources={}, channels={}, policies=Policies(
            http_allow_networks=("127.0.0.0/8", "::1/128"))),
        templates=TemplateStore(None), http=http, now=datetime.now(UTC), timeout=10.0, message_id="msg-1")


async def action_client(url: str) -> Client:
    import httpx

    from actions.http import HttpAction

    action = HttpAction()
    http = httpx.AsyncClient(trust_env=False)  # ActionContext.http, as the executor makes it

    async def post(n: int) -> None:
        out = await action.run(_ctx(url, http, n))
        assert out.result["status"] == 200, out

    async def close() -> None:
        await http.aclose()
        closer = getattr(action, "close", None)
        if closer is not None:
            await closer()

    return post, close


async def action_by_name_client(url: str) -> Client:
    return await action_client(url.replace("127.0.0.1", "localhost"))


async def action_httpx_before_client(url: str) -> Client:
    """The httpx send path of actions/http.py before it had a client of its own, kept here to compare."""
    import httpx

    from actions.base import Outcome
    from actions.http import _read_inputs
    from actions.net import describe, parse_url, resolve_url

    http = httpx.AsyncClient(trust_env=False)

    async def post(n: int) -> None:
        ctx = _ctx(url, http, n)
        call = _read_inputs(ctx.inputs, ctx.job_id)
        where = f"{call.method} {describe(parse_url(call.url))}"
        deadline = asyncio.get_running_loop().time() + ctx.timeout
        async with asyncio.timeout_at(deadline):
            target = await resolve_url(call.url, ctx.config.policies.http_allow_networks)
            headers = [(b"Host", target.host_header.encode("ascii")), *call.headers]
            extensions: dict[str, Any] = {"timeout": httpx.Timeout(ctx.timeout).as_dict()}
            request = httpx.Request(call.method, httpx.URL(url).copy_with(host=str(target.addresses[0])),
                                    headers=headers, content=call.content, extensions=extensions)
            response = await http.send(request, stream=True, follow_redirects=False)
        body = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.aiter_raw():
                    body += chunk
        finally:
            await response.aclose()
        response.headers.get("content-encoding", "")
        text = bytes(body).decode(response.charset_encoding or "utf-8", errors="replace")
        assert response.status_code == 200
        Outcome(detail=f"{where}: HTTP {response.status_code}",
                result={"status": response.status_code, "body": text[:2000]})

    return post, http.aclose


async def httpx_client(url: str) -> Client:
    import httpx

    http = httpx.AsyncClient(trust_env=False)
    content = json.dumps(BODY).encode()

    async def post(n: int) -> None:
        response = await http.post(url, content=content, headers={**HEADERS, "Idempotency-Key": str(n)})
        assert response.status_code == 200

    return post, http.aclose


async def aiohttp_client(url: str) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(trust_env=False, auto_decompress=False)
    content = json.dumps(BODY).encode()

    async def post(n: int) -> None:
        async with session.post(url, data=content, headers={**HEADERS, "Idempotency-Key": str(n)},
                                allow_redirects=False) as response:
            await response.read()
            assert response.status == 200

    return post, session.close


async def aiosonic_client(url: str) -> Client:
    import aiosonic

    client = aiosonic.HTTPClient()
    content = json.dumps(BODY).encode()

    async def post(n: int) -> None:
        response = await client.post(url, data=content, headers={**HEADERS, "Idempotency-Key": str(n)})
        await response.content()
        assert response.status_code == 200

    async def close() -> None:
        await client.connector.cleanup()

    return post, close


async def pyreqwest_client(url: str) -> Client:
    from pyreqwest.client import ClientBuilder

    client = await ClientBuilder().follow_redirects(False).build().__aenter__()
    content = json.dumps(BODY).encode()

    async def post(n: int) -> None:
        response = await client.post(url).headers({**HEADERS, "Idempotency-Key": str(n)}).body_bytes(
            content).build().send()
        await response.bytes()
        assert response.status == 200

    return post, client.close


async def niquests_client(url: str) -> Client:
    import niquests

    session = niquests.AsyncSession(pool_maxsize=CONCURRENCY)
    session.trust_env = False
    content = json.dumps(BODY).encode()

    async def post(n: int) -> None:
        response = await session.post(url, data=content, headers={**HEADERS, "Idempotency-Key": str(n)},
                                      allow_redirects=False)
        assert response.status_code == 200

    return post, session.close


async def floor_client(url: str) -> Client:
    """One request at a time per connection, a pool of idle connections: the least a client does."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    content = json.dumps(BODY).encode()
    loop = asyncio.get_running_loop()

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.waiter: asyncio.Future[None] | None = None
            self.got = 0

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= len(ANSWER) and self.waiter is not None:
                self.waiter.set_result(None)

    idle: list[Conn] = []

    async def post(n: int) -> None:
        conn = idle.pop() if idle else (await loop.create_connection(Conn, host, int(port)))[1]
        head = "".join(f"{k}: {v}\r\n" for k, v in {**HEADERS, "Idempotency-Key": str(n)}.items())
        conn.got = 0
        conn.waiter = loop.create_future()
        conn.transport.write(f"POST /hook HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: "
                             f"{len(content)}\r\n\r\n".encode() + content)
        await conn.waiter
        idle.append(conn)

    async def close() -> None:
        for conn in idle:
            conn.transport.close()

    return post, close


CLIENTS: dict[str, Callable[[str], Awaitable[Client]]] = {
    "action": action_client,
    "action-by-name": action_by_name_client,
    "action-httpx-before": action_httpx_before_client,
    "httpx": httpx_client,
    "aiohttp": aiohttp_client,
    "aiosonic": aiosonic_client,
    "pyreqwest": pyreqwest_client,
    "niquests": niquests_client,
    "floor": floor_client,
}


# --- measuring ---------------------------------------------------------------------------------


async def measure(post: Post, n: int, concurrency: int) -> tuple[float, float]:
    """CPU µs per request of this process, and requests per second of wall time."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await post(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / n * 1e6, n / wall


async def bench(port: int, n: int, names: list[str]) -> None:
    url = f"http://127.0.0.1:{port}/hook"
    print(f"{'client':<22}{'sequential':>24}{f'{CONCURRENCY} concurrent':>26}")
    print(f"{'':<22}{'CPU µs/req':>12}{'req/s':>12}{'CPU µs/req':>14}{'req/s':>12}")
    for name in names:
        try:
            post, close = await CLIENTS[name](url)
        except ImportError as exc:
            print(f"{name:<22}  skipped: {exc}")
            continue
        try:
            figures: list[float] = []
            for concurrency in (1, CONCURRENCY):
                warm = iter(range(n, n + max(200, 4 * concurrency)))

                async def warm_up(post: Post = post, warm: Any = warm) -> None:
                    for i in warm:
                        await post(i)

                await asyncio.gather(*(warm_up() for _ in range(concurrency)))
                figures.extend(await measure(post, n, concurrency))
        finally:
            await close()
        print(f"{name:<22}{figures[0]:>12.0f}{figures[1]:>12.0f}{figures[2]:>14.0f}{figures[3]:>12.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="requests per figure (default 5000)")
    parser.add_argument("--only", help=f"comma-separated rows of {', '.join(CLIENTS)}")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        receiver_main()
        return
    names = args.only.split(",") if args.only else list(CLIENTS)
    unknown = set(names) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    receiver = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline().split()[1])
        print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}; "
              f"{args.n} POSTs per figure to a receiver process on 127.0.0.1:{port}")
        asyncio.run(bench(port, args.n, names))
    finally:
        receiver.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.wait(5)


if __name__ == "__main__":
    main()
