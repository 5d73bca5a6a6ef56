"""The ``http`` action against a real HTTP receiver on 127.0.0.1, and its SSRF guard.

The receiver is a standard library ThreadingHTTPServer on a free loopback port; it
records every request (and the client port it came from, to tell connections apart) and
answers by path (any status, slow, huge, dripping, redirect, a ticket endpoint that
dedupes by Idempotency-Key). Happy paths allow 127.0.0.0/8 with
``policies.http_allow_networks``; refusals use an action whose connector records and
refuses everything, so nothing is sent anywhere (and no test touches a non-loopback
address: names other than localhost come from a fake resolver).

The action owns its client (an aiohttp session per event loop); every test closes the
actions it used, as the executor does when it stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx
import pytest

import actions.http
from actions.base import ActionContext, ActionError, Outcome
from actions.http import HTTP_ACTION, HttpAction, retry_after
from actions.net import check_url, refusal
from actions.templates import TemplateStore
from journeys.config import Config, Policies

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.0/8",)
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
JOB = "inst-7f3a:4:0"


# --- the receiver -------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: Message
    body: bytes
    port: int  # the client's port: one per connection
    target: str  # the request line's target as sent: absolute (http://...) through a proxy

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    tickets: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    huge_sent: int = 0
    sni: list[str | None] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)  # client ports of connections that ended
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheme: str = "http"

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or stop reading break the pipe: expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def finish(self) -> None:
        super().finish()
        with self.server.receiver.lock:
            self.server.receiver.closed.append(self.client_address[1])

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_CONNECT = do_GET  # noqa: N815

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if code not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code not in (204, 304):
            self.wfile.write(body)

    def _handle(self) -> None:
        rec = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        with rec.lock:
            rec.received.append(Received(self.command, url.path, self.headers, body, self.client_address[1],
                                         self.path))
        path = url.path
        if self.command == "CONNECT":
            self._reply(403, b"no tunnels here")  # as a proxy: record the tunnel asked for, refuse it
        elif path.startswith("/status/"):
            code = int(path.removeprefix("/status/"))
            headers = {"Content-Type": "text/plain"}
            if "retry_after" in q:
                headers["Retry-After"] = q["retry_after"]
            self._reply(code, f"answer {code}".encode(), headers)
        elif path == "/tickets":
            key = self.headers.get("Idempotency-Key", "")
            with rec.lock:
                created = key not in rec.tickets
                if created:
                    rec.tickets[key] = len(rec.tickets) + 1
                ticket = rec.tickets[key]
            answer = json.dumps({"ticket": ticket, "created": created}).encode()
            self._reply(201 if created else 200, answer, {"Content-Type": "application/json"})
        elif path == "/slow":
            rec.release.wait(float(q.get("seconds", "5")))
            self._reply(200, b"late")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"partial")
            self.wfile.flush()
            rec.release.wait(5)
        elif path == "/huge":
            total = int(q["bytes"])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(total))
            self.end_headers()
            chunk = b"0123456789" * 6554
            sent = 0
            try:
                while sent < total:
                    part = chunk[: total - sent]
                    self.wfile.write(part)
                    sent += len(part)
            finally:
                rec.huge_sent = sent
        elif path == "/gzip":
            self._reply(200, gzip.compress(b"squeezed " * 10), {"Content-Encoding": "gzip"})
        elif path == "/redirect":
            self._reply(int(q.get("code", "302")), b"", {"Location": q["to"]})
        elif path == "/garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
        elif path == "/bye":
            self._reply(200, b"bye", {"Connection": "close"})  # and the server hangs up
        else:
            self._reply(200, json.dumps({"ok": True}).encode(), {"Content-Type": "application/json"})


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    rec = Receiver(port=server.server_address[1])
    server.receiver = rec
    if tls is not None:
        rec.scheme = "https"

        def note_sni(_sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
            rec.sni.append(name)

        tls.sni_callback = note_sni
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not carry test traffic elsewhere
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c
    # HTTP_ACTION's own client, which the tests that use this one make: it belongs to this test's loop
    await HTTP_ACTION.close()


@pytest.fixture
async def make_action() -> AsyncIterator[Any]:
    """HttpAction(**kwargs), closed after the test."""
    made: list[HttpAction] = []

    def make(**kwargs: Any) -> HttpAction:
        made.append(HttpAction(**kwargs))
        return made[-1]

    yield make
    for action in made:
        await action.close()


class _RefusingConnector(aiohttp.BaseConnector):
    """Records each request the action's session would send, and refuses to connect."""

    def __init__(self, requests: list[Any]) -> None:
        super().__init__()
        self.requests = requests

    async def connect(self, req: aiohttp.ClientRequest, traces: Any, timeout: Any) -> Any:
        self.requests.append(req)
        raise aiohttp.ClientConnectorError(req.connection_key, ConnectionRefusedError(
            111, "test connector: nothing may be sent"))


@dataclass
class Nowhere:
    """An action whose connector, and a ctx.http client whose transport, record requests and send none."""

    requests: list[Any] = field(default_factory=list)
    action: HttpAction = field(init=False)

    def __post_init__(self) -> None:
        self.action = HttpAction(connector=lambda: _RefusingConnector(self.requests))

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise httpx.ConnectError("test transport: nothing may be sent", request=request)


@pytest.fixture
async def nowhere() -> AsyncIterator[tuple[Nowhere, httpx.AsyncClient]]:
    spy = Nowhere()
    async with httpx.AsyncClient(transport=httpx.MockTransport(spy.handler)) as c:
        yield spy, c
    await spy.action.close()


def make_ctx(http: httpx.AsyncClient, url: str, *, allow: tuple[str, ...] = LOOPBACK, job_id: str = JOB,
             timeout: float = 5.0, **inputs: Any) -> ActionContext:
    return ActionContext(
        job_id=job_id,
        action="http",
        instance_id="inst-7f3a",
        journey="payment-reminder",
        attempt=1,
        inputs={"url": url, **inputs},
        contact=None,
        vars={},
        config=Config(sources={}, channels={}, policies=Policies(http_allow_networks=allow)),
        templates=TemplateStore(None),
        http=http,
        now=NOW,
        timeout=timeout,
        message_id="msg-1",
    )


async def fails(ctx: ActionContext, action: HttpAction = HTTP_ACTION) -> ActionError:
    with pytest.raises(ActionError) as info:
        await action.run(ctx)
    return info.value


# --- what is sent -------------------------------------------------------------------------

async def test_headers_json_and_idempotency_key_arrive_once(receiver: Receiver, client: httpx.AsyncClient) -> None:
    ctx = make_ctx(client, receiver.url("/hooks/ticket?source=journeys"),
                   headers={"Authorization": "Bearer t0k", "X-Tenant": "acme", "X-Count": 3,
                            "Idempotency-Key": "mine", "host": "evil.example"},
                   json={"contact": "c-1", "subject": "Invoice 42 ünïcode", "amount": 12.5})
    out = await HTTP_ACTION.run(ctx)
    assert out.result == {"status": 200, "body": '{"ok": true}'}
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert (got.method, got.path) == ("POST", "/hooks/ticket")
    assert got.headers.get_all("Idempotency-Key") == [JOB]
    assert got.headers.get_all("Host") == [f"127.0.0.1:{receiver.port}"]
    assert got.headers["Authorization"] == "Bearer t0k"
    assert got.headers["X-Tenant"] == "acme"
    assert got.headers["X-Count"] == "3"
    assert got.headers["User-Agent"] == "journeys"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Accept-Encoding"] == "identity"
    assert got.json() == {"contact": "c-1", "subject": "Invoice 42 ünïcode", "amount": 12.5}


async def test_same_job_twice_sends_the_same_key(receiver: Receiver, client: httpx.AsyncClient) -> None:
    ctx = make_ctx(client, receiver.url("/tickets"), json={"subject": "x"})
    first = await HTTP_ACTION.run(ctx)
    again = await HTTP_ACTION.run(ctx)
    other = await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets"), job_id="inst-7f3a:5:0",
                                           json={"subject": "x"}))
    keys = [r.headers["Idempotency-Key"] for r in receiver.received]
    assert keys == [JOB, JOB, "inst-7f3a:5:0"]
    assert first.result["status"] == 201 and json.loads(first.result["body"]) == {"ticket": 1, "created": True}
    assert again.result["status"] == 200 and json.loads(again.result["body"]) == {"ticket": 1, "created": False}
    assert json.loads(other.result["body"]) == {"ticket": 2, "created": True}


async def test_method_and_raw_body(receiver: Receiver, client: httpx.AsyncClient) -> None:
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/a"), method="put", body="name=ada",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}))
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/b"), method="GET"))
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/c"), body="plain words"))
    put, get, post = receiver.received
    assert (put.method, put.body, put.headers["Content-Type"]) == (
        "PUT", b"name=ada", "application/x-www-form-urlencoded")
    assert (get.method, get.body) == ("GET", b"")
    assert get.headers["Idempotency-Key"] == JOB
    assert (post.method, post.body, post.headers["Content-Type"]) == (
        "POST", b"plain words", "text/plain; charset=utf-8")


async def test_user_agent_may_be_replaced(receiver: Receiver, client: httpx.AsyncClient) -> None:
    await HTTP_ACTION.run(make_ctx(client, receiver.url(), headers={"user-agent": "acme-hooks/1"}))
    assert receiver.received[0].headers.get_all("User-Agent") == ["acme-hooks/1"]


@pytest.mark.parametrize(("inputs", "words"), [
    ({"json": {"a": 1}, "body": "b"}, "json or body"),
    ({"headers": {"X-A": {"nested": 1}}}, "must be a string"),
    ({"headers": {"X-A": "one\r\nX-Injected: 1"}}, "line break"),
    ({"headers": {"Bad Name": "v"}}, "not a header name"),
    ({"headers": ["X-A: 1"]}, "mapping"),
    ({"method": "PO ST"}, "not an HTTP method"),
    ({"body": {"a": 1}}, "use json"),
    ({"json": {"nan": float("nan")}}, "json cannot be encoded"),
    ({"url": ""}, "url is required"),
])
async def test_bad_inputs_are_permanent(receiver: Receiver, client: httpx.AsyncClient,
                                        inputs: dict[str, Any], words: str) -> None:
    ctx = make_ctx(client, inputs.pop("url", receiver.url()), **inputs)
    err = await fails(ctx)
    assert not err.transient
    assert words in err.reason
    assert receiver.received == []


# --- answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [200, 201, 202, 204])
async def test_2xx_is_success(receiver: Receiver, client: httpx.AsyncClient, code: int) -> None:
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url(f"/status/{code}")))
    assert isinstance(out, Outcome)
    assert out.result == {"status": code, "body": "" if code == 204 else f"answer {code}"}


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
async def test_other_4xx_is_permanent(receiver: Receiver, client: httpx.AsyncClient, code: int) -> None:
    err = await fails(make_ctx(client, receiver.url(f"/status/{code}")))
    assert (err.transient, err.status, err.retry_after) == (False, code, None)
    assert f"HTTP {code}" in err.reason and f"answer {code}" in err.reason
    assert len(receiver.received) == 1


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
async def test_408_429_5xx_are_transient(receiver: Receiver, client: httpx.AsyncClient, code: int) -> None:
    err = await fails(make_ctx(client, receiver.url(f"/status/{code}")))
    assert (err.transient, err.status, err.retry_after) == (True, code, None)
    assert err.reason.startswith(f"HTTP {code} from POST http://127.0.0.1:{receiver.port}/status/{code}")


async def test_retry_after_seconds(receiver: Receiver, client: httpx.AsyncClient) -> None:
    err = await fails(make_ctx(client, receiver.url("/status/429?retry_after=7")))
    assert (err.transient, err.status, err.retry_after) == (True, 429, 7.0)


async def test_retry_after_http_date(receiver: Receiver, client: httpx.AsyncClient) -> None:
    when = format_datetime(NOW + dt.timedelta(seconds=120), usegmt=True)
    err = await fails(make_ctx(client, receiver.url(f"/status/503?retry_after={when}")))
    assert (err.transient, err.status, err.retry_after) == (True, 503, 120.0)


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("0", 0.0), ("  30 ", 30.0), ("-4", 0.0), ("1.5", 1.5), ("soon", None), ("nan", None),
    ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0), ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),
])
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert retry_after(header, NOW) == seconds


async def test_timeout_is_transient(receiver: Receiver, client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    err = await fails(make_ctx(client, receiver.url("/slow?seconds=10"), timeout=0.4))
    assert loop.time() - started < 3
    assert err.transient and err.status is None
    assert err.reason.startswith("timeout")


async def test_body_cut_by_the_deadline_keeps_the_status(receiver: Receiver, client: httpx.AsyncClient) -> None:
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/drip"), timeout=0.5))
    assert out.result == {"status": 200, "body": "partial"}


async def test_an_answer_that_is_not_http_is_transient(receiver: Receiver, client: httpx.AsyncClient) -> None:
    err = await fails(make_ctx(client, receiver.url("/garbage?token=s3cret")))
    assert err.transient and err.status is None
    assert err.reason.startswith(f"connection: POST http://127.0.0.1:{receiver.port}/garbage: ")
    assert "s3cret" not in err.reason  # no query string in reasons: it may hold tokens


async def test_connection_refused_is_transient(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await fails(make_ctx(client, f"http://127.0.0.1:{port}/hook"))
    assert err.transient and err.status is None
    assert err.reason.startswith("connection")


async def test_huge_response_is_capped(receiver: Receiver, client: httpx.AsyncClient) -> None:
    total = 64 * 1024 * 1024
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url(f"/huge?bytes={total}")))
    assert out.result == {"status": 200, "body": ("0123456789" * 200)}
    # the action stopped reading and hung up: the receiver could not write it all
    for _ in range(100):
        if receiver.huge_sent:
            break
        await asyncio.sleep(0.05)
    assert 0 < receiver.huge_sent < total


async def test_cap_keeps_the_first_bytes(receiver: Receiver, client: httpx.AsyncClient, make_action: Any) -> None:
    out = await make_action(max_body_bytes=25).run(make_ctx(client, receiver.url("/huge?bytes=100000")))
    assert out.result == {"status": 200, "body": "0123456789012345678901234"}


async def test_compressed_answer_is_decoded(receiver: Receiver, client: httpx.AsyncClient) -> None:
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/gzip")))
    assert out.result["body"] == "squeezed " * 10


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(receiver: Receiver, client: httpx.AsyncClient, code: int) -> None:
    ctx = make_ctx(client, receiver.url(f"/redirect?code={code}&to=http://169.254.169.254/latest/meta-data/"))
    err = await fails(ctx)
    assert (err.transient, err.status) == (False, code)
    assert err.reason.startswith("redirect")
    assert "http://169.254.169.254/latest/meta-data/" in err.reason
    assert [r.path for r in receiver.received] == ["/redirect"]


async def test_redirect_to_the_receiver_itself_is_not_followed_either(
        receiver: Receiver, client: httpx.AsyncClient) -> None:
    err = await fails(make_ctx(client, receiver.url(f"/redirect?to={receiver.url('/tickets')}")))
    assert err.status == 302 and "/tickets" in err.reason
    assert [r.path for r in receiver.received] == ["/redirect"]


# --- the SSRF guard -----------------------------------------------------------------------

REFUSED = [
    ("http://127.0.0.1:{port}/hook", "loopback"),
    ("http://localhost:{port}/hook", "loopback"),
    ("http://10.0.0.1/hook", "private"),
    ("http://192.168.1.20/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:{port}/hook", "loopback"),
    ("http://0.0.0.0:{port}/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "a form of 127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", "a form of 169.254.169.254"),
    ("http://[2002:7f00:1::]/", "a form of 127.0.0.1"),
    ("http://[fd00::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://127.1:{port}/", "loopback"),
    ("http://2130706433:{port}/", "loopback"),
    ("file:///etc/passwd", "file://"),
    ("ftp://127.0.0.1/pub", "ftp://"),
    ("gopher://127.0.0.1:6379/_INFO", "gopher://"),
    ("example.com/hook", "no scheme"),
    ("http:///hook", "no host"),
]


@pytest.mark.parametrize(("template", "words"), REFUSED)
async def test_refused_without_allow(receiver: Receiver, nowhere: tuple[Nowhere, httpx.AsyncClient],
                                     template: str, words: str) -> None:
    spy, client = nowhere
    url = template.format(port=receiver.port)
    err = await fails(make_ctx(client, url, allow=()), spy.action)
    assert not err.transient and err.status is None
    assert words in err.reason
    assert spy.requests == []
    assert receiver.received == []


async def test_the_receiver_is_refused_without_allow(receiver: Receiver, client: httpx.AsyncClient) -> None:
    err = await fails(make_ctx(client, receiver.url("/tickets"), allow=()))
    assert err.reason.startswith("url refused") and "http_allow_networks" in err.reason
    assert receiver.received == []
    # and reached with it
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets")))
    assert len(receiver.received) == 1


async def test_allow_is_per_network(receiver: Receiver, nowhere: tuple[Nowhere, httpx.AsyncClient]) -> None:
    spy, client = nowhere
    for url in ("http://10.0.0.1/", "http://[::1]/", "http://169.254.169.254/"):
        err = await fails(make_ctx(client, url, allow=("127.0.0.0/8",)), spy.action)
        assert err.reason.startswith("url refused")
    assert spy.requests == []


async def test_credentials_in_url_are_refused_and_not_echoed(
        receiver: Receiver, nowhere: tuple[Nowhere, httpx.AsyncClient]) -> None:
    spy, client = nowhere
    err = await fails(make_ctx(client, receiver.url("/hook", host="admin:s3cret@127.0.0.1")), spy.action)
    assert "credentials" in err.reason and "s3cret" not in err.reason
    assert not err.transient
    assert spy.requests == [] and receiver.received == []


async def test_bad_allow_entry_is_permanent(nowhere: tuple[Nowhere, httpx.AsyncClient]) -> None:
    spy, client = nowhere
    err = await fails(make_ctx(client, "http://10.0.0.1/", allow=("not-a-net",)), spy.action)
    assert not err.transient and "not-a-net" in err.reason


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.216.34", True),
    ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("64:ff9b::5db8:d822", True),  # NAT64 of 93.184.216.34: judged by the IPv4 address
    ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ("::ffff:93.184.216.34", True),
    ("::ffff:10.0.0.1", False),
    ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ("fec0::1", False),
    ("198.18.0.1", False),
    ("240.0.0.1", False),
    ("255.255.255.255", False),
])
def test_refusal_of_addresses(address: str, allowed: bool) -> None:
    assert (refusal(ipaddress.ip_address(address), ()) is None) is allowed


def test_allow_covers_mapped_addresses_by_their_ipv4() -> None:
    nets = (ipaddress.ip_network("127.0.0.0/8"),)
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), nets) is None
    assert refusal(ipaddress.ip_address("::1"), nets) is not None


async def test_check_url() -> None:
    await check_url("http://127.0.0.1:8000/x", LOOPBACK)
    await check_url("https://[2606:2800:220:1:248:1893:25c8:1946]/x", ())
    with pytest.raises(ActionError):
        await check_url("http://127.0.0.1:8000/x", ())


# --- DNS: one resolution, every address checked, connect only there ------------------------

class FakeDNS:
    """Answers for made-up names (a different answer each time); real lookups for the rest."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answers: dict[str, list[list[str]]]) -> None:
        self.real = loop.getaddrinfo
        self.answers = answers
        self.asked: list[str] = []

    async def getaddrinfo(self, host: Any, port: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return await self.real(host, port, **kwargs)
        self.asked.append(name)
        addresses = self.answers[name].pop(0)
        out: list[Any] = []
        for a in addresses:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
        return out


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(answers: dict[str, list[list[str]]]) -> FakeDNS:
        loop = asyncio.get_running_loop()
        dns = FakeDNS(loop, answers)
        monkeypatch.setattr(loop, "getaddrinfo", dns.getaddrinfo)
        return dns
    return install


async def test_rebinding_connects_to_the_checked_address(
        receiver: Receiver, client: httpx.AsyncClient, fake_dns: Any) -> None:
    # the first answer passes the check; a second lookup would get the metadata service
    dns = fake_dns({"hooks.example.test": [["127.0.0.1"], ["169.254.169.254"]]})
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets", host="hooks.example.test")))
    assert out.result["status"] == 201
    assert dns.asked == ["hooks.example.test"]
    assert receiver.received[0].headers["Host"] == f"hooks.example.test:{receiver.port}"


async def test_one_bad_address_refuses_the_name(nowhere: tuple[Nowhere, httpx.AsyncClient], fake_dns: Any) -> None:
    spy, client = nowhere
    fake_dns({"mixed.example.test": [["93.184.216.34", "10.1.2.3"]]})
    err = await fails(make_ctx(client, "https://mixed.example.test/hook", allow=()), spy.action)
    assert "mixed.example.test resolves to 10.1.2.3" in err.reason and not err.transient
    assert spy.requests == []


async def test_public_name_is_sent_to_its_address(nowhere: tuple[Nowhere, httpx.AsyncClient], fake_dns: Any) -> None:
    spy, client = nowhere
    fake_dns({"api.example.test": [["93.184.216.34"]]})
    err = await fails(make_ctx(client, "https://api.example.test/v1/tickets?x=1", allow=()), spy.action)
    # the spy connector refused the connection, so nothing left this machine
    assert err.transient and err.reason.startswith("connection")
    (sent,) = spy.requests
    assert str(sent.url) == "https://93.184.216.34/v1/tickets?x=1"
    assert sent.headers["Host"] == "api.example.test"
    assert sent.headers["Connection"] == "close"
    assert sent.server_hostname == "api.example.test"  # TLS SNI and certificate name


async def test_unresolvable_name_is_transient(nowhere: tuple[Nowhere, httpx.AsyncClient], fake_dns: Any) -> None:
    spy, client = nowhere
    fake_dns({"gone.example.test": [[]]})
    err = await fails(make_ctx(client, "https://gone.example.test/hook", allow=()), spy.action)
    assert err.transient and err.reason.startswith("connection")
    assert spy.requests == []


async def test_refused_address_falls_through_to_the_next(
        receiver: Receiver, client: httpx.AsyncClient, fake_dns: Any) -> None:
    # nothing listens on 127.0.0.2:<port> (the receiver is bound to 127.0.0.1 only)
    dns = fake_dns({"two.example.test": [["127.0.0.2", "127.0.0.1"]]})
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/", host="two.example.test")))
    assert out.result["status"] == 200
    assert dns.asked == ["two.example.test"]
    assert len(receiver.received) == 1


async def test_localhost_when_allowed(receiver: Receiver, client: httpx.AsyncClient) -> None:
    ctx = make_ctx(client, receiver.url("/", host="localhost"), allow=("127.0.0.0/8", "::1/128"))
    out = await HTTP_ACTION.run(ctx)
    assert out.result["status"] == 200
    assert receiver.received[0].headers["Host"] == f"localhost:{receiver.port}"


# --- https to a name: the certificate is checked against the name, not the IP -------------

@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_receiver(certificate: tuple[bytes, bytes], tmp_path: Any) -> Iterator[Receiver]:
    cert_pem, key_pem = certificate
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    yield from _serve(context)


@pytest.fixture
def tls_action(certificate: tuple[bytes, bytes], make_action: Any) -> HttpAction:
    """The http action, trusting the test certificate."""
    action: HttpAction = make_action(tls=ssl.create_default_context(cadata=certificate[0].decode()))
    return action


async def test_https_to_a_name_verifies_the_name(
        tls_receiver: Receiver, client: httpx.AsyncClient, tls_action: HttpAction, fake_dns: Any) -> None:
    fake_dns({"hooks.example.test": [["127.0.0.1"], ["127.0.0.1"]], "other.example.test": [["127.0.0.1"]]})
    out = await tls_action.run(make_ctx(client, tls_receiver.url("/tickets", host="hooks.example.test"),
                                        json={"a": 1}))
    assert out.result["status"] == 201
    assert tls_receiver.sni == ["hooks.example.test"]
    got = tls_receiver.received[0]
    assert got.headers["Host"] == f"hooks.example.test:{tls_receiver.port}"
    assert got.headers["Connection"] == "close"
    # the same IP under a name the certificate does not cover: the handshake fails
    err = await fails(make_ctx(client, tls_receiver.url("/tickets", host="other.example.test")), tls_action)
    assert err.transient and err.reason.startswith("connection")
    assert "CERTIFICATE_VERIFY_FAILED" in err.reason
    assert len(tls_receiver.received) == 1
    # and a second call to the first name opens a fresh, verified connection
    await tls_action.run(make_ctx(client, tls_receiver.url("/", host="hooks.example.test")))
    assert tls_receiver.sni == ["hooks.example.test", "other.example.test", "hooks.example.test"]


# --- the action's client: a pool of connections per event loop, until close() ------------

async def closed_soon(rec: Receiver, port: int) -> bool:
    """Whether the receiver saw the connection from *port* end (it notices within a moment)."""
    for _ in range(100):
        if port in rec.closed:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_jobs_to_the_same_host_reuse_one_connection(
        receiver: Receiver, client: httpx.AsyncClient, fake_dns: Any) -> None:
    for n in range(3):
        out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets"), job_id=f"inst-{n}:0:0"))
        assert out.result["status"] == 201
    # a name that resolves to the same checked address shares it (plain http: Host tells them apart)
    fake_dns({"hooks.example.test": [["127.0.0.1"]]})
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/", host="hooks.example.test")))
    ports = {r.port for r in receiver.received}
    assert len(receiver.received) == 4 and len(ports) == 1
    assert [r.headers["Host"] for r in receiver.received][-1] == f"hooks.example.test:{receiver.port}"
    assert receiver.closed == []


async def test_https_to_a_name_is_never_pooled(
        tls_receiver: Receiver, client: httpx.AsyncClient, tls_action: HttpAction, fake_dns: Any) -> None:
    fake_dns({"hooks.example.test": [["127.0.0.1"], ["127.0.0.1"]]})
    for _ in range(2):
        out = await tls_action.run(make_ctx(client, tls_receiver.url("/tickets", host="hooks.example.test")))
        assert out.result["status"] in (200, 201)
    first, second = tls_receiver.received
    assert first.port != second.port
    assert first.headers["Connection"] == second.headers["Connection"] == "close"
    assert tls_receiver.sni == ["hooks.example.test", "hooks.example.test"]  # two verified handshakes
    assert await closed_soon(tls_receiver, first.port) and await closed_soon(tls_receiver, second.port)


async def test_a_body_cut_short_drops_its_connection(
        receiver: Receiver, client: httpx.AsyncClient, make_action: Any) -> None:
    action = make_action(max_body_bytes=25)
    await action.run(make_ctx(client, receiver.url("/huge?bytes=100000")))
    await action.run(make_ctx(client, receiver.url("/tickets")))
    huge, after = receiver.received
    assert huge.port != after.port
    assert await closed_soon(receiver, huge.port)


async def test_a_connection_the_server_closed_is_not_reused(receiver: Receiver, client: httpx.AsyncClient) -> None:
    bye = await HTTP_ACTION.run(make_ctx(client, receiver.url("/bye")))
    assert bye.result == {"status": 200, "body": "bye"}
    assert await closed_soon(receiver, receiver.received[0].port)
    out = await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets")))
    assert out.result["status"] == 201
    assert receiver.received[1].port != receiver.received[0].port


async def test_close_ends_the_pooled_connections(receiver: Receiver, client: httpx.AsyncClient,
                                                 make_action: Any) -> None:
    action = make_action()
    await action.close()  # before any call: nothing to close
    await action.run(make_ctx(client, receiver.url("/tickets")))
    first = receiver.received[0].port
    assert receiver.closed == []
    await action.close()
    assert await closed_soon(receiver, first)
    await action.close()  # again: nothing left
    # the next call opens a new client, and works
    out = await action.run(make_ctx(client, receiver.url("/tickets")))
    assert out.result["status"] == 200
    assert receiver.received[1].port != first


async def test_module_close_is_the_builtin_actions(receiver: Receiver, client: httpx.AsyncClient) -> None:
    # what the executor calls when it stops
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets")))
    await actions.http.close()
    assert await closed_soon(receiver, receiver.received[0].port)


async def test_one_client_per_event_loop(receiver: Receiver, client: httpx.AsyncClient) -> None:
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets")))

    async def elsewhere() -> None:
        # another event loop (another thread) gets a client of its own, and closes only that one
        async with httpx.AsyncClient(trust_env=False) as other:
            await HTTP_ACTION.run(make_ctx(other, receiver.url("/tickets")))
        await HTTP_ACTION.close()

    await asyncio.to_thread(asyncio.run, elsewhere())
    await HTTP_ACTION.run(make_ctx(client, receiver.url("/tickets")))
    here, there, here_again = (r.port for r in receiver.received)
    assert here == here_again != there
    assert await closed_soon(receiver, there)
    assert here not in receiver.closed


# --- the environment's proxies: sent the checked address, never the name ------------------

@pytest.fixture
def proxy() -> Iterator[Receiver]:
    """A forward proxy that answers itself (as the receiver does) and records what it was asked."""
    yield from _serve()


async def test_the_environments_proxy_is_sent_the_checked_address(
        receiver: Receiver, proxy: Receiver, client: httpx.AsyncClient, make_action: Any,
        monkeypatch: pytest.MonkeyPatch, fake_dns: Any) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    fake_dns({"hooks.example.test": [["127.0.0.1"]]})
    out = await make_action().run(make_ctx(client, receiver.url("/tickets?x=1", host="hooks.example.test")))
    assert out.result["status"] == 201
    (got,) = proxy.received
    assert got.target == f"http://127.0.0.1:{receiver.port}/tickets?x=1"  # the proxy resolves nothing
    assert got.headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert got.headers.get_all("Idempotency-Key") == [JOB]
    assert receiver.received == []


@pytest.mark.parametrize("no_proxy", ["example.test", ".example.test", "hooks.example.test", "127.0.0.0/8",
                                      "127.0.0.1", "elsewhere.test, *"])
async def test_no_proxy_by_name_or_address(
        receiver: Receiver, proxy: Receiver, client: httpx.AsyncClient, make_action: Any,
        monkeypatch: pytest.MonkeyPatch, fake_dns: Any, no_proxy: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    fake_dns({"hooks.example.test": [["127.0.0.1"]]})
    await make_action().run(make_ctx(client, receiver.url("/tickets", host="hooks.example.test")))
    assert [r.target for r in receiver.received] == ["/tickets"]
    assert proxy.received == []


async def test_a_proxy_for_the_other_scheme_is_not_used(
        receiver: Receiver, proxy: Receiver, client: httpx.AsyncClient, make_action: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    await make_action().run(make_ctx(client, receiver.url("/tickets")))
    assert len(receiver.received) == 1 and proxy.received == []


async def test_https_through_the_proxy_tunnels_to_the_checked_address(
        proxy: Receiver, client: httpx.AsyncClient, tls_action: HttpAction,
        monkeypatch: pytest.MonkeyPatch, fake_dns: Any) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    fake_dns({"hooks.example.test": [["127.0.0.1"]]})
    err = await fails(make_ctx(client, "https://hooks.example.test:8443/tickets"), tls_action)
    assert err.transient and err.reason.startswith("connection")  # this proxy refuses tunnels
    (got,) = proxy.received
    assert (got.method, got.target) == ("CONNECT", "127.0.0.1:8443")
