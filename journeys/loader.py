"""Journey files to models: parse, schema, semantic rules, build. The one way in."""

from __future__ import annotations

from collections.abc import Mapping

from journeys import schema
from journeys.build import journey_from_data
from journeys.checks import check_journey
from journeys.errors import DefinitionError, Diagnostic
from journeys.model import Journey
from journeys.yamlsrc import Document, load_file, load_text


def read_journey(
    doc: Document, templates: Mapping[str, set[str]] | None = None
) -> tuple[Journey | None, list[Diagnostic]]:
    """The model (None when there is an error) and every problem found, warnings included."""
    found = schema.check(doc, "journey")
    if found:
        return None, found
    found = check_journey(doc, templates)
    if any(d.severity == "error" for d in found):
        return None, found
    return journey_from_data(doc.data, doc.file), found


def _require(doc: Document, templates: Mapping[str, set[str]] | None) -> Journey:
    journey, found = read_journey(doc, templates)
    if journey is None:
        raise DefinitionError(found)
    return journey


def load_journey(path: str, templates: Mapping[str, set[str]] | None = None) -> Journey:
    """Load one journey file; raise :class:`DefinitionError` listing every problem."""
    return _require(load_file(path), templates)


def journey_from_text(text: str, file: str = "<string>") -> Journey:
    return _require(load_text(text, file), None)
