"""A deployment folder and ``journeys validate``: find the files, check each, then check across.

Layout: ``config.yaml``, ``journeys/*.yaml``, ``journeys/*.test.yaml``,
``templates/<channel>/<name>.<ext>``. Files are classified by name: ``config.yaml`` is the
config, ``*.test.yaml`` are tests, every other ``.yaml``/``.yml`` is a journey.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from journeys import expressions
from journeys.config import Config, config_from_document, default_config, read_config
from journeys.errors import DefinitionError, Diagnostic, Location, UsageError
from journeys.loader import read_journey
from journeys.model import Journey
from journeys.testfile import Suite, check_against, read_suite
from journeys.yamlsrc import Document, load_file

FileKind = Literal["journey", "test", "config", "template"]
CONFIG_NAMES = ("config.yaml", "config.yml")
YAML_SUFFIXES = (".yaml", ".yml")


def classify(path: Path) -> FileKind:
    name = path.name
    if name in CONFIG_NAMES:
        return "config"
    if name.endswith((".test.yaml", ".test.yml")):
        return "test"
    return "journey"


def find_root(path: Path) -> Path | None:
    """The deployment folder a file belongs to: the nearest ancestor with a config.yaml."""
    start = path if path.is_dir() else path.parent
    for candidate in [start, *list(start.parents)[:3]]:
        if any((candidate / n).is_file() for n in CONFIG_NAMES):
            return candidate
    return None


def template_index(root: Path) -> dict[str, set[str]]:
    """channel -> template names under ``root/templates/<channel>/`` (``a/b.de.txt`` is ``a/b``)."""
    index: dict[str, set[str]] = {}
    base = root / "templates"
    if not base.is_dir():
        return index
    for channel_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        names = index.setdefault(channel_dir.name, set())
        for file in channel_dir.rglob("*"):
            if file.is_file() and not file.name.startswith("."):
                rel = file.relative_to(channel_dir)
                names.add(str(rel.parent / rel.name.split(".", 1)[0]).removeprefix("./"))
    return index


def _yaml_files(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        # hidden folders (.git, .github) and templates are not journeys
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "templates")
        for name in sorted(filenames):
            if name.endswith(YAML_SUFFIXES) and not name.startswith("."):
                yield Path(dirpath) / name


def discover(paths: Iterable[str]) -> list[Path]:
    """Every file to check under *paths*; a path that does not exist is a usage error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(_yaml_files(path))
            root = path if any((path / n).is_file() for n in CONFIG_NAMES) else None
            if root is not None and (root / "templates").is_dir():
                found.extend(sorted(f for f in (root / "templates").rglob("*") if f.is_file()
                                    and not f.name.startswith(".")))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"{raw}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _with_tested_journeys(files: list[Path]) -> list[Path]:
    """Add the journeys next to each test file, for ``journeys validate some.test.yaml`` alone."""
    seen = {p.resolve() for p in files}
    extra: list[Path] = []
    for test in [p for p in files if classify(p) == "test"]:
        for path in _yaml_files(test.parent):
            if classify(path) == "journey" and path.resolve() not in seen:
                seen.add(path.resolve())
                extra.append(path)
    return files + extra


@dataclass
class Report:
    """What ``journeys validate`` found."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    journeys: dict[tuple[str, int], Journey] = field(default_factory=dict)
    suites: list[Suite] = field(default_factory=list)
    files: int = 0

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def _is_template(path: Path, root: Path | None) -> bool:
    return root is not None and (root / "templates") in path.parents


def check_template_file(path: Path) -> list[Diagnostic]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Diagnostic(Location(str(path)), f"cannot read the template: {exc}")]
    return [
        Diagnostic(Location(str(path), p.line, 1), p.message, (), "error", "template")
        for p in expressions.check(text, template=True)
    ]


def validate(paths: Iterable[str]) -> Report:
    """Check every journey, test, config and template file under *paths*, and across them."""
    report = Report()
    files = _with_tested_journeys(discover(paths))
    report.files = len(files)
    templates_by_root: dict[Path, dict[str, set[str]]] = {}
    tests: list[Document] = []
    origin: dict[tuple[str, int], Document] = {}
    for path in files:
        root = find_root(path)
        if _is_template(path, root):
            report.diagnostics.extend(check_template_file(path))
            continue
        if path.suffix not in YAML_SUFFIXES:
            report.diagnostics.append(Diagnostic(Location(str(path)), "not a YAML file (.yaml or .yml)"))
            continue
        try:
            doc = load_file(str(path))
        except DefinitionError as exc:
            report.diagnostics.extend(exc.diagnostics)
            continue
        kind = classify(path)
        if kind == "config":
            report.diagnostics.extend(read_config(doc))
        elif kind == "test":
            suite, found = read_suite(doc)
            report.diagnostics.extend(found)
            if suite is not None:
                tests.append(doc)
                report.suites.append(suite)
        else:
            templates = None
            if root is not None:
                if root not in templates_by_root:
                    templates_by_root[root] = template_index(root)
                templates = templates_by_root[root]
            journey, found = read_journey(doc, templates)
            report.diagnostics.extend(found)
            if journey is not None:
                if journey.key in origin:
                    first = origin[journey.key].locate(("version",))
                    report.diagnostics.append(doc.diagnostic(
                        ("version",),
                        f"journey {journey.id!r} version {journey.version} is also defined at {first}: "
                        "each (journey, version) must be unique; bump the version of the changed file",
                        code="duplicate-version",
                    ))
                    continue
                origin[journey.key] = doc
                report.journeys[journey.key] = journey
    for doc in tests:
        report.diagnostics.extend(check_against(doc, report.journeys))
    return report


@dataclass(frozen=True)
class Deployment:
    """A loaded deployment: what ``serve`` and ``test`` run."""

    root: Path
    config: Config
    journeys: dict[tuple[str, int], Journey]
    suites: list[Suite]


def load_deployment(
    root: str, environ: Mapping[str, str] | None = None, *, resolve_env: bool = True
) -> Deployment:
    """Validate the whole folder and load it; raise :class:`DefinitionError` on any error."""
    folder = Path(root)
    if not folder.is_dir():
        raise UsageError(f"{root}: not a deployment folder")
    report = validate([str(folder)])
    if not report.ok:
        raise DefinitionError(report.errors)
    config_path = next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)
    if config_path is None:
        config = default_config()
    else:
        env = os.environ if environ is None else environ
        doc = load_file(str(config_path))
        config = config_from_document(doc, env if resolve_env else Placeholders())
    return Deployment(folder, config, report.journeys, report.suites)


class DevEnvironment(Mapping[str, str]):
    """The real environment, with a random value for every variable it lacks (``serve --dev``)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.generated: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        if key in self.environ:
            return self.environ[key]
        if key not in self.generated:
            import secrets

            self.generated[key] = f"whsec_{secrets.token_urlsafe(24)}" if "SECRET" in key else secrets.token_hex(16)
        return self.generated[key]

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.environ)

    def __len__(self) -> int:
        return len(self.environ)


class Placeholders(Mapping[str, str]):
    """Every variable present, as ``<NAME>``: loads a config without its secrets (tests, tools)."""

    def __getitem__(self, key: str) -> str:
        return f"<{key}>"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0
