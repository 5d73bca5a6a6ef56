"""The command line: exit codes, output formats, schema and graph, and start-up cost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main
from journeys.schema import schema
from tests.conftest import EXAMPLES

Write = Callable[[str, str], Path]

BROKEN = """
journey: broken
version: 1
trigger: {on: a.b}
initial: start
states:
  start:
    on: {c.d: nowhere}
  end: {final: true}
"""


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_examples_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["validate", str(EXAMPLES)], capsys)
    assert code == 0
    assert out == ""
    assert "0 errors" in err and "valid" in err


def test_validate_text_format(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("broken.yaml", BROKEN)
    code, out, _ = run(["validate", str(path)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert f"{path}:7:15: error: the transition on 'c.d' goes to state 'nowhere', which is not defined" in lines[0]
    assert any(line.startswith(f"{path}:8:3: error: state 'end' cannot be reached") for line in lines)


def test_validate_json_format(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("broken.yaml", BROKEN)
    code, out, _ = run(["validate", "--format", "json", str(path)], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False and doc["files"] == 1 and doc["errors"] == 2
    first = doc["diagnostics"][0]
    assert (first["line"], first["column"], first["path"]) == (7, 15, "states.start.on.c.d")
    assert first["code"] == "unknown-state"


def test_validate_github_format(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("dir,with:odd/broken.yaml", BROKEN)
    code, out, _ = run(["validate", "--format", "github", str(path)], capsys)
    assert code == 1
    first = out.splitlines()[0]
    escaped = str(path).replace(":", "%3A").replace(",", "%2C")
    assert first.startswith(f"::error file={escaped},line=7,col=15,title=journeys unknown-state::")


def test_warnings_pass_unless_strict(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("warn.yaml", """
        journey: warn
        version: 1
        trigger: {on: a.b}
        exit: [{on: c.d}]
        initial: wait
        states:
          wait: {}
        """)
    code, out, _ = run(["validate", str(path)], capsys)
    assert code == 0 and ": warning: state 'wait' has no transitions" in out
    code, _, _ = run(["validate", "--strict", str(path)], capsys)
    assert code == 1


def test_duplicate_version_across_files(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    one = write("a/one.yaml", BROKEN.replace("nowhere", "end"))
    write("a/two.yaml", BROKEN.replace("nowhere", "end").replace("c.d", "c.e"))
    code, out, _ = run(["validate", str(one.parent)], capsys)
    assert code == 1
    assert "two.yaml:2:10: error: journey 'broken' version 1 is also defined at " in out
    assert "one.yaml:2:10" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["validate", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such file or folder" in err
    with pytest.raises(SystemExit) as info:
        main(["validate", "--format", "xml"])
    assert info.value.code == 2
    assert main([]) == 2


@pytest.mark.parametrize("kind", ["journey", "config", "test"])
def test_schema_command(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schema", kind], capsys)
    assert code == 0
    printed = json.loads(out)
    assert printed == schema(kind)  # type: ignore[arg-type]
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_graph_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["graph", str(EXAMPLES / "journeys" / "payment-reminder.yaml")], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> remind" in lines
    assert "    remind --> awaiting_payment: message.delivered" in lines
    assert "    remind --> support: message.received ['help' in (event.text | lower)]" in lines
    assert "    remind --> remind_again: after 24h" in lines
    assert "    any_state --> paid: exit on invoice.paid" in lines
    assert "    any_state --> [*]: exit on contact.opted_out" in lines
    assert "    paid --> [*]" in lines
    # the description's ';' would end a Mermaid statement: it is escaped
    assert "    email_fallback: The SMS did not arrive#59; try email" in lines


def test_graph_dot(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["graph", "--format", "dot", str(EXAMPLES / "journeys" / "sms-helpdesk.yaml")], capsys)
    assert code == 0
    assert out.startswith('digraph "sms-helpdesk" {')
    assert '"solved" [shape=doublecircle];' in out
    assert '"waiting" -> "quiet" [label="after 3d", style=dashed];' in out
    assert '"open_ticket" -> "waiting" [label="message.received / http"];' in out
    assert '"any_state" -> "__end" [label="exit on contact.opted_out", style=dotted];' in out
    assert out.rstrip().endswith("}")


def test_graph_of_an_invalid_journey_exits_1(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["graph", str(write("b.yaml", BROKEN))], capsys)
    assert code == 1 and out == ""
    assert ":7:15: error:" in err


def test_console_script_help_starts_fast() -> None:
    exe = shutil.which("journeys") or str(Path(sys.executable).parent / "journeys")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "validate" in proc.stdout and "graph" in proc.stdout
    # --help must not import the heavy packages (the 0.3 s budget is measured by the benchmark)
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cli.main; cli.main.build_parser()"],
        capture_output=True, text=True, timeout=30,
    )
    heavy = [m for m in ("jsonschema", "jinja2", "yaml") if f" {m}\n" in probe.stderr or f" {m}." in probe.stderr]
    assert heavy == []
