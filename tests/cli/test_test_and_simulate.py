"""``journeys test`` and ``journeys simulate`` from the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import EXAMPLES

Write = Callable[[str, str], Path]

PING = """
journey: ping
version: 1
trigger: {on: ping.sent}
vars: {n: "{{ event.data.n }}"}
initial: waiting
states:
  waiting:
    enter: [{action: send_sms, with: {body: "ping {{ vars.n }}"}}]
    on: {pong.received: done}
    after: {1h: late}
  late: {final: true}
  done: {final: true}
"""


def test_examples_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.rstrip().endswith(" passed, 0 failed")
    assert int(out.rstrip().splitlines()[-1].split()[0]) >= 12


def test_failures_are_explained(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    write("ping.yaml", PING)
    tests = write("ping.test.yaml", """
        journey: ping
        cases:
          - name: pong in time
            events: [{type: ping.sent, data: {n: 7}}, {wait: 30m}, {type: pong.received}]
            expect:
              {state: done, status: completed, actions: [send_sms], sent: [{channel: sms, body_contains: "ping 7"}],
               vars: {n: 7}, suppressed: []}
          - name: wrong on purpose
            contact: {id: c-9, phone: "+15005550006"}
            events: [{type: ping.sent, data: {n: 1}}, {wait: 2h}]
            expect:
              state: done
              actions: [send_sms, http]
              sent: [{body_contains: "pong"}]
              suppressed: [sms]
              vars: {n: 2}
        """)
    assert main(["test", str(tests)]) == 1
    out = capsys.readouterr().out
    assert "  PASS  pong in time" in out
    assert "  FAIL  wrong on purpose" in out
    assert f"{tests}:8: state: expected 'done', got 'late'" in out
    assert "actions: expected [send_sms, http], got [send_sms]" in out
    assert "sent[1]: expected the body to contain 'pong', got 'ping 1'" in out
    assert "suppressed: expected [sms] to be suppressed, suppressed: none" in out
    assert "vars: expected n=2, got 1" in out
    assert "trace: waiting -> late" in out
    assert out.rstrip().endswith("1 passed, 1 failed")


def test_an_invalid_journey_fails_before_running(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    journey = write("ping.yaml", PING.replace("pong.received: done", "pong.received: nowhere"))
    write("ping.test.yaml", "journey: ping\ncases: [{name: x, events: [{wait: 1s}], expect: {status: active}}]\n")
    assert main(["test", str(journey.parent)]) == 1
    err = capsys.readouterr().err
    assert "state 'nowhere', which is not defined" in err


def test_a_message_that_was_never_sent(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    write("ping.yaml", PING)
    tests = write("ping.test.yaml", """
        journey: ping
        cases:
          - name: bad reference
            events: [{type: ping.sent, data: {n: 1}}, {type: message.delivered, message: 2}]
            expect: {status: active}
        """)
    assert main(["test", str(tests)]) == 1
    assert "message 2 was never sent (sent so far: 1)" in capsys.readouterr().out


def test_simulate_prints_each_step(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    events = write("events.jsonl", "\n".join(json.dumps(e) for e in [
        {"type": "invoice.overdue", "data": {"amount_due": 40, "invoice_id": "INV-9"}},
        {"type": "message.delivered", "message": 1},
        {"type": "message.delivered", "message": 1},
        {"wait": "3d"},
    ]))
    contact = json.dumps({"id": "c-1", "phone": "+4915112345678", "locale": "de-DE"})
    code = main(["simulate", str(EXAMPLES / "journeys" / "payment-reminder.yaml"), "--events", str(events),
                 "--contact", contact])
    out = capsys.readouterr().out
    assert code == 0
    assert "payment-reminder: started: started by invoice.overdue [remind, active]" in out
    assert "action send_sms" in out
    assert "transitioned: message.delivered: remind -> awaiting_payment" in out
    assert "ignored: stale status" in out
    assert "after 3d: awaiting_payment -> remind_again" in out
    assert "end: payment-reminder is completed in remind_again" in out


def test_simulate_bad_input_is_a_usage_error(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    events = write("events.jsonl", '{"type": "invoice.overdue"}\nnot json\n')
    code = main(["simulate", str(EXAMPLES / "journeys" / "payment-reminder.yaml"), "--events", str(events)])
    assert code == 2
    assert "events.jsonl:2: not JSON" in capsys.readouterr().err
