"""A corpus of broken journeys: each file under ``broken/`` has exactly one deliberate mistake.

Every file starts with a header that says what ``journeys validate`` must report::

    # expect: LINE: SUBSTRING
    # xfail: REASON        (optional: a known gap in the validator; the test is a strict xfail)

LINE is the exact line of the offending node and SUBSTRING a distinctive part of the error
message a person needs to understand the mistake. The files are standalone (no config.yaml
above them), so template files are not looked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from journeys.deployment import Report, find_root, validate

BROKEN = Path(__file__).resolve().parent / "broken"
FILES = sorted(BROKEN.glob("*.yaml"))

_EXPECT = re.compile(r"^# expect: (?P<line>\d+): (?P<substring>.*\S)\s*$")
_XFAIL = re.compile(r"^# xfail: (?P<reason>.*\S)\s*$")

# Signs of Python internals leaking into a message meant for a person.
_INTERNALS = [re.compile(p) for p in (
    "<", "object at", "Traceback", "given schemas", r"\bNone\b", r"\{'[^']*': ", r"\['[^']*', ",
)]


@dataclass(frozen=True)
class Expectation:
    line: int
    substring: str
    xfail: str | None = None


def read_expectation(path: Path) -> Expectation:
    """The header of one corpus file (read as bytes: one file is deliberately not UTF-8)."""
    head = path.read_bytes().decode("utf-8", errors="replace").splitlines()[:2]
    match = _EXPECT.match(head[0]) if head else None
    if match is None:
        raise ValueError(f"{path.name}: the first line must be '# expect: LINE: SUBSTRING'")
    xfail = _XFAIL.match(head[1]) if len(head) > 1 else None
    return Expectation(int(match["line"]), match["substring"], xfail["reason"] if xfail else None)


def _cases() -> list[object]:
    cases: list[object] = []
    for path in FILES:
        expected = read_expectation(path)
        marks = [pytest.mark.xfail(strict=True, reason=expected.xfail)] if expected.xfail else []
        cases.append(pytest.param(path, expected, id=path.name, marks=marks))
    return cases


def _listing(report: Report) -> str:
    return "\n".join(f"  {d}" for d in report.diagnostics) or "  (no diagnostics)"


@pytest.mark.parametrize(("path", "expected"), _cases())
def test_broken_journey_is_reported(path: Path, expected: Expectation) -> None:
    report = validate([str(path)])
    assert not report.ok, f"{path.name} validated without errors"
    hits = [d for d in report.errors if d.location.line == expected.line and expected.substring in d.message]
    assert hits, (
        f"{path.name}: expected an error on line {expected.line} containing {expected.substring!r}; got:\n"
        + _listing(report)
    )


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 30, f"only {len(FILES)} broken journeys under {BROKEN}"


def test_corpus_is_standalone() -> None:
    # Inside a deployment (a config.yaml above), template names would be checked too.
    assert all(find_root(path) is None for path in FILES)


def test_messages_show_no_python_internals() -> None:
    leaks = [
        f"{path.name}: {d}"
        for path in FILES
        for d in validate([str(path)]).diagnostics
        if any(sign.search(d.message) for sign in _INTERNALS)
    ]
    assert not leaks, "messages with Python internals:\n" + "\n".join(leaks)
