"""The ``journeys`` command: parse the arguments, call the packages, print, exit.

Start-up must stay fast (``journeys --help`` well under 0.3 s), so nothing heavy is
imported at module level: each command imports what it needs when it runs. Every
expected failure is a :class:`journeys.errors.JourneysError`, caught once here and
printed with its exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _validate(args: argparse.Namespace) -> int:
    from cli.validate import run

    return run(args.paths or ["."], args.format, args.strict)


def _schema(args: argparse.Namespace) -> int:
    from journeys.schema import schema_text

    sys.stdout.write(schema_text(args.kind))
    return 0


def _graph(args: argparse.Namespace) -> int:
    from pathlib import Path

    from journeys.deployment import find_root, template_index
    from journeys.graph import FORMATS
    from journeys.loader import load_journey

    root = find_root(Path(args.file))
    journey = load_journey(args.file, template_index(root) if root else None)
    sys.stdout.write(FORMATS[args.format](journey))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="journeys",
        description="Customer messaging journeys as versioned YAML state machines: "
        "validate them, draw them, and run them against provider webhooks.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        help="check journeys, journey tests, templates and config.yaml",
        description="Check journeys, journey tests (*.test.yaml), templates and config.yaml. "
        "Folders are searched for .yaml/.yml files (hidden folders skipped). "
        "Exit 0 when valid, 1 when any error is found, 2 on a usage error.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: the current folder)")
    p.add_argument("--format", choices=["text", "json", "github"], default="text",
                   help="text: path:line:col lines; json: one document; github: workflow annotations")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("schema", help="print a JSON Schema (draft 2020-12)",
                       description="Print the JSON Schema of a journey, a config.yaml or a test file, "
                       "for editors (yaml-language-server) and other tools.")
    p.add_argument("kind", choices=["journey", "config", "test"])
    p.set_defaults(handler=_schema)

    p = sub.add_parser("graph", help="draw a journey as Mermaid or Graphviz DOT",
                       description="Print a journey's states, transitions (event [guard] / actions), "
                       "timers, exits and final states as a diagram. Exit 1 if the journey is invalid.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.set_defaults(handler=_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"journeys {version('journeys')}")
        return 0
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from journeys.errors import DefinitionError, JourneysError

    try:
        return handler(args)
    except DefinitionError as exc:
        for diag in exc.diagnostics:
            print(diag, file=sys.stderr)
        return exc.exit_code
    except JourneysError as exc:
        print(f"journeys: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
