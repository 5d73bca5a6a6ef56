"""Read YAML text into plain data while remembering where every node stood.

PyYAML speaks YAML 1.1: it reads ``on``/``off``/``yes``/``no`` as booleans, ``1:30``
as the number 90, and silently keeps the last of two equal keys. In a journey those
words are state names, event types and durations, so this module composes the node
graph (keeping line and column) and builds the data itself with YAML 1.2 core rules:
mapping keys are always strings, only ``true``/``false`` are booleans, no sexagesimal
numbers, no timestamps, and a duplicate key is an error that names both lines.

It never evaluates tags beyond the standard ones: a custom ``!tag`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from journeys.errors import DefinitionError, Diagnostic, Location, PathPart

try:  # libyaml's composer is several times faster; the pure one is the fallback
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

Path = tuple[PathPart, ...]

_TAG = "tag:yaml.org,2002:"
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

# A document this large is not a hand-written journey; alias bombs end here.
MAX_NODES = 200_000


def resolve_plain(value: str) -> Any:
    """Resolve an untagged plain scalar by the YAML 1.2 core schema."""
    if _NULL.match(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT10.match(value):
        return int(value)
    if _INT8.match(value):
        return int(value[2:], 8)
    if _INT16.match(value):
        return int(value[2:], 16)
    if _FLOAT.match(value) and any(c.isdigit() for c in value):
        return float(value)
    if _INF.match(value):
        return float("-inf") if value.startswith("-") else float("inf")
    if _NAN.match(value):
        return float("nan")
    return value


def strings_in(value: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """Every string inside plain data, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings_in(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings_in(v, (*path, i))


@dataclass
class Document:
    """Plain data read from one YAML file, with the position of every node."""

    file: str
    data: Any
    text: str = ""
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # block scalars (| and >): the file line of their first line of text
    blocks: dict[Path, int] = field(default_factory=dict)

    def locate_in_text(self, path: Path, text_line: int) -> Location:
        """The file position of line *text_line* (from 1) of the string at *path*."""
        if path in self.blocks:
            return Location(self.file, self.blocks[path] + text_line - 1, 1)
        where = self.locate(path)
        if text_line <= 1:
            return where
        return Location(self.file, where.line + text_line - 1, 1)

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The position of the node at *path* (of its key with ``key=True``).

        Falls back to the nearest ancestor that exists, so an error about a missing
        key points at the mapping that lacks it.
        """
        table = self.keys if key else self.values
        probe = tuple(path)
        if key and probe in table:
            line, col = table[probe]
            return Location(self.file, line, col)
        while True:
            if probe in self.values:
                line, col = self.values[probe]
                return Location(self.file, line, col)
            if not probe:
                return Location(self.file, 1, 1)
            probe = probe[:-1]

    def diagnostic(
        self,
        path: Path,
        message: str,
        *,
        key: bool = False,
        severity: str = "error",
        code: str = "invalid",
        location: Location | None = None,
    ) -> Diagnostic:
        where = location or self.locate(path, key=key)
        return Diagnostic(where, message, tuple(path), severity, code)  # type: ignore[arg-type]


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[Path, tuple[int, int]] = {}
        self.keys: dict[Path, tuple[int, int]] = {}
        self.blocks: dict[Path, int] = {}
        self.count = 0
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, message: str, path: Path) -> DefinitionError:
        mark = node.start_mark
        loc = Location(self.file, mark.line + 1, mark.column + 1)
        return DefinitionError([Diagnostic(loc, message, path, "error", "yaml")])

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"document too large (over {MAX_NODES} nodes; alias loop?)", path)
        self.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            raise self.fail(node, "an alias refers to itself (recursive YAML is not allowed)", path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self.check_tag(node, "seq", path)
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                self.check_tag(node, "map", path)
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        raise self.fail(node, "unsupported YAML node", path)  # pragma: no cover

    def check_tag(self, node: yaml.Node, kind: str, path: Path) -> None:
        if node.tag != _TAG + kind:
            raise self.fail(node, f"custom YAML tag {node.tag!r} is not supported", path)

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        tag = node.tag
        if not tag.startswith(_TAG):
            raise self.fail(node, f"custom YAML tag {tag!r} is not supported", path)
        kind = tag[len(_TAG) :]
        if node.style in ("|", ">"):
            self.blocks[path] = node.start_mark.line + 2
        if node.style or kind == "str":  # quoted or block scalars are always text
            return node.value
        if kind in ("bool", "int", "float", "null", "timestamp", "value", "merge"):
            # YAML 1.1 guessed a type; resolve again with 1.2 rules so that
            # yes/no/on/off and 1:30 stay strings.
            return resolve_plain(node.value)
        raise self.fail(node, f"YAML tag !!{kind} is not supported", path)

    def key_of(self, node: yaml.Node, path: Path) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "a mapping key must be a plain value, not a list or mapping", path)
        if not node.tag.startswith(_TAG):
            raise self.fail(node, f"custom YAML tag {node.tag!r} is not supported", path)
        # Keys are names, event types or durations: always strings, never 1.1 guesses.
        return str(node.value)

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _TAG + "merge":
                merged.extend(self.merge_pairs(value_node, path))
                continue
            key = self.key_of(key_node, path)
            child = (*path, key)
            if key in first_line:
                raise self.fail(
                    key_node,
                    f"duplicate key {key!r} (first defined on line {first_line[key]})",
                    child,
                )
            first_line[key] = key_node.start_mark.line + 1
            self.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child)
        # Merged keys (<<: *anchor) give way to keys written in place.
        for key_node, value_node in merged:
            key = self.key_of(key_node, path)
            if key in out:
                continue
            child = (*path, key)
            self.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, child)
        return out

    def merge_pairs(self, value: yaml.Node, path: Path) -> list[tuple[yaml.Node, yaml.Node]]:
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self.fail(source, "a merge key (<<) takes a mapping or a list of mappings", path)
            pairs.extend(source.value)
        return pairs


_UNCLOSED = {
    "while parsing a flow mapping": "this '{' is never closed",
    "while parsing a flow sequence": "this '[' is never closed",
    "while scanning a quoted scalar": "this quoted string is never closed",
}


def _explain(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    """Line, column and words for a parser error, at the place a person must fix."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or "malformed YAML"
    context = exc.context or ""
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line][: mark.column + 1]:
        return line, col, "a tab character cannot indent YAML: use spaces"
    if "expected a single document" in context:
        return line, col, "a file holds one document; remove the extra '---'"
    start = exc.context_mark
    if context in _UNCLOSED and start is not None:
        # The parser notices at the end of the stream or the next line; the fix is where it opened.
        return start.line + 1, start.column + 1, f"{_UNCLOSED[context]} ({problem})"
    return line, col, problem


def load_text(text: str, file: str = "<string>") -> Document:
    """Parse one YAML document; raise :class:`DefinitionError` with the line of any problem."""
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        line, col, problem = _explain(exc, text)
        message = f"malformed YAML: {problem}"
        raise DefinitionError([Diagnostic(Location(file, line, col), message, (), "error", "yaml")]) from exc
    except yaml.YAMLError as exc:
        message = f"malformed YAML: {exc}"
        raise DefinitionError([Diagnostic(Location(file, 1, 1), message, (), "error", "yaml")]) from exc
    if root is None:
        raise DefinitionError([Diagnostic(Location(file, 1, 1), "the file is empty", (), "error", "yaml")])
    builder = _Builder(file)
    data = builder.build(root, ())
    return Document(file, data, text, builder.values, builder.keys, builder.blocks)


def load_file(path: str) -> Document:
    """Read and parse a file; unreadable or non-UTF-8 files are a :class:`DefinitionError`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DefinitionError(
            [Diagnostic(Location(path), f"cannot read the file: {exc.strerror}", (), "error", "io")]
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        message = f"the file is not UTF-8 (byte {exc.start})"
        raise DefinitionError([Diagnostic(Location(path, line, 1), message, (), "error", "io")]) from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    return load_text(text, path)
