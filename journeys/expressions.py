"""Jinja2 expressions and templates of the journey language: the sandbox and static checks.

One sandboxed environment serves validation, ``journeys test`` and production, so a
journey that validates parses the same way everywhere. Here we only parse and inspect
(syntax, names in scope, filters that exist); evaluation with its limits lives in the
engine. This module never renders anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Bounds a person never reaches by hand; they stop a generated or hostile file.
MAX_EXPRESSION_LENGTH = 2_000
MAX_TEMPLATE_LENGTH = 65_536

# Names visible to each kind of expression (SPEC.md section 2).
ALL_NAMES = frozenset({"event", "contact", "vars", "instance", "journey", "now"})
TRIGGER_NAMES = frozenset({"event", "contact", "journey", "now"})
VARS_NAMES = frozenset({"event", "contact", "vars", "instance", "journey", "now"})


@cache
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandbox: immutable, strict about unknown names, no autoescape for text."""
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True)
class Problem:
    """A static problem in one expression or template; line is relative to its text."""

    message: str
    line: int = 1


def parse_expression(source: str) -> nodes.Expr:
    """Parse a single expression, refusing anything after it (``a }} {{ b``)."""
    env = environment()
    parser = Parser(env, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
    return expr


def parse_template(source: str) -> nodes.Template:
    return environment().parse(source)


def _all_nodes(tree: nodes.Node) -> list[nodes.Node]:
    # find_all() skips the node it starts from, and an expression may be a single node.
    return [tree, *tree.find_all(nodes.Node)]


def _names_in(tree: list[nodes.Node]) -> set[str]:
    names = [n for n in tree if isinstance(n, nodes.Name)]
    # Names that a template binds itself ({% set %}, loop variables) are not free.
    bound = {n.name for n in names if n.ctx in ("store", "param")}
    return {n.name for n in names if n.ctx == "load" and n.name not in bound}


def _unknown_filters(tree: list[nodes.Node]) -> Iterable[Problem]:
    env = environment()
    for node in tree:
        if isinstance(node, nodes.Filter) and node.name not in env.filters:
            yield Problem(f"unknown filter {node.name!r}", node.lineno)
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            yield Problem(f"unknown test {node.name!r}", node.lineno)


def _var_references(tree: list[nodes.Node]) -> Iterable[tuple[str, int]]:
    for node in tree:
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
            continue
        if not (isinstance(node.node, nodes.Name) and node.node.name == "vars"):
            continue
        if isinstance(node, nodes.Getattr):
            yield node.attr, node.lineno
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            yield node.arg.value, node.lineno


def check(
    source: str,
    *,
    template: bool,
    names: frozenset[str] = ALL_NAMES,
    known_vars: Iterable[str] | None = None,
) -> list[Problem]:
    """Static problems of one expression (``template=False``) or template.

    *names* are the names in scope; *known_vars*, when given, are the keys that
    ``vars.NAME`` may refer to.
    """
    limit = MAX_TEMPLATE_LENGTH if template else MAX_EXPRESSION_LENGTH
    if len(source) > limit:
        kind = "template" if template else "expression"
        return [Problem(f"{kind} is {len(source)} characters long; the limit is {limit}")]
    try:
        root: nodes.Node = parse_template(source) if template else parse_expression(source)
    except TemplateSyntaxError as exc:
        return [Problem(f"Jinja syntax error: {exc.message}", exc.lineno or 1)]
    tree = _all_nodes(root)
    problems = list(_unknown_filters(tree))
    # The sandbox's globals (range, dict, namespace, ...) are always in scope.
    for name in sorted(_names_in(tree) - names - set(environment().globals)):
        hint = ", ".join(sorted(names))
        problems.append(Problem(f"unknown name {name!r} (names in scope: {hint})"))
    if known_vars is not None and "vars" in names:
        defined = set(known_vars)
        for attr, line in _var_references(tree):
            if attr not in defined:
                listed = ", ".join(sorted(defined)) or "none defined"
                problems.append(Problem(f"vars.{attr} is not defined (vars: {listed})", line))
    return problems
