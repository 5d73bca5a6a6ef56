"""A deployment folder as a whole: templates exist and parse, files are found and classified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from journeys.deployment import discover, template_index, validate

Write = Callable[[str, str], Path]

JOURNEY = """
journey: greet
version: 1
trigger: {on: user.signed_up}
initial: hello
states:
  hello:
    enter:
      - action: send_sms
        with: {template: welcome}
      - action: send_email
        with: {template: welcome, subject: Welcome}
    after: {1d: done}
  done: {final: true}
"""


def test_templates_must_exist_in_a_deployment(write: Write) -> None:
    write("ops/config.yaml", "channels: {sms: {provider: console}}\n")
    journey = write("ops/journeys/greet.yaml", JOURNEY)
    write("ops/templates/sms/welcome.txt", "Hi {{ contact.id }}")
    found = [(d.location.line, d.message) for d in validate([str(journey)]).errors]
    assert found == [(11, "no template 'welcome' for email: expected a file templates/email/welcome.* "
                          "in the deployment")]
    write("ops/templates/email/welcome.de.html", "<p>Hallo</p>")
    assert validate([str(journey)]).ok


def test_outside_a_deployment_templates_are_not_looked_up(write: Write) -> None:
    assert validate([str(write("loose/greet.yaml", JOURNEY))]).ok


def test_template_files_are_checked(write: Write) -> None:
    write("ops/config.yaml", "{}\n")
    bad = write("ops/templates/sms/bad.txt", "line one\nHi {{ contact.id | upcase }}\n{% if %}")
    report = validate([str(bad.parents[2])])
    found = sorted((d.location.file, d.location.line, d.message) for d in report.errors)
    assert found[0][0] == str(bad) and found[0][1] == 3 and "Jinja syntax error" in found[0][2]


def test_template_index_handles_locales_and_folders(write: Write) -> None:
    write("ops/templates/sms/billing/overdue.de.txt", "x")
    write("ops/templates/sms/billing/overdue.txt", "x")
    write("ops/templates/email/plain.html", "x")
    assert template_index(write("ops/config.yaml", "{}").parent) == {
        "email": {"plain"}, "sms": {"billing/overdue"},
    }


def test_discover_skips_hidden_folders_and_keeps_order(write: Write) -> None:
    write("repo/.github/workflows/ci.yaml", "on: push\n")
    write("repo/journeys/b.yaml", JOURNEY)
    write("repo/journeys/a.yml", JOURNEY.replace("greet", "greet-a"))
    write("repo/notes.txt", "not yaml")
    names = [p.name for p in discover([str(write("repo/config.yaml", "{}").parent)])]
    assert names == ["config.yaml", "a.yml", "b.yaml"]
