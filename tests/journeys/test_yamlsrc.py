"""The YAML traps: YAML 1.1 booleans and sexagesimals, duplicate keys, tags, aliases, encodings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from journeys.errors import DefinitionError
from journeys.loader import journey_from_text
from journeys.yamlsrc import load_file, load_text


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "On", "NO", "Yes"])
def test_yaml11_booleans_stay_words(word: str) -> None:
    assert load_text(f"{word}: {word}\n").data == {word: word}


@pytest.mark.parametrize("text", ["1:30", "12:00:00", "190:20:30"])
def test_sexagesimal_stays_text(text: str) -> None:
    assert load_text(f"a: {text}\n{text}: b\n").data == {"a": text, text: "b"}


def test_yaml12_scalars() -> None:
    data = load_text("a: true\nb: False\nc: 3\nd: -2.5\ne: null\nf: ~\ng: '3'\nh: 0x10\ni: 2026-01-05\n").data
    assert data == {"a": True, "b": False, "c": 3, "d": -2.5, "e": None, "f": None, "g": "3", "h": 16,
                    "i": "2026-01-05"}


def test_keys_are_always_strings() -> None:
    assert load_text("1: a\ntrue: b\n~: c\n").data == {"1": "a", "true": "b", "~": "c"}


def test_states_and_events_named_like_booleans_keep_their_meaning() -> None:
    journey = journey_from_text(
        """
        journey: yes-no
        version: 1
        trigger: {on: survey.sent}
        initial: on
        states:
          on:
            on:
              answer.yes: yes
              answer.no: no
            after: {1h30m: off}
          yes: {final: true}
          no: {final: true}
          off: {final: true}
        """.replace("\n        ", "\n")
    )
    assert journey.initial == "on"
    assert set(journey.states) == {"on", "yes", "no", "off"}
    assert journey.states["on"].on["answer.yes"][0].to == "yes"
    assert journey.states["on"].after[0].delay_ms == 90 * 60 * 1000


def test_duplicate_key_names_both_lines() -> None:
    with pytest.raises(DefinitionError) as info:
        load_text("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yaml")
    diag = info.value.diagnostics[0]
    assert (diag.location.line, diag.location.column) == (4, 3)
    assert "duplicate key 'c' (first defined on line 3)" in diag.message
    assert str(diag).startswith("f.yaml:4:3: error:")


def test_merge_keys_are_supported_and_local_keys_win() -> None:
    data = load_text("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").data
    assert data["m"] == {"x": 1, "y": 3}


def test_custom_tags_are_refused() -> None:
    with pytest.raises(DefinitionError, match="custom YAML tag '!env'"):
        load_text("a: !env SECRET\n")


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(DefinitionError, match="refers to itself"):
        load_text("a: &x [1, *x]\n")


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(DefinitionError, match="document too large"):
        load_text("\n".join(lines) + "\n")


def test_one_document_per_file() -> None:
    with pytest.raises(DefinitionError, match="one document"):
        load_text("a: 1\n---\nb: 2\n")


def test_empty_file() -> None:
    with pytest.raises(DefinitionError, match="empty"):
        load_text("# only a comment\n")


def test_malformed_yaml_points_at_the_problem() -> None:
    with pytest.raises(DefinitionError) as info:
        load_text("a:\n  b: [1, 2\n  c: 3\n", "m.yaml")
    # the parser notices on line 3; the '[' to close is on line 2
    assert (info.value.location.line, info.value.location.column) == (2, 6)
    assert "this '[' is never closed" in info.value.message


def test_non_utf8_file(write: Callable[[str, str], Path]) -> None:
    path = write("x.yaml", "")
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(DefinitionError) as info:
        load_file(str(path))
    assert info.value.location.line == 2
    assert "not UTF-8" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read"):
        load_file(str(tmp_path / "nope.yaml"))


def test_positions_of_values_and_keys() -> None:
    doc = load_text("a:\n  b: [x, y]\n")
    assert doc.locate(("a", "b", 1)).line == 2
    assert doc.locate(("a", "b", 1)).column == 10
    assert doc.locate(("a", "b"), key=True).column == 3
    # a path that does not exist falls back to its nearest ancestor
    assert doc.locate(("a", "zzz")).line == 2
