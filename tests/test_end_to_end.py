"""One journey end to end over real HTTP, everything on this machine.

``journeys serve`` runs as a process on SQLite with the embedded executor. A fake Twilio
Messages API and a receiver for the ``http`` action run in threads of the test. The test
posts a signed business event, sees the SMS reach "Twilio" with its StatusCallback, posts
the delivery receipt to that URL exactly as Twilio would (form body, X-Twilio-Signature over
the URL it calls), and sees the journey call the receiver and complete. A repeated receipt
is counted as a duplicate and changes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

EXE = str(Path(sys.executable).parent / "journeys")
APP_SECRET = "whsec_" + base64.b64encode(b"end-to-end-app-secret-0123456789").decode()
TWILIO_TOKEN = "e2e-twilio-auth-token-0123456789ab"
ACCOUNT_SID = "ACe2etest"
FROM = "+15005550006"
PHONE = "+4915112345678"
CONTACT = "c-e2e-1"
SID = "SM" + "e2e0" * 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Fake:
    """A local HTTP server in a thread that records every request and answers with *answer*."""

    answer: Callable[[Recorded], tuple[int, dict[str, Any]]]
    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Fake:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                self.rfile.read(length), time.monotonic())
                fake.requests.append(seen)
                status, payload = fake.answer(seen)
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def twilio_answer(request: Recorded) -> tuple[int, dict[str, Any]]:
    form = dict(parse_qsl(request.body.decode()))
    return 201, {"sid": SID, "account_sid": ACCOUNT_SID, "to": form.get("To"), "from": form.get("From"),
                 "body": form.get("Body"), "status": "queued", "api_version": "2010-04-01"}


@pytest.fixture
def twilio_api() -> Iterator[Fake]:
    fake = Fake(twilio_answer).start()
    yield fake
    fake.stop()


@pytest.fixture
def receiver() -> Iterator[Fake]:
    fake = Fake(lambda _: (200, {"ok": True})).start()
    yield fake
    fake.stop()


def write_deployment(folder: Path, port: int, twilio_base: str, receiver_base: str) -> None:
    (folder / "journeys").mkdir(parents=True)
    (folder / "config.yaml").write_text(textwrap.dedent(f"""\
        sources:
          app: {{provider: events, secret: env:E2E_APP_SECRET}}
          twilio:
            provider: twilio
            secret: env:E2E_TWILIO_AUTH_TOKEN
            public_url: http://127.0.0.1:{port}/ingest/twilio
        channels:
          sms:
            provider: twilio
            account_sid: {ACCOUNT_SID}
            auth_token: env:E2E_TWILIO_AUTH_TOKEN
            from: "{FROM}"
            status_source: twilio
            api_base: {twilio_base}
        policies:
          http_allow_networks: [127.0.0.0/8]
        """), encoding="utf-8")
    (folder / "journeys" / "overdue.yaml").write_text(textwrap.dedent(f"""\
        journey: overdue-e2e
        version: 1
        trigger: {{on: invoice.overdue}}
        vars: {{invoice: "{{{{ event.data.invoice_id }}}}"}}
        initial: remind
        states:
          remind:
            enter:
              - action: send_sms
                with: {{body: "Invoice {{{{ vars.invoice }}}} is overdue"}}
            on:
              message.delivered: delivered
          delivered:
            enter:
              - action: http
                with:
                  method: POST
                  url: "{receiver_base}/hooks/delivered"
                  json: {{contact: "{{{{ contact.id }}}}", invoice: "{{{{ vars.invoice }}}}"}}
            final: true
        """), encoding="utf-8")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    output = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n--- serve output ---\n{output}")


@pytest.fixture
def serve(tmp_path: Path, twilio_api: Fake, receiver: Fake) -> Iterator[tuple[str, Path]]:
    port = free_port()
    folder = tmp_path / "ops"
    write_deployment(folder, port, twilio_api.base, receiver.base)
    env = dict(os.environ)
    for name in ("JOURNEYS_DATABASE_URL", "JOURNEYS_REDIS_URL", "JOURNEYS_ADMIN_TOKEN"):
        env.pop(name, None)
    env.update(E2E_APP_SECRET=APP_SECRET, E2E_TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([EXE, "serve", str(folder), "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("serve to be ready", healthy, timeout=15, log=log)
        yield base, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def items(base: str, route: str, **params: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base}/api/{route}", params=params, timeout=5)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["items"]
    return found


def test_a_journey_end_to_end(serve: tuple[str, Path], twilio_api: Fake, receiver: Fake) -> None:
    base, log = serve

    # 1. our billing system posts a signed business event
    event = {"id": "inv-e2e-1:overdue", "type": "invoice.overdue", "occurred_at": datetime.now(UTC).isoformat(),
             "contact": {"id": CONTACT, "phone": PHONE}, "data": {"invoice_id": "INV-77", "amount_due": 40}}
    body = json.dumps(event)
    now = datetime.now(UTC)
    headers = {"webhook-id": "wh-e2e-1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(APP_SECRET).sign("wh-e2e-1", now, body),
               "content-type": "application/json"}
    answer = httpx.post(f"{base}/ingest/app", content=body, headers=headers, timeout=5)
    assert answer.status_code == 202, answer.text

    # 2. the SMS goes to the Twilio Messages API
    [send] = wait_for("the SMS to reach the fake Twilio API", lambda: list(twilio_api.requests), log=log)
    assert send.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert send.headers["authorization"] == "Basic " + base64.b64encode(
        f"{ACCOUNT_SID}:{TWILIO_TOKEN}".encode()).decode()
    assert send.headers["content-type"] == "application/x-www-form-urlencoded"
    form = dict(parse_qsl(send.body.decode(), keep_blank_values=True))
    assert (form["From"], form["To"], form["Body"]) == (FROM, PHONE, "Invoice INV-77 is overdue")
    callback = form["StatusCallback"]
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{base}/ingest/twilio"
    message_id = dict(parse_qsl(parts.query))["message_id"]
    assert message_id.startswith("msg-")
    # the message is recorded with Twilio's SID once the send returned
    [message] = wait_for("the message to carry the SID", lambda: [
        m for m in items(base, "messages", contact_id=CONTACT) if m["provider_message_id"] == SID], log=log)
    assert (message["id"], message["channel"], message["provider"]) == (message_id, "sms", "twilio")
    assert not receiver.requests  # the journey waits for the receipt

    # 3. Twilio calls the StatusCallback: a form body signed over the URL it calls
    params = {"ApiVersion": "2010-04-01", "AccountSid": ACCOUNT_SID, "MessageSid": SID, "SmsSid": SID,
              "MessageStatus": "delivered", "SmsStatus": "delivered", "To": PHONE, "From": FROM}
    receipt = urlencode(params)
    receipt_headers = {"content-type": "application/x-www-form-urlencoded", "user-agent": "TwilioProxy/1.1",
                       "i-twilio-idempotency-token": "e2e-idem-token-1",
                       "x-twilio-signature": RequestValidator(TWILIO_TOKEN).compute_signature(callback, params)}
    answer = httpx.post(callback, content=receipt, headers=receipt_headers, timeout=5)
    assert answer.status_code == 200, answer.text
    assert "<Response" in answer.text  # empty TwiML

    # 4. the journey moves on and calls the receiver, with the action's idempotency key
    [hook] = wait_for("the http action to reach the receiver", lambda: list(receiver.requests), log=log)
    assert hook.path == "/hooks/delivered"
    assert json.loads(hook.body) == {"contact": CONTACT, "invoice": "INV-77"}
    [instance] = wait_for("the instance to complete", lambda: [
        i for i in items(base, "instances", contact_id=CONTACT) if i["status"] == "completed"], log=log)
    assert (instance["journey"], instance["state"], instance["vars"]) == (
        "overdue-e2e", "delivered", {"invoice": "INV-77"})
    key = hook.headers["idempotency-key"]
    assert key.startswith(instance["id"] + ":")
    # the SMS was sent with its own key, on the first entry (remind), the http call on the second
    sms_key = twilio_api.requests[0].headers["idempotency-key"]
    assert (sms_key, key) == (f"{instance['id']}:1:0", f"{instance['id']}:2:0")

    [message] = items(base, "messages", contact_id=CONTACT)
    assert (message["id"], message["provider_message_id"], message["status"], message["instance_id"]) == (
        message_id, SID, "delivered", instance["id"])

    def finished() -> dict[str, Any] | None:
        found: dict[str, Any] = httpx.get(f"{base}/api/instances/{instance['id']}", timeout=5).json()
        actions = [t for t in found["timeline"] if t["kind"] == "action"]
        return found if actions and all(t["status"] != "running" for t in actions) else None

    detail = wait_for("the http job's outcome to be written", finished, log=log)
    jobs = [(t["action"], t["key"], t["status"], t["attempts"]) for t in detail["timeline"] if t["kind"] == "action"]
    assert jobs == [("send_sms", sms_key, "done", 1), ("http", key, "done", 1)], detail["timeline"]

    # 5. Twilio retries the same callback: acknowledged, counted, nothing changes
    [status_event] = items(base, "events", source="twilio")
    assert (status_event["type"], status_event["status"], status_event["message_id"], status_event["duplicates"]) == (
        "message.delivered", "done", message_id, 0)
    assert status_event["provider_event_id"] == f"{SID}:delivered"
    again = httpx.post(callback, content=receipt, headers=receipt_headers, timeout=5)
    assert again.status_code == 200, again.text
    time.sleep(0.5)  # give a wrongly re-processed receipt the time to show
    [status_event] = items(base, "events", source="twilio")
    assert (status_event["status"], status_event["duplicates"]) == ("done", 1)
    assert len(items(base, "events")) == 2  # the business event and the one receipt
    assert len(receiver.requests) == 1 and len(twilio_api.requests) == 1
    assert items(base, "instances", contact_id=CONTACT) == [instance]
    assert [(m["status"], m["provider_message_id"]) for m in items(base, "messages", contact_id=CONTACT)] == [
        ("delivered", SID)]
    again_detail = httpx.get(f"{base}/api/instances/{instance['id']}", timeout=5).json()
    assert (again_detail["seq"], again_detail["timeline"]) == (detail["seq"], detail["timeline"])
