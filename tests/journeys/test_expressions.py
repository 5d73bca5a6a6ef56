"""Static checks of expressions and templates, and durations."""

from __future__ import annotations

import pytest

from journeys import expressions
from journeys.durations import DurationSyntaxError, format_ms, parse_ms


def messages(source: str, *, template: bool = False, **kw: object) -> list[str]:
    return [p.message for p in expressions.check(source, template=template, **kw)]  # type: ignore[arg-type]


def test_valid_expression_and_template() -> None:
    assert messages("event.data.amount > 0 and 'x' in (event.text | lower)") == []
    assert messages("Hi {{ contact.id }}{% for x in event.data.items %}{{ x }}{% endfor %}", template=True) == []


def test_trailing_text_after_an_expression_is_refused() -> None:
    assert messages("a }} {{ b", names=frozenset({"a", "b"})) == ["Jinja syntax error: unexpected '}}' after the "
                                                                  "expression"]


def test_unknown_names_filters_and_vars() -> None:
    assert messages("evnt.data") == ["unknown name 'evnt' (names in scope: contact, event, instance, journey, "
                                     "now, vars)"]
    assert messages("event.text | lwer") == ["unknown filter 'lwer'"]
    assert messages("evnt") == messages("evnt.data")  # a lone name is an expression too
    assert messages("x is evenn", names=frozenset({"x"})) == ["unknown test 'evenn'"]
    assert messages("vars.a ~ vars['b']", known_vars=["a"]) == ["vars.b is not defined (vars: a)"]


def test_names_bound_inside_a_template_are_fine() -> None:
    assert messages("{% set n = 3 %}{{ n }}{% for i in range(n) %}{{ i }}{% endfor %}", template=True) == []


def test_length_limits() -> None:
    assert "limit is 2000" in messages("1 + " * 600 + "1")[0]
    assert messages("x" * 70_000, template=True)[0].startswith("template is 70000 characters long")


def test_syntax_error_line_inside_a_template() -> None:
    [problem] = expressions.check("line one\n{{ oops(", template=True)
    assert problem.line == 2 and problem.message.startswith("Jinja syntax error")


@pytest.mark.parametrize("text,ms", [("500ms", 500), ("30s", 30_000), ("15m", 900_000), ("24h", 86_400_000),
                                     ("7d", 604_800_000), ("2w", 1_209_600_000), ("1h30m", 5_400_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_ms(text) == ms
    assert parse_ms(format_ms(ms)) == ms


@pytest.mark.parametrize("text", ["90", "1:30", "1 h", "30m1h", "1h1h", "", "1.5h", "-1s", "5mss"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationSyntaxError, match="not a duration"):
        parse_ms(text)
