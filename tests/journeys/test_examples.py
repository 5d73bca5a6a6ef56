"""Every file of the example deployment is valid, and the deployment loads as a whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from journeys.deployment import load_deployment, validate
from tests.conftest import EXAMPLES

FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and "plugins" not in p.parts
               and not p.name.startswith("journeys.db"))  # the database `serve examples` makes


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_example_file_is_valid(path: Path) -> None:
    report = validate([str(path)])
    assert report.diagnostics == []


def test_example_deployment_loads() -> None:
    deployment = load_deployment(str(EXAMPLES), resolve_env=False)
    ids = {journey_id for journey_id, _ in deployment.journeys}
    # the four workflows the product exists for
    assert {"payment-reminder", "opt-out", "sms-helpdesk", "cart-recovery"} <= ids
    assert {suite.journey for suite in deployment.suites} == ids
    assert deployment.config.sources["twilio"].provider == "twilio"
    assert deployment.config.policies.opt_out_scope == ("sms", "email", "whatsapp", "push", "voice")


def test_example_deployment_needs_its_secrets() -> None:
    from journeys.errors import ConfigError

    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN is not set") as info:
        load_deployment(str(EXAMPLES), environ={})
    assert str(info.value).endswith("config.yaml:6:13: environment variable TWILIO_AUTH_TOKEN is not set "
                                   "(config.yaml asks for it as env:TWILIO_AUTH_TOKEN)")


def test_whole_folder_is_valid() -> None:
    report = validate([str(EXAMPLES)])
    assert report.ok, [str(d) for d in report.diagnostics]
    assert report.files >= 10
