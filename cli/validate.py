"""``journeys validate``: run the checks and print them as text, JSON or GitHub annotations."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from journeys.deployment import Report, validate
from journeys.errors import Diagnostic


def _github_escape(text: str, *, prop: bool = False) -> str:
    # The workflow-command escaping rules: data escapes % CR LF; properties also : and ,
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def github_line(diag: Diagnostic) -> str:
    loc = diag.location
    props = [f"file={_github_escape(loc.file, prop=True)}"]
    if loc.line:
        props += [f"line={loc.line}", f"col={loc.column}"]
    props.append(f"title={_github_escape('journeys ' + diag.code, prop=True)}")
    return f"::{diag.severity} {','.join(props)}::{_github_escape(diag.message)}"


def render(report: Report, fmt: str) -> str:
    diags = sorted(report.diagnostics, key=lambda d: (d.location.file, d.location.line, d.location.column))
    if fmt == "json":
        doc = {
            "ok": report.ok,
            "files": report.files,
            "errors": len(report.errors),
            "warnings": len(report.diagnostics) - len(report.errors),
            "journeys": [{"journey": j, "version": v} for (j, v) in sorted(report.journeys)],
            "diagnostics": [d.as_dict() for d in diags],
        }
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "github":
        return "".join(github_line(d) + "\n" for d in diags)
    return "".join(f"{d}\n" for d in diags)


def run(paths: Sequence[str], fmt: str, strict: bool = False) -> int:
    report = validate(paths)
    sys.stdout.write(render(report, fmt))
    errors = len(report.errors)
    warnings = len(report.diagnostics) - errors
    if fmt != "json":
        verdict = "invalid" if errors or (strict and warnings) else "valid"
        print(f"{report.files} files checked: {errors} errors, {warnings} warnings: {verdict}", file=sys.stderr)
    return 1 if errors or (strict and warnings) else 0
