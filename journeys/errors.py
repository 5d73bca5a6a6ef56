"""The one exception tree of the project.

Every error a person can cause (a broken journey, a bad flag, a missing secret) is a
subclass of :class:`JourneysError`, knows its exit code, and prints as something a
person can act on. Errors about a file carry file, line, column and the path inside
the document, and print as ``file:line:col: message``, the form editors and CI
annotations understand.

This module must stay import-light: the CLI imports it on every start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
PathPart = str | int


def format_path(path: tuple[PathPart, ...]) -> str:
    """Render a document path the way a person reads it: ``states.remind.on[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class Location:
    """Where something stands in a file; line and column count from 1."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a file."""

    location: Location
    message: str
    path: tuple[PathPart, ...] = ()
    severity: Severity = "error"
    code: str = "invalid"

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "path": format_path(self.path),
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }


class JourneysError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(JourneysError):
    """The command line was wrong: a missing path, an unknown format."""

    exit_code = 2


class DefinitionError(JourneysError):
    """A journey, test or config file is not valid; carries every problem found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = [d for d in diagnostics if d.severity == "error"] or diagnostics
        first = self.diagnostics[0]
        more = len(self.diagnostics) - 1
        suffix = f" (and {more} more)" if more else ""
        super().__init__(f"{first}{suffix}")

    @property
    def location(self) -> Location:
        return self.diagnostics[0].location


class ConfigError(JourneysError):
    """The deployment cannot start: a missing environment variable, a bad setting."""


class ExpressionError(JourneysError):
    """An expression or template failed while it ran (unknown name, too large, unsafe)."""
