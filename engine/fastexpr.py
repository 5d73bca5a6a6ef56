"""Compile the common shapes of journey expressions and templates to plain Python closures.

Jinja builds a new render context for every evaluation, which costs more than the guard
itself (``event.data.amount_due > 0``). Most journey expressions are names, attribute
reads, comparisons, boolean logic, literals and filters; most templates are text with
``{{ expr }}`` in it. For those shapes we generate a small Python function from Jinja's
own AST. A read of a key from a dict or a read-only mapping (``event.data.amount_due``)
is done inline; every other attribute or item read goes through the sandbox's own checks,
and calls, filters, tests and the guarded operators go through its hooks, so safety and
the work budget are the same. Reads are not counted against the budget here: with no
loops in these shapes, their number is bounded by the size of the expression. Anything
else (``{% for %}``, ``{% if %}``, macros, filters that need a context) returns None,
and the caller uses Jinja itself.

Generated code only ever contains: calls to the helpers bound below, ``repr()`` of
names and constants taken from the AST, Python operators, temporaries named ``_tN``, and
a fixed epilogue (the Undefined check, ``plain()`` or the output bound, and the mapping of
errors to ExpressionError). No source text of the expression reaches the generated code
except through ``repr``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.utils import _PassArg

from journeys.errors import ExpressionError

_BINOPS = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "FloorDiv": "//", "Mod": "%", "Pow": "**"}
_COMPARE = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in",
            "notin": "not in"}
_CONST_TYPES = (str, int, float, bool, type(None))


# The mappings expressions usually read from (scopes, event data, vars): read inline.
_PLAIN_MAPPINGS = frozenset({dict, MappingProxyType})


class Unsupported(Exception):  # noqa: N818 - internal signal to fall back to Jinja
    pass


@dataclass(frozen=True)
class Compiled:
    """A generated function, and whether it can spend work at all (a call, a filter, a test or
    a guarded operator can; an expression of reads, comparisons and logic cannot, so it needs
    no work budget). The function maps every failure to ExpressionError itself."""

    fn: Callable[[Mapping[str, Any]], Any]
    spends: bool


# What the generated function does with the value before returning it: an expression must
# not return an Undefined (it would only fail later, somewhere else); a value is made
# JSON-ready (sandbox.plain); a template's output is bounded.
_FINISH = {
    "expression": "    if _isinstance(_v, _Undefined):\n        _v._fail_with_undefined_error()\n",
    "value": "    if _isinstance(_v, _Undefined):\n        _v._fail_with_undefined_error()\n"
             "    if _type(_v) not in _SCALARS:\n        _v = _plain(_v)\n",
    "template": "    if _len(_v) > _MAX_OUTPUT:\n        raise _too_long()\n",
}


class _Compiler:
    def __init__(self, env: Any) -> None:
        self.env = env
        self.names: dict[str, Any] = {}
        self._ids = itertools.count()
        self._temps = itertools.count()
        self.spends = False

    def bind(self, value: Any) -> str:
        name = f"_h{next(self._ids)}"
        self.names[name] = value
        return name

    def temp(self) -> str:
        return f"_t{next(self._temps)}"

    def filter_fn(self, name: str) -> str:
        self.spends = True
        func = self.env.filters.get(name)
        if func is None:
            raise Unsupported
        kind = _PassArg.from_obj(func)
        if kind is None:
            return self.bind(func)
        if kind is _PassArg.environment:
            return self.bind(lambda *a, **k: func(self.env, *a, **k))
        if kind is _PassArg.eval_context:
            ctx = EvalContext(self.env)
            return self.bind(lambda *a, **k: func(ctx, *a, **k))
        raise Unsupported  # needs a render context

    def test_fn(self, name: str) -> str:
        self.spends = True
        func = self.env.tests.get(name)
        if func is None or _PassArg.from_obj(func) is not None:
            raise Unsupported
        return self.bind(func)

    def args(self, node: Any) -> str:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise Unsupported
        parts = [self.expr(a) for a in node.args]
        parts += [f"{kw.key}={self.expr(kw.value)}" for kw in node.kwargs if kw.key.isidentifier()]
        if len(parts) != len(node.args) + len(node.kwargs):
            raise Unsupported
        return ", ".join(parts)

    def expr(self, node: nodes.Node) -> str:
        if isinstance(node, nodes.Const):
            if not isinstance(node.value, _CONST_TYPES):
                raise Unsupported
            return repr(node.value)
        if isinstance(node, nodes.Name):
            if node.ctx != "load":
                raise Unsupported
            name = repr(node.name)
            if node.name in self.env.globals:
                return f"(s[{name}] if {name} in s else {self.bind(self.env.globals[node.name])})"
            return f"(s[{name}] if {name} in s else _undefined(name={name}))"
        if isinstance(node, nodes.Getattr):
            # data first: event.data.items is the key "items", not dict.items
            t, attr = self.temp(), repr(node.attr)
            return (f"({t}[{attr}] if _type({t} := {self.expr(node.node)}) in _PLAIN and {attr} in {t} "
                    f"else _getattr({t}, {attr}))")
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Slice):
                raise Unsupported
            return f"_getitem({self.expr(node.node)}, {self.expr(node.arg)})"
        if isinstance(node, nodes.Compare):
            if len(node.ops) != 1 or node.ops[0].op not in _COMPARE:
                raise Unsupported
            return f"({self.expr(node.expr)} {_COMPARE[node.ops[0].op]} {self.expr(node.ops[0].expr)})"
        if isinstance(node, nodes.And):
            return f"({self.expr(node.left)} and {self.expr(node.right)})"
        if isinstance(node, nodes.Or):
            return f"({self.expr(node.left)} or {self.expr(node.right)})"
        if isinstance(node, nodes.Not):
            return f"(not {self.expr(node.node)})"
        if isinstance(node, nodes.Neg):
            return f"(-{self.expr(node.node)})"
        if isinstance(node, nodes.Pos):
            return f"(+{self.expr(node.node)})"
        if isinstance(node, nodes.BinExpr):
            op = _BINOPS.get(type(node).__name__)
            if op is None:
                raise Unsupported
            if op in self.env.intercepted_binops:
                self.spends = True
                return f"_binop({op!r}, {self.expr(node.left)}, {self.expr(node.right)})"
            return f"({self.expr(node.left)} {op} {self.expr(node.right)})"
        if isinstance(node, nodes.Concat):
            return "_concat(" + ", ".join(self.expr(n) for n in node.nodes) + ")"
        if isinstance(node, nodes.CondExpr):
            if node.expr2 is None:
                raise Unsupported
            return f"({self.expr(node.expr1)} if {self.expr(node.test)} else {self.expr(node.expr2)})"
        if isinstance(node, (nodes.List, nodes.Tuple)):
            items = ", ".join(self.expr(n) for n in node.items)
            return f"[{items}]" if isinstance(node, nodes.List) else f"({items}{',' if node.items else ''})"
        if isinstance(node, nodes.Dict):
            return "{" + ", ".join(f"{self.expr(p.key)}: {self.expr(p.value)}" for p in node.items) + "}"
        if isinstance(node, (nodes.Filter, nodes.Test, nodes.Call)):
            # all three are a function applied to node.node, then the arguments
            subject = node.node
            if subject is None:  # a filter block ({% filter %}) has none
                raise Unsupported
            if isinstance(node, nodes.Filter):
                fn = self.filter_fn(node.name)
            elif isinstance(node, nodes.Test):
                fn = self.test_fn(node.name)
            else:
                self.spends = True
                fn = "_call"
            extra = self.args(node)
            return f"{fn}({self.expr(subject)}{', ' + extra if extra else ''})"
        raise Unsupported

    def build(self, body: str, finish: str, support: Mapping[str, Any]) -> Compiled:
        """The function ``_compiled(s)``: *body* evaluated in scope ``s``, then *finish*;
        *support* holds the sandbox's error mapping and bounds (see sandbox._SUPPORT)."""
        env = self.env

        def _call(obj: Any, *args: Any, **kwargs: Any) -> Any:
            env.spend()
            if not env.is_safe_callable(obj):
                raise SecurityError(f"{obj!r} is not safely callable")
            return obj(*args, **kwargs)

        def _concat(*parts: Any) -> str:
            return "".join(str(p) for p in parts)

        namespace: dict[str, Any] = {
            "__builtins__": {},
            "_type": type,
            "_PLAIN": _PLAIN_MAPPINGS,
            "_undefined": env.undefined,
            "_getattr": env.lookup,
            "_getitem": env.lookup_item,
            "_binop": lambda op, a, b: env.call_binop(None, op, a, b),
            "_call": _call,
            "_concat": _concat,
            "_str": str,
            **support,
            **self.names,
        }
        code = (f"def _compiled(s):\n    try:\n        _v = {body}\n"
                + "".join(f"    {line}\n" for line in _FINISH[finish].splitlines())
                + "    except _ExpressionError:\n        raise\n"
                "    except _FAILURES as _e:\n        raise _error(_e) from _e\n    return _v\n")
        exec(compile(code, "<journey expression>", "exec"), namespace)
        fn: Callable[[Mapping[str, Any]], Any] = namespace["_compiled"]
        return Compiled(fn, self.spends)


def compile_expression(env: Any, tree: nodes.Expr, support: Mapping[str, Any], *,
                       value: bool = False) -> Compiled | None:
    """A function evaluating *tree* (an expression AST), or None when Jinja must do it.
    With *value*, its result is made JSON-ready."""
    compiler = _Compiler(env)
    try:
        body = compiler.expr(tree)
    except Unsupported:
        return None
    return compiler.build(body, "value" if value else "expression", support)


def compile_template(env: Any, tree: nodes.Template, support: Mapping[str, Any]) -> Compiled | None:
    """A closure rendering *tree* when it is text and ``{{ expr }}`` only; else None."""
    compiler = _Compiler(env)
    parts: list[str] = []
    try:
        for stmt in tree.body:
            if not isinstance(stmt, nodes.Output):
                return None
            for child in stmt.nodes:
                if isinstance(child, nodes.TemplateData):
                    parts.append(repr(child.data))
                else:
                    parts.append(f"_str({compiler.expr(child)})")
    except Unsupported:
        return None
    return compiler.build("".join(["''.join([", ", ".join(parts), "])"]), "template", support)


__all__ = ["Compiled", "ExpressionError", "compile_expression", "compile_template"]
