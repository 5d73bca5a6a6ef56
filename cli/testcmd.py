"""``journeys test``: validate, then run every ``*.test.yaml`` case on a virtual clock."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from actions.templates import TemplateStore
from engine.compiled import CompiledJourney, compile_journey
from engine.testing import CaseResult, run_case
from journeys.config import Policies, config_from_document
from journeys.deployment import CONFIG_NAMES, Placeholders, find_root, validate
from journeys.errors import DefinitionError
from journeys.model import Journey
from journeys.yamlsrc import load_file


def deployment_policies(root: Path | None) -> Policies:
    """The retry/quiet-hours policies of the deployment at *root* (defaults without one), as
    `journeys test` and `journeys simulate` both apply them."""
    if root is None:
        return Policies()
    path = next((root / n for n in CONFIG_NAMES if (root / n).is_file()), None)
    if path is None:
        return Policies()
    # Tests never need the secrets: every env:NAME reads as a placeholder.
    return config_from_document(load_file(str(path)), Placeholders()).policies


def _print_result(result: CaseResult, verbose: bool) -> None:
    mark = "PASS" if result.passed else "FAIL"
    print(f"  {mark}  {result.case.name}")
    if not result.passed or verbose:
        for failure in ([result.error] if result.error else []) + result.failures:
            print(f"        {result.suite.file}:{result.case.line}: {failure}")
        print(f"        trace: {' -> '.join(result.trace) or '(no instance)'}")


def run(paths: Sequence[str], verbose: bool = False) -> int:
    report = validate(paths)
    if not report.ok:
        raise DefinitionError(report.errors)
    compiled: dict[tuple[str, int], CompiledJourney] = {}
    passed = failed = 0
    for suite in report.suites:
        versions = sorted(v for (jid, v) in report.journeys if jid == suite.journey)
        key = (suite.journey, suite.version or versions[-1])
        journey: Journey = report.journeys[key]
        if key not in compiled:
            compiled[key] = compile_journey(journey)
        root = find_root(Path(suite.file))
        templates = TemplateStore(root / "templates" if root else None)
        policies = deployment_policies(root)
        print(f"{suite.file} ({suite.journey} v{key[1]})")
        for case in suite.cases:
            result = run_case(suite, case, compiled[key], policies, templates)
            _print_result(result, verbose)
            passed += result.passed
            failed += not result.passed
    if not report.suites:
        print("no *.test.yaml files found", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
