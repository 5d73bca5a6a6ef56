"""config.yaml: schema, secrets as env:NAME only, references, and resolution at start-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from journeys.config import load_config
from journeys.deployment import validate
from journeys.errors import ConfigError, DefinitionError

Write = Callable[[str, str], Path]


def errors(path: Path) -> list[tuple[int, str]]:
    return [(d.location.line, d.message) for d in validate([str(path)]).errors]


def test_literal_secret_is_flagged_at_its_line(write: Write) -> None:
    path = write("config.yaml", """
        sources:
          twilio:
            provider: twilio
            secret: 0123456789abcdef0123456789abcdef
            public_url: https://hooks.example.com/ingest/twilio
        """)
    [(line, message)] = errors(path)
    assert line == 4
    assert "secret is written as a literal" in message and "env:NAME" in message


def test_secret_lists_are_checked_item_by_item(write: Write) -> None:
    path = write("config.yaml", """
        sources:
          app: {provider: events, secret: [env:NEW_SECRET, whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}
        """)
    [(line, message)] = errors(path)
    assert line == 2 and "literal" in message


@pytest.mark.parametrize("value,what", [
    ("SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123", "SendGrid API key"),
    ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "Standard Webhooks secret"),
])
def test_secret_shapes_are_caught_anywhere(write: Write, value: str, what: str) -> None:
    path = write("config.yaml", f"""
        channels:
          email: {{provider: smtp, host: mail.example.com, from: "{value}"}}
        x-notes: "the key is {value}"
        x-key: "{value}"
        """)
    found = errors(path)
    # `from` is an address field and not inspected; free-form annotations are, even in a sentence
    assert [line for line, _ in found] == [3, 4] and all(what in message for _, message in found)


def test_status_source_must_exist_and_match(write: Write) -> None:
    path = write("config.yaml", """
        sources:
          sg: {provider: sendgrid, public_key: env:SG_KEY}
        channels:
          sms:
            provider: twilio
            account_sid: env:SID
            auth_token: env:TOKEN
            from: "+15005550006"
            status_source: twillio
          whatsapp:
            provider: twilio
            account_sid: env:SID
            auth_token: env:TOKEN
            from: "+15005550006"
            status_source: sg
        """)
    found = errors(path)
    assert (9, "status_source 'twillio' is not a source in this file (sources: sg)") in found
    assert any(line == 15 and "has provider 'sendgrid'" in msg for line, msg in found)


def test_provider_requirements(write: Write) -> None:
    path = write("config.yaml", """
        sources:
          tw: {provider: twilio, secret: env:TOKEN}
          wa: {provider: whatsapp, secret: env:APP_SECRET}
          pigeon: {provider: pigeon}
        """)
    found = errors(path)
    assert (2, "missing required key 'public_url'") in found
    assert (3, "missing required key 'verify_token'") in found
    assert any(line == 4 and "'pigeon' is not one of" in msg for line, msg in found)


def test_policies(write: Write) -> None:
    path = write("config.yaml", """
        policies:
          quiet_hours: {start: "21:00", end: "21:00"}
          opt_in_keywords: [START, stop]
          http_allow_networks: [10.0.0.0/8, "not-a-net"]
        """)
    found = errors(path)
    assert (2, "quiet hours start and end at the same time") in found
    assert (3, "'stop' is both an opt-out and an opt-in keyword") in found
    assert any(line == 4 and "'not-a-net' is not a network" in msg for line, msg in found)


def test_unquoted_clock_time_is_explained(write: Write) -> None:
    path = write("config.yaml", "policies:\n  quiet_hours: {start: 21:00, end: \"8:00\"}\n")
    found = errors(path)
    assert any(line == 2 and "HH:MM" in msg for line, msg in found)


def test_env_is_resolved_at_start_up(write: Write) -> None:
    path = write("config.yaml", """
        sources:
          app: {provider: events, secret: [env:NEW, env:OLD], tolerance: 2m, rate_limit: {requests: 10, per: 1s}}
        channels:
          email: {provider: sendgrid, api_key: env:SG_API_KEY, from: billing@example.com}
        policies:
          opt_out_keywords: [stop, Halt]
          opt_out_scope: [sms, email]
        """)
    config = load_config(str(path), {"NEW": "whsec_new", "OLD": "whsec_old", "SG_API_KEY": "SG.x"})
    app = config.sources["app"]
    assert app.secrets == ("whsec_new", "whsec_old")
    assert app.tolerance_ms == 120_000 and app.rate_limit == (10, 1000)
    assert config.channels["email"].settings["api_key"] == "SG.x"
    assert config.channels["sms"].provider == "console"  # unconfigured channels print locally
    assert config.policies.opt_out_keywords == ("STOP", "HALT")
    assert config.policies.opt_out_scope == ("sms", "email")


def test_missing_env_names_the_variable_and_line(write: Write) -> None:
    path = write("config.yaml", "sources:\n  app: {provider: events, secret: [env:NEW, env:OLD]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {"NEW": "x"})
    assert f"{path}:2:" in str(info.value)
    assert "environment variable OLD is not set" in str(info.value)


def test_invalid_config_does_not_start(write: Write) -> None:
    path = write("config.yaml", "sources:\n  app: {provider: events}\n")
    with pytest.raises(DefinitionError, match="missing required key 'secret'"):
        load_config(str(path), {})
