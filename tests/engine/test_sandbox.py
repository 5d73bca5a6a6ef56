"""The sandbox: escapes refused, work and size bounded, errors as ExpressionError."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from jinja2 import Undefined

from engine.sandbox import compile_expression, compile_template, compile_value, environment
from journeys.errors import ExpressionError

SCOPE: dict[str, Any] = {
    "event": {"type": "message.received", "text": "Help me", "data": {"items": [1, 2, 3], "n": 40, "keys": "k"}},
    "contact": {"id": "c-1", "attributes": {}},
    "vars": {"invoice_id": "INV-1"},
}


@pytest.mark.parametrize("source", [
    "event.__class__",
    "event.__class__.__mro__[1].__subclasses__()",
    "''.__class__.__mro__",
    "event.data.__init__.__globals__",
    "'{0.__class__}'.format(event)",
    "'{0.__class__.__init__.__globals__}'.format(vars)",
    "event.data.items.__class__",
    "range.__self__",
    "lipsum.__globals__",
    "cycler.__init__.__globals__",
])
def test_attribute_escapes_are_refused(source: str) -> None:
    with pytest.raises(ExpressionError, match=r"unsafe|undefined|no attribute"):
        compile_expression(source)(SCOPE)


@pytest.mark.parametrize("source,match", [
    ("'a' * 10**9", "repeating"),
    ("[0] * 100000", "repeating"),
    ("2 ** 100000", "too large"),
    ("9 ** 9 ** 9", "too large"),
    ("range(10**7) | list", "range"),
    ("'x' | center(10**8)", "too large"),
    ("'x' | indent(10**8)", "too large"),
    ("(event.text * 5000) + (event.text * 5000)", "concatenation|repeating"),
])
def test_huge_values_are_refused(source: str, match: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match=match):
        compile_expression(source)(SCOPE)
    assert time.perf_counter() - started < 1


def test_work_is_bounded_without_output() -> None:
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match="too much work"):
        compile_template("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}")(SCOPE)
    assert time.perf_counter() - started < 1


def test_output_is_bounded() -> None:
    with pytest.raises(ExpressionError, match="output over"):
        compile_template("{% for i in range(9000) %}0123456789{% endfor %}")(SCOPE)


@pytest.mark.parametrize("source,match", [
    ("evnt.data", "'evnt' is undefined"),
    ("event.data.missing", "no attribute 'missing'"),
    ("event.data.n / 0", "ZeroDivisionError"),
    ("event.data.n > 'x'", "TypeError"),
])
def test_errors_are_expression_errors(source: str, match: str) -> None:
    with pytest.raises(ExpressionError, match=match):
        compile_expression(source)(SCOPE)


def test_data_keys_win_over_dict_methods() -> None:
    assert compile_expression("event.data.items")(SCOPE) == [1, 2, 3]
    assert compile_expression("event.data.keys")(SCOPE) == "k"


def test_values_keep_their_type_when_they_are_one_expression() -> None:
    assert compile_value("{{ event.data.n }}")(SCOPE) == 40
    assert compile_value(" {{ event.data.items }} ")(SCOPE) == [1, 2, 3]
    assert compile_value("n={{ event.data.n }}")(SCOPE) == "n=40"
    assert compile_value("{{ event.data.n }}{{ event.data.n }}")(SCOPE) == "4040"
    assert compile_value("plain text")(SCOPE) == "plain text"


def test_html_templates_escape() -> None:
    scope = {"contact": {"attributes": {"first_name": "<script>x</script>"}}}
    assert compile_template("<p>{{ contact.attributes.first_name }}</p>", html=True)(scope) == (
        "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    )
    assert compile_template("{{ contact.attributes.first_name }}")(scope) == "<script>x</script>"


def test_immutable() -> None:
    with pytest.raises(ExpressionError, match="unsafe"):
        compile_expression("event.data.items.append(4)")(SCOPE)
    assert SCOPE["event"]["data"]["items"] == [1, 2, 3]


PARITY_SCOPE: dict[str, Any] = {
    **SCOPE,
    "now": datetime(2026, 11, 27, 18, 30, tzinfo=UTC),
    "instance": MappingProxyType({"state": "remind", "seq": 2}),
}


@pytest.mark.parametrize("source", [
    "event.data.n > 0",
    "event.data['n'] * 2",
    "event.data.items[1]",
    "event.data.items | length",
    "'help' in (event.text | lower)",
    "now.hour >= 18 and now.minute == 30",
    "instance.state == 'remind'",
    "contact.attributes.tier | default('basic')",
    "vars.invoice_id ~ '-' ~ event.data.n",
    "event.data.n if event.type == 'message.received' else 0",
    "range(3) | list",
    "[event.data.n, {'k': vars.invoice_id}]",
    "not contact.attributes",
])
def test_generated_code_agrees_with_jinja(source: str) -> None:
    """Most expressions run as generated Python (engine.fastexpr), the rest through Jinja:
    both must give the same value."""
    jinja = environment().compile_expression(source, undefined_to_none=False)
    assert compile_expression(source)(PARITY_SCOPE) == jinja(**PARITY_SCOPE)


@pytest.mark.parametrize("source", ["event.data.missing", "nothing.here", "now.__class__", "event.data.n / 0"])
def test_generated_code_fails_where_jinja_fails(source: str) -> None:
    jinja = environment().compile_expression(source, undefined_to_none=False)
    with pytest.raises(Exception):  # noqa: B017 - Jinja's own error types vary; ours is always one
        result = jinja(**PARITY_SCOPE)
        if isinstance(result, Undefined):
            str(result)
    with pytest.raises(ExpressionError):
        compile_expression(source)(PARITY_SCOPE)
