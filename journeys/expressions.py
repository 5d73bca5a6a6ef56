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

# Names visible to each kind of expression.
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


def _names_in(tree: list[nodes.Node]) -> dict[str, int]:
    """Free names and the line each first appears on."""
    names = [n for n in tree if isinstance(n, nodes.Name)]
    # Names that a template binds itself ({% set %}, loop variables) are not free.
    bound = {n.name for n in names if n.ctx in ("store", "param")}
    free: dict[str, int] = {}
    for n in names:
        if n.ctx == "load" and n.name not in bound:
            free[n.name] = min(free.get(n.name, n.lineno), n.lineno)
    return free


def _private_attributes(tree: list[nodes.Node]) -> Iterable[Problem]:
    # The sandbox refuses these at run time; refusing them here saves a failed send.
    for node in tree:
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        if name is not None and name.startswith("_"):
            yield Problem(f"attribute {name!r} is not allowed: names starting with '_' are refused by the sandbox",
                          node.lineno)


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
    later_vars: Iterable[str] = (),
) -> list[Problem]:
    """Static problems of one expression (``template=False``) or template.

    *names* are the names in scope; *known_vars*, when given, are the keys that
    ``vars.NAME`` may refer to; *later_vars* are vars defined after this one.
    """
    limit = MAX_TEMPLATE_LENGTH if template else MAX_EXPRESSION_LENGTH
    if len(source) > limit:
        kind = "template" if template else "expression"
        return [Problem(f"{kind} is {len(source)} characters long; the limit is {limit}")]
    stripped = source.strip()
    if not template and stripped.startswith("{{") and stripped.endswith("}}"):
        return [Problem("this is an expression already: write it without the {{ }}")]
    try:
        root: nodes.Node = parse_template(source) if template else parse_expression(source)
    except TemplateSyntaxError as exc:
        return [Problem(f"Jinja syntax error: {exc.message}", exc.lineno or 1)]
    tree = _all_nodes(root)
    problems = [*_unknown_filters(tree), *_private_attributes(tree)]
    hint = ", ".join(sorted(names))
    # The sandbox's globals (range, dict, namespace, ...) are always in scope.
    globals_ = set(environment().globals)
    for name, line in sorted(_names_in(tree).items()):
        if name in names or name in globals_:
            continue
        if name in ALL_NAMES:
            problems.append(Problem(f"{name!r} is not available here: this expression runs before the instance "
                                    f"exists, so nothing is captured yet (names in scope: {hint})", line))
        else:
            problems.append(Problem(f"unknown name {name!r} (names in scope: {hint})", line))
    if known_vars is not None and "vars" in names:
        defined, later = set(known_vars), set(later_vars)
        for attr, line in _var_references(tree):
            if attr in later:
                problems.append(Problem(f"vars.{attr} is defined later in vars: a var can only use the vars "
                                        "above it", line))
            elif attr not in defined:
                listed = ", ".join(sorted(defined)) or "none defined"
                problems.append(Problem(f"vars.{attr} is not defined (vars: {listed})", line))
    return sorted(problems, key=lambda p: p.line)
