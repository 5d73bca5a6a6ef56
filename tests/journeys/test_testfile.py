"""Journey test files are checked against the journeys they test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from journeys.deployment import validate

Write = Callable[[str, str], Path]

JOURNEY = """
journey: ping
version: 2
trigger: {on: ping.sent}
initial: waiting
states:
  waiting: {on: {pong.received: done}}
  done: {final: true}
"""


def test_valid_test_file_alone_finds_its_journey(write: Write) -> None:
    write("ping.yaml", JOURNEY)
    test = write("ping.test.yaml", """
        journey: ping
        cases:
          - name: pong
            events: [{type: ping.sent}, {wait: 1h}, {type: pong.received}]
            expect: {state: done, status: completed, actions: []}
        """)
    report = validate([str(test)])
    assert report.ok, [str(d) for d in report.diagnostics]
    [suite] = report.suites
    assert suite.cases[0].steps[1].wait_ms == 3_600_000
    assert suite.cases[0].start.isoformat() == "2026-01-05T10:00:00+00:00"


def test_unknown_journey_state_action_and_version(write: Write) -> None:
    write("ping.yaml", JOURNEY)
    test = write("ping.test.yaml", """
        journey: ping
        cases:
          - name: wrong state
            events: [{type: ping.sent}, {type: message.deliverd}]
            expect: {state: dnoe, actions: [send_smss]}
        """)
    found = [(d.location.line, d.message) for d in validate([str(test)]).errors]
    assert any(line == 4 and "unknown event type 'message.deliverd'" in msg for line, msg in found)
    assert (5, "journey 'ping' has no state 'dnoe' (states: waiting, done)") in found
    assert (5, "unknown action 'send_smss'") in found
    other = write("other.test.yaml",
                  "journey: pong\ncases: [{name: x, events: [{wait: 1s}], expect: {status: active}}]\n")
    [diag] = validate([str(other)]).errors
    assert diag.location.line == 1 and "no journey 'pong' to test (journeys: ping)" in diag.message
    versioned = write("v.test.yaml", "journey: ping\nversion: 1\ncases: [{name: x, events: [{wait: 1s}], "
                                     "expect: {status: active}}]\n")
    [diag] = validate([str(versioned)]).errors
    assert diag.location.line == 2 and "has no version 1 (versions: 2)" in diag.message


def test_step_shapes(write: Write) -> None:
    test = write("x.test.yaml", """
        journey: ping
        cases:
          - name: bad steps
            start: 2026-01-05 10:00
            events:
              - {wait: 1h, type: ping.sent}
              - {typ: ping.sent}
              - {wait: 1 hour}
            expect: {status: done}
        """)
    found = [(d.location.line, d.message) for d in validate([str(test)]).errors]
    lines = {line for line, _ in found}
    assert {4, 6, 7, 8, 9} <= lines
    assert any(line == 6 and "either an event" in msg for line, msg in found)
    assert any(line == 7 and "unknown key 'typ'" in msg for line, msg in found)
    assert any(line == 8 and "not a duration" in msg for line, msg in found)
    assert any(line == 9 and "'done' is not one of" in msg for line, msg in found)
