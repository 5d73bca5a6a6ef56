"""The JSON Schemas shipped with the package, and their errors in words, at the right line.

jsonschema reports every failing keyword; a person wants one sentence at the line of the
offending node. Errors inside ``oneOf``/``anyOf`` are narrowed to the alternative the
author evidently meant (the deepest, type-matching one), unless the schema node carries
an ``errorMessage`` that says it better.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from journeys.errors import Diagnostic
from journeys.yamlsrc import Document

Kind = Literal["journey", "config", "test"]
KINDS: tuple[Kind, ...] = ("journey", "config", "test")


@cache
def schema_text(kind: Kind) -> str:
    """The schema exactly as shipped (what ``journeys schema KIND`` prints)."""
    return resources.files("journeys.schemas").joinpath(f"{kind}.schema.json").read_text("utf-8")


@cache
def schema(kind: Kind) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text(kind))
    return loaded


@cache
def validator(kind: Kind) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


@cache
def fast_validator(kind: Kind) -> jsonschema_rs.Draft202012Validator:
    """A compiled validator (Rust) that only answers yes or no, about 100x faster."""
    return jsonschema_rs.Draft202012Validator(schema(kind))


# When alternatives fail at the same depth, the keyword that best tells what to fix.
_PRIORITY = {"additionalProperties": 0, "required": 1, "enum": 2, "const": 2, "pattern": 3}


def _key(error: ValidationError) -> tuple[int, bool, int]:
    # deeper first; then errors of an alternative whose type matched; then by keyword
    return (-len(error.path), error.validator == "type", _PRIORITY.get(str(error.validator), 5))


def _narrow(error: ValidationError) -> ValidationError:
    """Descend into oneOf/anyOf contexts to the error the author most likely meant."""
    while error.context:
        best = min(error.context, key=_key)
        has_message = isinstance(error.schema, dict) and "errorMessage" in error.schema
        deeper = len(best.absolute_path) > len(error.absolute_path)
        if not deeper and (has_message or best.validator == "type"):
            # Either the schema says it best, or no alternative even had the right type:
            # the oneOf itself is the message ("expected a mapping or a list").
            return error
        error = best
    return error


def _wanted_types(error: ValidationError) -> list[str]:
    wanted: list[str] = []
    for sub in error.context or []:
        if sub.validator == "type" and len(sub.path) == 0:
            values = sub.validator_value if isinstance(sub.validator_value, list) else [sub.validator_value]
            wanted += [str(v) for v in values if str(v) not in wanted]
    return wanted


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _extra_keys(error: ValidationError) -> list[str]:
    """Keys of the failing mapping that its schema does not allow (additionalProperties)."""
    node = error.schema if isinstance(error.schema, dict) else {}
    allowed = node.get("properties", {})
    patterns = [re.compile(p) for p in node.get("patternProperties", {})]
    instance = error.instance if isinstance(error.instance, dict) else {}
    return [k for k in instance if k not in allowed and not any(p.search(k) for p in patterns)]


def _is_property_name_error(error: ValidationError) -> bool:
    return "propertyNames" in error.absolute_schema_path


def _message(error: ValidationError) -> str:
    schema_node = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    custom = schema_node.get("errorMessage")
    if _is_property_name_error(error):
        text = custom or error.message
        return f"key {value!r}: {text}"
    if custom:
        if isinstance(value, (str, int, float, bool)) and error.validator != "required":
            return f"{custom} (got {value!r})"
        return str(custom)
    kind = str(error.validator)
    expected: Any = error.validator_value
    if kind in ("oneOf", "anyOf") and _wanted_types(error):
        words = " or ".join(_TYPE_WORDS.get(w, w) for w in _wanted_types(error))
        return f"expected {words}, got {_describe(value)}"
    if kind == "required" and isinstance(value, dict):
        missing = [k for k in expected if k not in value]
        names = ", ".join(repr(k) for k in missing)
        return f"missing required key {names}" if len(missing) == 1 else f"missing required keys {names}"
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema_node.get("properties", {}))
        extras = _extra_keys(error)
        extra = extras[0] if extras else "?"
        hint = _suggest(extra, allowed)
        return f"unknown key {extra!r}{hint}; allowed here: {', '.join(allowed)}"
    if kind == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        words = " or ".join(_TYPE_WORDS.get(str(w), str(w)) for w in wanted)
        return f"expected {words}, got {_describe(value)}"
    if kind == "enum":
        options = [str(o) for o in expected]
        hint = _suggest(str(value), options)
        return f"{value!r} is not one of: {', '.join(options)}{hint}"
    if kind == "const":
        return f"expected {expected!r}, got {value!r}"
    if kind in ("minItems", "minProperties", "minLength") and expected == 1:
        return "must not be empty"
    field = next((p for p in reversed(error.absolute_path) if isinstance(p, str)), "the value")
    if kind == "minimum":
        return f"{field} must be at least {expected}, got {value!r}"
    if kind == "maximum":
        return f"{field} must be at most {expected}, got {value!r}"
    if kind == "pattern":
        return f"{value!r} does not match the pattern {expected}"
    return error.message


def _location_path(error: ValidationError) -> tuple[tuple[str | int, ...], bool]:
    path = tuple(error.absolute_path)
    if _is_property_name_error(error) and isinstance(error.instance, str):
        return (*path, error.instance), True
    if error.validator == "required" and path:
        # the key that holds the incomplete mapping, not the mapping's first key
        return path, True
    if error.validator == "not" and isinstance(error.validator_value, dict) and isinstance(error.instance, dict):
        # "not both a and b": point at the second one written
        present = [k for k in error.validator_value.get("required", []) if k in error.instance]
        if present:
            return (*path, present[-1]), True
    if error.validator == "additionalProperties":
        extras = _extra_keys(error)
        if extras:
            return (*path, extras[0]), True
    return path, False


def check(doc: Document, kind: Kind) -> list[Diagnostic]:
    """Every schema violation in *doc*, one sentence each, sorted by line."""
    # Most files are valid: answer those fast, and explain the rest with jsonschema,
    # whose error tree (contexts, paths, relevance) gives the messages people read.
    if fast_validator(kind).is_valid(doc.data):
        return []
    found: dict[tuple[int, int, str], Diagnostic] = {}
    for raw in validator(kind).iter_errors(doc.data):
        error = _narrow(raw)
        path, at_key = _location_path(error)
        diag = doc.diagnostic(path, _message(error), key=at_key, code="schema")
        found.setdefault((diag.location.line, diag.location.column, diag.message), diag)
    return sorted(found.values(), key=lambda d: (d.location.line, d.location.column))
