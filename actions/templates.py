"""Message templates of a deployment: ``templates/<channel>/<name>[.<locale>].<ext>``.

A contact with locale ``de-AT`` gets ``name.de-AT.txt``, else ``name.de.txt``, else
``name.txt``. HTML email templates are autoescaped; text ones are not. Rendering uses the
engine's sandbox, so a template has the same names and bounds as any journey template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.sandbox import Template, compile_template
from journeys.errors import ExpressionError

_EXTENSIONS = {"email": (".html", ".txt")}
_DEFAULT_EXTENSIONS = (".txt",)


def _candidates(name: str, locale: str | None) -> list[str]:
    stems = []
    if locale:
        stems.append(f"{name}.{locale}")
        language = locale.replace("_", "-").split("-", 1)[0]
        if language != locale:
            stems.append(f"{name}.{language}")
    stems.append(name)
    return stems


@dataclass
class TemplateStore:
    """Finds and renders templates under *root* (a deployment's ``templates/``); caches compiled ones."""

    root: Path | None
    _cache: dict[Path, Template] = field(default_factory=dict)

    def find(self, channel: str, name: str, locale: str | None = None) -> Path | None:
        if self.root is None:
            return None
        folder = self.root / channel
        for stem in _candidates(name, locale):
            for ext in _EXTENSIONS.get(channel, _DEFAULT_EXTENSIONS):
                path = folder / f"{stem}{ext}"
                if path.is_file():
                    return path
        return None

    def render(self, channel: str, name: str, scope: Mapping[str, Any], locale: str | None = None) -> str:
        path = self.find(channel, name, locale)
        if path is None:
            raise ExpressionError(f"no template {name!r} for {channel} (looked in {self.root})")
        template = self._cache.get(path)
        if template is None:
            template = compile_template(path.read_text("utf-8"), html=path.suffix == ".html")
            self._cache[path] = template
        return template(scope)
