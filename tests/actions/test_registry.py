"""The schema and the registry must agree on which actions exist and what they take."""

from __future__ import annotations

from typing import Any

from actions.registry import BUILTIN_ACTIONS, SEND_CHANNELS, is_known, known_action_names
from journeys.schema import schema


def _schema_action_names() -> set[str]:
    action = schema("journey")["$defs"]["action"]
    return {rule["if"]["properties"]["action"]["const"] for rule in action["allOf"]}


def test_schema_lists_exactly_the_builtin_actions() -> None:
    assert _schema_action_names() == set(BUILTIN_ACTIONS)


def test_schema_examples_are_the_builtin_actions() -> None:
    examples = schema("journey")["$defs"]["action"]["properties"]["action"]["examples"]
    assert examples == list(BUILTIN_ACTIONS)


def test_every_builtin_has_an_input_schema() -> None:
    defs: dict[str, Any] = schema("journey")["$defs"]
    for rule in defs["action"]["allOf"]:
        name = rule["if"]["properties"]["action"]["const"]
        ref = rule["then"]["properties"]["with"]["$ref"]
        assert ref == f"#/$defs/with_{name}"
        assert defs[f"with_{name}"]["type"] == "object"


def test_send_actions_map_to_channels_in_the_schema() -> None:
    channels = set(schema("journey")["$defs"]["channel"]["enum"])
    assert set(SEND_CHANNELS) <= set(BUILTIN_ACTIONS)
    assert set(SEND_CHANNELS.values()) <= channels


def test_unknown_names_are_not_known() -> None:
    assert is_known("send_sms")
    assert not is_known("send_smss")
    assert known_action_names()[: len(BUILTIN_ACTIONS)] == list(BUILTIN_ACTIONS)


def test_plugins_come_from_the_entry_point_group(tmp_path: Any, monkeypatch: Any) -> None:
    # A real distribution on sys.path, as `pip install` would leave it.
    dist = tmp_path / "acme_actions-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-actions\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[journeys.actions]\ncreate_ticket = acme_actions:CreateTicket\nsend_sms = acme_actions:Hijack\n"
    )
    from actions import registry

    registry.plugin_entry_points.cache_clear()
    assert not is_known("create_ticket")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.plugin_entry_points.cache_clear()
    try:
        assert is_known("create_ticket")
        assert known_action_names()[-1] == "create_ticket"
        # a plugin cannot take over a built-in's name
        assert "send_sms" not in registry.plugin_entry_points()
    finally:
        monkeypatch.undo()
        registry.plugin_entry_points.cache_clear()


def test_the_example_plugin_loads_as_an_action(tmp_path: Any, monkeypatch: Any) -> None:
    from actions import registry
    from tests.conftest import EXAMPLES

    plugin_dir = EXAMPLES / "plugins" / "journeys-zendesk"
    dist = tmp_path / "journeys_zendesk-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: journeys-zendesk\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[journeys.actions]\nzendesk_ticket = journeys_zendesk:ZendeskTicket\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(plugin_dir))
    registry.plugin_entry_points.cache_clear()
    try:
        action = registry.implementation("zendesk_ticket")
        assert action.name == "zendesk_ticket"
        assert type(action).__name__ == "ZendeskTicket"
        assert is_known("zendesk_ticket")
    finally:
        monkeypatch.undo()
        registry.plugin_entry_points.cache_clear()
