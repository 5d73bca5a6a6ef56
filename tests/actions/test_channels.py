"""Channel providers and the send actions, against real local servers.

A fake Twilio / SendGrid API (the standard library's HTTP server in a thread) records every
request and answers what the test tells it to (201/202, 429 with Retry-After, 500, a 400
with a provider error, or nothing at all); a tiny SMTP server does the same for email.
The providers talk to them over real sockets through ``api_base`` / ``host`` and ``port``.
"""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from actions.base import ActionContext, ActionError, Outcome, Sent
from actions.channels import CHANNEL_PROVIDERS, Draft, retry_after
from actions.channels.console import ConsoleProvider
from actions.channels.sendgrid import SendGridProvider
from actions.channels.smtp import SmtpProvider
from actions.channels.twilio import TwilioProvider
from actions.send import SEND_ACTIONS, SendAction
from actions.templates import TemplateStore
from engine.instance import Contact
from ingest.providers.sendgrid import MESSAGE_ID_ARG
from ingest.providers.twilio import MESSAGE_ID_PARAM
from journeys.config import ChannelConfig, Config, load_config

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
PHONE = "+4915112345678"
ENV = {
    "TWILIO_ACCOUNT_SID": "AC0123456789abcdef",
    "TWILIO_AUTH_TOKEN": "twilio-token-1",
    "SENDGRID_API_KEY": "SG.test-key",
    "SMTP_PASSWORD": "smtp-secret",
}


# --- a fake provider API over HTTP ----------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class FakeApi:
    """An HTTP server on 127.0.0.1 that records requests and plays queued replies, in order."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Reply] = []
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                api.requests.append(Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                             body))
                reply = api.replies.pop(0) if api.replies else Reply(599, b"no reply queued")
                if reply.hang:
                    api.release.wait(10)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False  # server_close() joins handlers: nothing outlives the test
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        raw = json.dumps(body).encode() if body is not None else b""
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        self.replies.append(Reply(status, raw, all_headers))

    def hang(self) -> None:
        self.replies.append(Reply(201, b"{}", {"Content-Type": "application/json"}, hang=True))

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- a fake SMTP server ----------------------------------------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes

    def message(self) -> EmailMessage:
        message = message_from_bytes(self.data.replace(b"\r\n", b"\n"), policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message


class FakeSmtp:
    """Just enough ESMTP for smtplib: EHLO (AUTH PLAIN), MAIL, RCPT, DATA, RSET, QUIT."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.commands: list[str] = []
        self.logins: list[bytes] = []
        self.greeting = "220 fake.example ESMTP"
        self.rcpt_reply = "250 2.1.5 ok"
        self.data_reply = "250 2.0.0 queued"
        self.hang = False
        self.release = threading.Event()
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def say(self, text: str) -> None:
                self.wfile.write(text.replace("\n", "\r\n").encode() + b"\r\n")

            def handle(self) -> None:
                if fake.hang:
                    fake.release.wait(10)
                    return
                self.say(fake.greeting)
                if not fake.greeting.startswith("220"):
                    return
                sender = ""
                recipients: list[str] = []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    command = line.decode().rstrip("\r\n")
                    fake.commands.append(command)
                    verb = command.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.say("250-fake.example\n250-AUTH PLAIN\n250 8BITMIME")
                    elif verb == "AUTH":
                        fake.logins.append(base64.b64decode(command.split()[2]))
                        self.say("235 2.7.0 authenticated")
                    elif verb == "MAIL":
                        sender, recipients = command.split(":", 1)[1].split()[0].strip("<>"), []
                        self.say("250 2.1.0 ok")
                    elif verb == "RCPT":
                        recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                        self.say(fake.rcpt_reply)
                    elif verb == "DATA":
                        self.say("354 end with <CRLF>.<CRLF>")
                        lines = []
                        while (data_line := self.rfile.readline()) not in (b".\r\n", b""):
                            lines.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                        fake.mails.append(Mail(sender, recipients, b"".join(lines)))
                        self.say(fake.data_reply)
                    elif verb == "RSET":
                        self.say("250 2.0.0 ok")
                    elif verb == "QUIT":
                        self.say("221 2.0.0 bye")
                        return
                    else:
                        self.say("502 5.5.2 command not implemented")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def smtp_server() -> Iterator[FakeSmtp]:
    server = FakeSmtp()
    try:
        yield server
    finally:
        server.close()


# --- contexts --------------------------------------------------------------------------------------


def deployment(tmp_path: Path, channels: str, policies: str = "") -> Config:
    """A real config.yaml (env:NAME secrets resolved) with a Twilio status source."""
    text = textwrap.dedent("""
        sources:
          twilio:
            provider: twilio
            secret: env:TWILIO_AUTH_TOKEN
            public_url: https://hooks.example.com/ingest/twilio
        channels:
        {channels}
        {policies}
    """).format(channels=textwrap.indent(textwrap.dedent(channels).strip(), "  "), policies=policies)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(str(path), ENV)


def context(http: httpx.AsyncClient, config: Config, *, action: str = "send_sms",
            inputs: Mapping[str, Any] | None = None, contact: Contact | None = None,
            templates: TemplateStore | None = None, timeout: float = 5.0,
            variables: Mapping[str, Any] | None = None) -> ActionContext:
    return ActionContext(
        job_id="inst-1:3:0",
        action=action,
        instance_id="inst-1",
        journey="payment-reminder",
        attempt=1,
        inputs=inputs or {},
        contact=contact if contact is not None else Contact(id="c-1", phone=PHONE, email="ana@example.com"),
        vars=variables or {"invoice_id": "INV-1"},
        config=config,
        templates=templates or TemplateStore(None),
        http=http,
        now=NOW,
        timeout=timeout,
        message_id="msg-1",
    )


def twilio_channels(api: FakeApi, *, whatsapp: bool = False, service: bool = False, status: bool = True) -> str:
    lines = [
        "provider: twilio",
        "account_sid: env:TWILIO_ACCOUNT_SID",
        "auth_token: env:TWILIO_AUTH_TOKEN",
        "messaging_service_sid: MG0001" if service else 'from: "+15005550006"',
        f"api_base: {api.url}",
    ]
    if status:
        lines.append("status_source: twilio")
    body = "\n".join("  " + line for line in lines)
    return f"{'whatsapp' if whatsapp else 'sms'}:\n{body}"


def sendgrid_channels(api: FakeApi) -> str:
    return f"""
        email:
          provider: sendgrid
          api_key: env:SENDGRID_API_KEY
          from: "Billing <billing@example.com>"
          api_base: {api.url}/
    """


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def failing(coro: Any) -> ActionError:
    with pytest.raises(ActionError) as caught:
        await coro
    return caught.value


# --- Twilio ----------------------------------------------------------------------------------------


async def test_twilio_sms_posts_the_messages_api(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(201, {"sid": "SM0001", "status": "queued"})
    draft = Draft(channel="sms", to=PHONE, body="Invoice INV-1 is overdue")
    sent = await TwilioProvider().send(context(http, config), config.channels["sms"], draft)

    assert sent == Sent(channel="sms", provider="twilio", provider_message_id="SM0001", to=PHONE,
                        body="Invoice INV-1 is overdue")
    [request] = api.requests
    assert request.method == "POST"
    assert request.path == "/2010-04-01/Accounts/AC0123456789abcdef/Messages.json"
    assert request.headers["authorization"] == basic("AC0123456789abcdef", "twilio-token-1")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["idempotency-key"] == "inst-1:3:0"
    assert request.form() == {
        "To": PHONE,
        "From": "+15005550006",
        "Body": "Invoice INV-1 is overdue",
        "StatusCallback": "https://hooks.example.com/ingest/twilio?message_id=msg-1",
    }
    # the ingest side finds our id where it looks for it
    callback = urlsplit(request.form()["StatusCallback"])
    assert dict(parse_qsl(callback.query))[MESSAGE_ID_PARAM] == "msg-1"


async def test_twilio_whatsapp_prefixes_both_numbers(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api, whatsapp=True, status=False))
    api.answer(201, {"sid": "SM0002"})
    draft = Draft(channel="whatsapp", to=PHONE, body="hi")
    sent = await TwilioProvider().send(context(http, config), config.channels["whatsapp"], draft)
    assert sent.provider_message_id == "SM0002"
    assert sent.to == PHONE  # recorded as the contact's number, without the prefix
    assert api.requests[0].form() == {"To": f"whatsapp:{PHONE}", "From": "whatsapp:+15005550006", "Body": "hi"}


async def test_twilio_messaging_service_replaces_from(api: FakeApi, http: httpx.AsyncClient,
                                                      tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api, whatsapp=True, service=True))
    api.answer(201, {"sid": "SM0003"})
    draft = Draft(channel="whatsapp", to=PHONE, body="hi")
    await TwilioProvider().send(context(http, config), config.channels["whatsapp"], draft)
    form = api.requests[0].form()
    assert form["MessagingServiceSid"] == "MG0001"
    assert "From" not in form
    assert form["To"] == f"whatsapp:{PHONE}"
    assert form["StatusCallback"].endswith("?message_id=msg-1")


async def test_twilio_429_is_transient_and_honours_retry_after(api: FakeApi, http: httpx.AsyncClient,
                                                               tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(429, {"code": 20429, "message": "Too Many Requests", "status": 429}, {"Retry-After": "7"})
    error = await failing(TwilioProvider().send(context(http, config), config.channels["sms"],
                                                Draft("sms", PHONE, "hi")))
    assert error.transient is True
    assert error.status == 429
    assert error.retry_after == 7.0
    assert "20429" in error.reason


async def test_twilio_5xx_is_transient(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(500, {"code": 20500, "message": "Internal Server Error"})
    error = await failing(TwilioProvider().send(context(http, config), config.channels["sms"],
                                                Draft("sms", PHONE, "hi")))
    assert (error.transient, error.status, error.retry_after) == (True, 500, None)


async def test_twilio_unsubscribed_recipient_is_permanent_with_the_code(api: FakeApi, http: httpx.AsyncClient,
                                                                         tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient",
                     "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400})
    error = await failing(TwilioProvider().send(context(http, config), config.channels["sms"],
                                                Draft("sms", PHONE, "hi")))
    assert error.transient is False
    assert error.status == 400
    assert error.retry_after is None
    assert "21610" in error.reason
    assert "Attempt to send to unsubscribed recipient" in error.reason


async def test_twilio_bad_credentials_are_permanent(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(401, {"code": 20003, "message": "Authenticate"})
    error = await failing(TwilioProvider().send(context(http, config), config.channels["sms"],
                                                Draft("sms", PHONE, "hi")))
    assert (error.transient, error.status) == (False, 401)
    assert "20003" in error.reason


async def test_twilio_timeout_is_transient_without_status(api: FakeApi, http: httpx.AsyncClient,
                                                          tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.hang()
    started = time.monotonic()
    error = await failing(TwilioProvider().send(context(http, config, timeout=0.3), config.channels["sms"],
                                                Draft("sms", PHONE, "hi")))
    assert time.monotonic() - started < 3
    assert error.transient is True
    assert error.status is None
    assert error.reason.startswith("timeout:")


async def test_twilio_connection_refused_is_transient(http: httpx.AsyncClient, tmp_path: Path) -> None:
    channel = ChannelConfig("sms", "twilio", {
        "provider": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+15005550006",
        "api_base": f"http://127.0.0.1:{closed_port()}",
    })
    config = deployment(tmp_path, "sms: {provider: console}")
    error = await failing(TwilioProvider().send(context(http, config), channel, Draft("sms", PHONE, "hi")))
    assert error.transient is True
    assert error.status is None
    assert error.reason.startswith("connection:")


async def test_twilio_accepted_without_json_still_counts_as_sent(api: FakeApi, http: httpx.AsyncClient,
                                                                 tmp_path: Path) -> None:
    # a retry after an accepted send would text the contact twice
    config = deployment(tmp_path, twilio_channels(api))
    api.replies.append(Reply(201, b"not json"))
    sent = await TwilioProvider().send(context(http, config), config.channels["sms"], Draft("sms", PHONE, "hi"))
    assert sent.provider_message_id is None


async def test_twilio_refuses_email(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    error = await failing(TwilioProvider().send(context(http, config), config.channels["sms"],
                                                Draft("email", "ana@example.com", "hi", subject="s")))
    assert error.transient is False
    assert api.requests == []


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("1.5") == 1.5
    assert retry_after(None) is None
    assert retry_after("soon") is None
    now = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
    assert retry_after("Mon, 05 Jan 2026 10:00:30 GMT", now) == 30.0
    assert retry_after("Mon, 05 Jan 2026 09:00:00 GMT", now) == 0.0


# --- SendGrid --------------------------------------------------------------------------------------


async def test_sendgrid_posts_mail_send(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    api.answer(202, headers={"X-Message-Id": "sg-abc123"})
    draft = Draft(channel="email", to="ana@example.com", body="Your invoice is overdue.",
                  subject="Invoice INV-1 is overdue", html=False)
    sent = await SendGridProvider().send(context(http, config, action="send_email"), config.channels["email"], draft)

    assert sent == Sent(channel="email", provider="sendgrid", provider_message_id="sg-abc123",
                        to="ana@example.com", body="Your invoice is overdue.")
    [request] = api.requests
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == "Bearer SG.test-key"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "personalizations": [{"to": [{"email": "ana@example.com"}]}],
        "from": {"email": "billing@example.com", "name": "Billing"},
        "subject": "Invoice INV-1 is overdue",
        "content": [{"type": "text/plain", "value": "Your invoice is overdue."}],
        "custom_args": {MESSAGE_ID_ARG: "msg-1"},
    }
    assert MESSAGE_ID_ARG == "journeys_message_id"


async def test_sendgrid_html_and_reply_to(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    api.answer(202, headers={"X-Message-Id": "sg-2"})
    draft = Draft(channel="email", to="ana@example.com", body="<p>Hi</p>", subject="Hi", html=True,
                  reply_to="Support <help@example.com>")
    await SendGridProvider().send(context(http, config, action="send_email"), config.channels["email"], draft)
    payload = api.requests[0].json()
    assert payload["content"] == [{"type": "text/html", "value": "<p>Hi</p>"}]
    assert payload["reply_to"] == {"email": "help@example.com", "name": "Support"}


@pytest.mark.parametrize(
    ("status", "headers", "transient", "wait"),
    [(429, {"Retry-After": "12"}, True, 12.0), (503, {}, True, None), (500, {}, True, None),
     (408, {}, True, None), (400, {}, False, None), (403, {}, False, None)],
)
async def test_sendgrid_error_classification(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path, status: int,
                                             headers: dict[str, str], transient: bool, wait: float | None) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    api.answer(status, {"errors": [{"message": "The from address does not match a verified Sender Identity",
                                    "field": "from", "help": None}]}, headers)
    draft = Draft("email", "ana@example.com", "hi", subject="s")
    error = await failing(SendGridProvider().send(context(http, config), config.channels["email"], draft))
    assert (error.transient, error.status, error.retry_after) == (transient, status, wait)
    assert "from: The from address does not match a verified Sender Identity" in error.reason


async def test_sendgrid_timeout(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    api.hang()
    error = await failing(SendGridProvider().send(context(http, config, timeout=0.3), config.channels["email"],
                                                  Draft("email", "ana@example.com", "hi", subject="s")))
    assert (error.transient, error.status) == (True, None)
    assert error.reason.startswith("timeout:")


async def test_sendgrid_refuses_sms(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    error = await failing(SendGridProvider().send(context(http, config), config.channels["email"],
                                                  Draft("sms", PHONE, "hi")))
    assert error.transient is False
    assert api.requests == []


# --- SMTP ------------------------------------------------------------------------------------------


def smtp_channel(port: int, **extra: Any) -> ChannelConfig:
    settings = {"provider": "smtp", "host": "127.0.0.1", "port": port, "from": "Billing <billing@example.com>",
                "starttls": False, **extra}
    return ChannelConfig("email", "smtp", settings)


async def test_smtp_delivers_with_our_message_id(smtp_server: FakeSmtp, http: httpx.AsyncClient,
                                                 tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    channel = smtp_channel(smtp_server.port, username="mailer", password="smtp-secret")
    draft = Draft("email", "ana@example.com", "Grüße, your invoice INV-1 is overdue.\n.leading dot",
                  subject="Invoice INV-1", reply_to="help@example.com")
    sent = await SmtpProvider().send(context(http, config, action="send_email"), channel, draft)

    assert sent == Sent(channel="email", provider="smtp", provider_message_id="<msg-1@example.com>",
                        to="ana@example.com", body=draft.body)
    [mail] = smtp_server.mails
    assert mail.sender == "billing@example.com"
    assert mail.recipients == ["ana@example.com"]
    message = mail.message()
    assert message["Message-ID"] == "<msg-1@example.com>"
    assert message["X-Journeys-Message-Id"] == "msg-1"
    assert message["From"] == "Billing <billing@example.com>"
    assert message["To"] == "ana@example.com"
    assert message["Subject"] == "Invoice INV-1"
    assert message["Reply-To"] == "help@example.com"
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Grüße, your invoice INV-1 is overdue.\n.leading dot\n"
    assert smtp_server.logins == [b"\0mailer\0smtp-secret"]
    assert smtp_server.commands[-1].upper() == "QUIT"


async def test_smtp_html(smtp_server: FakeSmtp, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    draft = Draft("email", "ana@example.com", "<p>Hi</p>", subject="Hi", html=True)
    await SmtpProvider().send(context(http, config), smtp_channel(smtp_server.port), draft)
    message = smtp_server.mails[0].message()
    assert message.get_content_type() == "text/html"
    assert smtp_server.logins == []  # no username: no AUTH


@pytest.mark.parametrize(("reply", "transient"), [("550 5.1.1 no such user", False),
                                                   ("450 4.2.1 mailbox busy", True)])
async def test_smtp_refused_recipient(smtp_server: FakeSmtp, http: httpx.AsyncClient, tmp_path: Path,
                                      reply: str, transient: bool) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    smtp_server.rcpt_reply = reply
    error = await failing(SmtpProvider().send(context(http, config), smtp_channel(smtp_server.port),
                                              Draft("email", "nobody@example.com", "hi", subject="s")))
    assert error.transient is transient
    assert reply in error.reason
    assert error.status is None  # an SMTP code is not an HTTP status
    assert smtp_server.mails == []


async def test_smtp_data_refused_is_permanent(smtp_server: FakeSmtp, http: httpx.AsyncClient,
                                              tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    smtp_server.data_reply = "554 5.7.1 spam"
    error = await failing(SmtpProvider().send(context(http, config), smtp_channel(smtp_server.port),
                                              Draft("email", "ana@example.com", "hi", subject="s")))
    assert error.transient is False
    assert "554" in error.reason


async def test_smtp_busy_server_is_transient(smtp_server: FakeSmtp, http: httpx.AsyncClient,
                                             tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    smtp_server.greeting = "421 4.3.2 try again later"
    error = await failing(SmtpProvider().send(context(http, config), smtp_channel(smtp_server.port),
                                              Draft("email", "ana@example.com", "hi", subject="s")))
    assert error.transient is True
    assert "421" in error.reason


async def test_smtp_connection_refused_is_transient(http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    error = await failing(SmtpProvider().send(context(http, config), smtp_channel(closed_port()),
                                              Draft("email", "ana@example.com", "hi", subject="s")))
    assert error.transient is True
    assert error.reason.startswith("connection:")


async def test_smtp_silent_server_times_out(smtp_server: FakeSmtp, http: httpx.AsyncClient,
                                            tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    smtp_server.hang = True
    started = time.monotonic()
    error = await failing(SmtpProvider().send(context(http, config, timeout=0.3), smtp_channel(smtp_server.port),
                                              Draft("email", "ana@example.com", "hi", subject="s")))
    assert time.monotonic() - started < 3
    assert error.transient is True
    assert error.reason.startswith("timeout:")


async def test_smtp_starttls_not_offered_is_permanent(smtp_server: FakeSmtp, http: httpx.AsyncClient,
                                                      tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    error = await failing(SmtpProvider().send(context(http, config), smtp_channel(smtp_server.port, starttls=True),
                                              Draft("email", "ana@example.com", "hi", subject="s")))
    assert error.transient is False
    assert "STARTTLS" in error.reason
    assert smtp_server.mails == []


# --- console ---------------------------------------------------------------------------------------


async def test_console_prints_one_line(http: httpx.AsyncClient, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = deployment(tmp_path, "sms: {provider: console}")
    sent = await ConsoleProvider().send(context(http, config), config.channels["sms"],
                                        Draft("sms", PHONE, "Invoice INV-1\nis overdue"))
    assert capsys.readouterr().out == f"[console] sms to {PHONE}: Invoice INV-1\\nis overdue\n"
    assert sent == Sent(channel="sms", provider="console", provider_message_id="msg-1", to=PHONE,
                        body="Invoice INV-1\nis overdue")


def test_registry_has_every_configurable_provider() -> None:
    assert set(CHANNEL_PROVIDERS) == {"twilio", "sendgrid", "smtp", "console"}
    assert all(provider.name == name for name, provider in CHANNEL_PROVIDERS.items())


# --- the send actions ------------------------------------------------------------------------------


def templates(tmp_path: Path, files: Mapping[str, str]) -> TemplateStore:
    root = tmp_path / "templates"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateStore(root)


def send(name: str) -> SendAction:
    return next(action for action in SEND_ACTIONS if action.name == name)


def test_send_actions_cover_the_three_channels() -> None:
    assert {(a.name, a.channel) for a in SEND_ACTIONS} == {
        ("send_sms", "sms"), ("send_email", "email"), ("send_whatsapp", "whatsapp")}


SMS_TEMPLATES = {
    "sms/invoice_overdue.txt": "Invoice {{ vars.invoice_id }} is overdue ({{ journey.id }}, {{ now.year }}).",
    "sms/invoice_overdue.de.txt": "Rechnung {{ vars.invoice_id }} ist überfällig, {{ contact.attributes.name }}.",
    "email/invoice_overdue.html": "<p>Hello {{ contact.attributes.name }}</p>",
}


@pytest.mark.parametrize(
    ("contact_locale", "input_locale", "expected"),
    [
        ("de-AT", None, "Rechnung INV-1 ist überfällig, Ana."),  # de-AT -> de
        ("de", None, "Rechnung INV-1 ist überfällig, Ana."),
        ("fr-FR", None, "Invoice INV-1 is overdue (payment-reminder, 2026)."),  # no fr: the default
        (None, None, "Invoice INV-1 is overdue (payment-reminder, 2026)."),
        ("fr", "de-CH", "Rechnung INV-1 ist überfällig, Ana."),  # the input's locale wins
    ],
)
async def test_send_sms_renders_the_template_for_the_locale(
    api: FakeApi, http: httpx.AsyncClient, tmp_path: Path,
    contact_locale: str | None, input_locale: str | None, expected: str,
) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(201, {"sid": "SM0009"})
    inputs = {"template": "invoice_overdue"} | ({"locale": input_locale} if input_locale else {})
    contact = Contact(id="c-1", phone=PHONE, locale=contact_locale, attributes={"name": "Ana"})
    ctx = context(http, config, inputs=inputs, contact=contact, templates=templates(tmp_path, SMS_TEMPLATES))
    outcome = await send("send_sms").run(ctx)
    assert api.requests[0].form()["Body"] == expected
    assert outcome.sent == Sent(channel="sms", provider="twilio", provider_message_id="SM0009", to=PHONE, body=None)


async def test_send_email_html_template_is_escaped_and_marked_html(
    api: FakeApi, http: httpx.AsyncClient, tmp_path: Path,
) -> None:
    config = deployment(tmp_path, sendgrid_channels(api))
    api.answer(202, headers={"X-Message-Id": "sg-9"})
    contact = Contact(id="c-1", email="ana@example.com", attributes={"name": "<b>Ana</b>"})
    ctx = context(http, config, action="send_email", contact=contact, templates=templates(tmp_path, SMS_TEMPLATES),
                  inputs={"template": "invoice_overdue", "subject": "Invoice\nINV-1  is overdue"})
    outcome = await send("send_email").run(ctx)
    payload = api.requests[0].json()
    assert payload["content"] == [{"type": "text/html", "value": "<p>Hello &lt;b&gt;Ana&lt;/b&gt;</p>"}]
    assert payload["subject"] == "Invoice INV-1 is overdue"  # one line: no header injection
    assert payload["personalizations"] == [{"to": [{"email": "ana@example.com"}]}]
    assert outcome.sent is not None and outcome.sent.provider_message_id == "sg-9"


async def test_send_body_input_and_to_override(http: httpx.AsyncClient, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = deployment(tmp_path, "sms: {provider: console}")
    ctx = context(http, config, inputs={"body": "Reminder: INV-1", "to": "+49 151 1234 5679"})
    outcome = await send("send_sms").run(ctx)
    assert capsys.readouterr().out == "[console] sms to +4915112345679: Reminder: INV-1\n"
    assert outcome.sent == Sent("sms", "console", "msg-1", "+4915112345679", None)


@pytest.mark.parametrize("store", [True, False])
async def test_message_bodies_are_kept_only_by_policy(http: httpx.AsyncClient, tmp_path: Path, store: bool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    policies = f"policies: {{store_message_bodies: {'true' if store else 'false'}}}"
    config = deployment(tmp_path, "whatsapp: {provider: console}", policies)
    assert config.policies.store_message_bodies is store
    outcome = await send("send_whatsapp").run(context(http, config, inputs={"body": "hi there"}))
    assert isinstance(outcome, Outcome)
    assert outcome.sent is not None
    assert outcome.sent.body == ("hi there" if store else None)
    assert capsys.readouterr().out == f"[console] whatsapp to {PHONE}: hi there\n"


async def test_unconfigured_channel_falls_back_to_console(http: httpx.AsyncClient, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = deployment(tmp_path, "sms: {provider: console}")
    config = Config(sources=base.sources, channels={}, policies=base.policies)
    outcome = await send("send_email").run(context(http, config, inputs={"body": "hello", "subject": "Hi"}))
    assert outcome.sent == Sent("email", "console", "msg-1", "ana@example.com", None)
    assert capsys.readouterr().out == "[console] email to ana@example.com: [Hi] hello\n"


@pytest.mark.parametrize(("action", "contact", "message"), [
    ("send_sms", Contact(id="c-7", email="x@example.com"), "no phone for contact c-7"),
    ("send_whatsapp", Contact(id="c-7"), "no phone for contact c-7"),
    ("send_email", Contact(id="c-8", phone=PHONE), "no email for contact c-8"),
])
async def test_missing_recipient_is_permanent(http: httpx.AsyncClient, tmp_path: Path, action: str,
                                              contact: Contact, message: str) -> None:
    config = deployment(tmp_path, "sms: {provider: console}")
    ctx = context(http, config, contact=contact, inputs={"body": "hi", "subject": "s"})
    error = await failing(send(action).run(ctx))
    assert error.transient is False
    assert error.reason == message


@pytest.mark.parametrize(("inputs", "fragment"), [
    ({"template": "nope"}, "no template 'nope' for sms"),
    ({"template": "broken"}, "broken.txt"),
    ({}, "needs a body or a template"),
    ({"body": "hi", "to": "call me"}, "not a phone number"),
    ({"body": "   "}, "body is empty"),
])
async def test_send_sms_permanent_input_errors(http: httpx.AsyncClient, tmp_path: Path,
                                               inputs: dict[str, str], fragment: str) -> None:
    config = deployment(tmp_path, "sms: {provider: console}")
    store = templates(tmp_path, {"sms/broken.txt": "{{ no_such_name }}"})
    error = await failing(send("send_sms").run(context(http, config, inputs=inputs, templates=store)))
    assert error.transient is False
    assert fragment in error.reason


async def test_send_email_needs_a_subject(http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, "email: {provider: console}")
    error = await failing(send("send_email").run(context(http, config, inputs={"body": "hi"})))
    assert error.transient is False
    assert "subject" in error.reason


async def test_provider_errors_reach_the_action(api: FakeApi, http: httpx.AsyncClient, tmp_path: Path) -> None:
    config = deployment(tmp_path, twilio_channels(api))
    api.answer(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"})
    error = await failing(send("send_sms").run(context(http, config, inputs={"body": "hi"})))
    assert (error.transient, error.status) == (False, 400)
    assert "21610" in error.reason


async def test_unknown_channel_provider_is_permanent(http: httpx.AsyncClient, tmp_path: Path) -> None:
    base = deployment(tmp_path, "sms: {provider: console}")
    config = Config(sources=base.sources, channels={"sms": ChannelConfig("sms", "pigeon", {})},
                    policies=base.policies)
    error = await failing(send("send_sms").run(context(http, config, inputs={"body": "hi"})))
    assert error.transient is False
    assert "pigeon" in error.reason

