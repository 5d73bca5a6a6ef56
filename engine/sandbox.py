"""Evaluate journey expressions and render templates, safely and within bounds.

Jinja's sandbox stops attribute escapes (``__class__``, ``mro``, unsafe ``format``) but
bounds nothing. Here we add the bounds: a work budget counted on every attribute access,
call, operator and ``range`` item; refusal of ``*``/``**`` whose result would be huge;
capped ``range``; capped template output. Work is counted, never timed, so the same
input always gives the same result (the interpreter is pure).

Every failure surfaces as :class:`journeys.errors.ExpressionError`, which the interpreter
records against the instance; nothing here can crash the engine.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from types import MappingProxyType
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine import fastexpr
from journeys import expressions
from journeys.errors import ExpressionError

MAX_OUTPUT = 64 * 1024          # characters one template may produce
MAX_WORK = 100_000              # attribute reads, calls, operators and range items per evaluation
MAX_RANGE = 10_000              # items one range() may have
MAX_REPEAT = 64 * 1024          # length of a repeated string or list ('-' * n)
MAX_POWER_BITS = 256            # bits of an integer built with ** or *

_work: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("journeys_work", default=None)


def _spend(amount: int = 1) -> None:
    budget = _work.get()
    if budget is None:
        return
    budget[0] -= amount
    if budget[0] < 0:
        raise ExpressionError(f"too much work: over {MAX_WORK} operations in one expression or template")


def _bounded_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise ExpressionError(f"range() of {len(result)} items; the limit is {MAX_RANGE}")
    _spend(len(result))
    return result


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _check_mul(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        size = _size(seq)
        if size is not None and isinstance(count, int) and size * count > MAX_REPEAT:
            raise ExpressionError(f"repeating a value {count} times would exceed {MAX_REPEAT} items")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
        raise ExpressionError("multiplication result too large")


def _check_pow(left: Any, right: Any) -> None:
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        base_bits = max(abs(int(left)).bit_length(), 1)
        if right > 0 and base_bits * right > MAX_POWER_BITS:
            raise ExpressionError(f"{left} ** {right} is too large")


class JourneySandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus work, size and operator bounds."""

    intercepted_binops = frozenset({"*", "**", "+"})

    @staticmethod
    def spend() -> None:
        _spend()

    def call_binop(self, context: Context, op: str, left: Any, right: Any) -> Any:
        _spend()
        if op == "*":
            _check_mul(left, right)
        elif op == "**":
            _check_pow(left, right)
        elif op == "+":
            ls, rs = _size(left), _size(right)
            if ls is not None and rs is not None and ls + rs > MAX_REPEAT:
                raise ExpressionError(f"concatenation longer than {MAX_REPEAT}")
        return super().call_binop(context, op, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        return self.lookup(obj, attribute)

    def lookup(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute`` with the sandbox's checks, uncounted. Data first: ``event.data.items``
        is the key "items", not ``dict.items``."""
        kind = type(obj)
        if (kind is dict or kind is MappingProxyType or isinstance(obj, Mapping)) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)

    def lookup_item(self, obj: Any, argument: Any) -> Any:
        """``obj[argument]`` with the sandbox's checks, uncounted."""
        return super().getitem(obj, argument)

    def call(self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    # Filters that pad or wrap can build huge strings from one small number.
    def wrapper(value: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and arg > MAX_REPEAT:
                raise ExpressionError(f"{name}({arg}) is too large")
        return original(value, *args, **kwargs)

    return wrapper


@cache
def environment() -> JourneySandbox:
    env = JourneySandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals["range"] = _bounded_range
    for name in ("center", "indent", "wordwrap", "truncate"):
        env.filters[name] = _bounded_filter(name, env.filters[name])
    return env


@cache
def html_environment() -> JourneySandbox:
    """The same sandbox with autoescaping, for HTML email templates."""
    env = JourneySandbox(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)
    env.globals.update(environment().globals)
    env.filters.update(environment().filters)
    return env


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """Call *fn* under a work budget, turning every way an evaluation can fail into ExpressionError."""
    # An evaluation started inside another spends from the outer one's budget: one bound for both.
    token = _work.set([MAX_WORK]) if _work.get() is None else None
    try:
        return fn(*args)
    except ExpressionError:
        raise
    except _FAILURES as exc:
        raise _expression_error(exc) from exc
    finally:
        if token is not None:
            _work.reset(token)


# Every way an evaluation can fail, and how each is reported.
_FAILURES = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError)


def _expression_error(exc: BaseException) -> ExpressionError:
    if isinstance(exc, TemplateError):
        return ExpressionError(exc.message or type(exc).__name__)
    return ExpressionError(f"{type(exc).__name__}: {exc}")


def _budgeted(fn: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
    def run(scope: Mapping[str, Any]) -> Any:
        return _run(fn, scope)

    return run


@dataclass(frozen=True)
class Expression:
    """A compiled expression (a guard, a subject); evaluate with :meth:`__call__`, or call
    :attr:`run` directly where every call counts (the interpreter)."""

    source: str
    run: Callable[[Mapping[str, Any]], Any]

    def __call__(self, scope: Mapping[str, Any]) -> Any:
        return self.run(scope)


@dataclass(frozen=True)
class Template:
    """A compiled template (a var, an action input); render with :meth:`__call__`."""

    source: str
    run: Callable[[Mapping[str, Any]], str]

    def __call__(self, scope: Mapping[str, Any]) -> str:
        return self.run(scope)


def _defined(value: Any) -> Any:
    # An expression may return an Undefined (an unknown key, an unsafe attribute) that
    # would only fail when used later: make it fail here, with its own message.
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


def _render(template: Any, scope: Mapping[str, Any]) -> str:
    out: list[str] = []
    size = 0
    chunks: Iterator[str] = template.generate(scope)
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise ExpressionError(f"template output over {MAX_OUTPUT} characters")
        out.append(chunk)
    return "".join(out)


def _parse(env: JourneySandbox, source: str) -> tuple[Callable[..., Any], nodes.Expr]:
    """Jinja's compiled expression and its AST; syntax was checked at load, but be safe anyway."""
    if len(source) > expressions.MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {expressions.MAX_EXPRESSION_LENGTH} characters")
    try:
        return (env.compile_expression(source, undefined_to_none=False),
                Parser(env, source, state="variable").parse_expression())
    except TemplateError as exc:
        raise ExpressionError(f"cannot compile {source!r}: {exc}") from exc


def compile_expression(source: str) -> Expression:
    """Compile a guard or subject."""
    env = environment()
    return Expression(source, _expression_run(env, *_parse(env, source), value=False))


def _expression_run(env: JourneySandbox, compiled: Callable[..., Any], tree: nodes.Expr,
                    value: bool) -> Callable[[Mapping[str, Any]], Any]:
    """The generated function where the expression has a supported shape (see fastexpr), else Jinja's."""
    fast = fastexpr.compile_expression(env, tree, _SUPPORT, value=value)
    if fast is not None:
        return _budgeted(fast.fn) if fast.spends else fast.fn

    def run(scope: Mapping[str, Any]) -> Any:
        result = _run(lambda: _defined(compiled(**scope)))
        return plain(result) if value else result

    return run


def compile_template(source: str, *, html: bool = False) -> Template:
    if len(source) > expressions.MAX_TEMPLATE_LENGTH:
        raise ExpressionError(f"template longer than {expressions.MAX_TEMPLATE_LENGTH} characters")
    env = html_environment() if html else environment()
    try:
        ast = env.parse(source)
        constant: str | None = None
        if not ast.body:
            constant = ""
        elif (
            len(ast.body) == 1
            and isinstance(ast.body[0], nodes.Output)
            and all(isinstance(n, nodes.TemplateData) for n in ast.body[0].nodes)
        ):
            constant = "".join(n.data for n in ast.body[0].nodes if isinstance(n, nodes.TemplateData))
        if constant is not None:
            text = constant  # plain text with no Jinja in it renders to itself, without the sandbox
            return Template(source, lambda scope: text)
        fast = None if html else fastexpr.compile_template(env, ast, _SUPPORT)
        if fast is not None:
            return Template(source, _budgeted(fast.fn) if fast.spends else fast.fn)
        template = env.from_string(ast)
        return Template(source, lambda scope: str(_run(lambda: _render(template, scope))))
    except TemplateError as exc:
        raise ExpressionError(f"cannot compile template: {exc}") from exc



_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


def plain(value: Any) -> Any:
    """JSON-ready data from an evaluated value: what vars and action inputs may hold."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _too_long() -> ExpressionError:
    return ExpressionError(f"template output over {MAX_OUTPUT} characters")


# What generated functions (engine.fastexpr) use to finish: error mapping, plain(), bounds.
_SUPPORT: Mapping[str, Any] = MappingProxyType({
    "_isinstance": isinstance, "_len": len, "_Undefined": Undefined, "_plain": plain,
    "_SCALARS": frozenset({str, int, float, bool, type(None)}), "_MAX_OUTPUT": MAX_OUTPUT, "_too_long": _too_long,
    "_ExpressionError": ExpressionError, "_FAILURES": _FAILURES, "_error": _expression_error,
})


@dataclass(frozen=True)
class Value:
    """A var or an action input: ``"{{ expr }}"`` keeps the expression's type (a number stays
    a number, made JSON-ready by :func:`plain`); any other text renders as a string."""

    source: str
    run: Callable[[Mapping[str, Any]], Any]

    def __call__(self, scope: Mapping[str, Any]) -> Any:
        return self.run(scope)


def compile_value(source: str) -> Value:
    match = _SINGLE.match(source)
    if match:
        env = environment()
        try:
            return Value(source, _expression_run(env, *_parse(env, match["expr"]), value=True))
        except ExpressionError:
            pass  # not a lone expression after all (e.g. a filter block); render as text
    return Value(source, compile_template(source).run)
