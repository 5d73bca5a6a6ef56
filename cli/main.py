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


def _test(args: argparse.Namespace) -> int:
    from cli.testcmd import run

    return run(args.paths or ["."], args.verbose)


def _simulate(args: argparse.Namespace) -> int:
    from cli.simulate import run

    return run(args.file, args.events, args.contact, args.start)


def _serve(args: argparse.Namespace) -> int:
    from cli.serve import serve

    return serve(args.dir, args.host, args.port, args.dev, engine_here=not args.no_engine)


def _engine(args: argparse.Namespace) -> int:
    from cli.serve import run_engine

    return run_engine(args.dir, args.dev)


def _db(args: argparse.Namespace) -> int:
    from cli.serve import upgrade

    return upgrade(args.dir)


def _replay(args: argparse.Namespace) -> int:
    from cli.replay import run

    return run(args.dir, args.journey, args.version, args.contact, args.since, args.until, args.scratch)


class _Version(argparse.Action):
    """--version, reading the installed version only when asked (start-up stays fast)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        print(f"journeys {version('journeys')}")
        parser.exit()


def _loadtest(args: argparse.Namespace) -> int:
    from cli.loadtest import run

    return run(args.url, args.provider, args.secret, args.public_url, args.duration, args.concurrency, args.rate,
               args.contacts, args.requests, kind=args.type, data=args.data, burst=args.burst,
               burst_for=args.burst_for, burst_rate=args.burst_rate)


def _dead_letters(args: argparse.Namespace) -> int:
    from cli.deadletters import run

    return run(args.command_name, args.dir, args.job, args.json)


def _worker(args: argparse.Namespace) -> int:
    from cli.worker import run

    return run(args.dir)


def _dev_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dev", action="store_true",
                   help="for a laptop: a secret whose environment variable is missing gets a random value "
                   "for this run (printed) instead of stopping the start")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="journeys",
        description="Customer messaging journeys as versioned YAML state machines: "
        "validate them, draw them, and run them against provider webhooks.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
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

    p = sub.add_parser("test", help="run journey tests (*.test.yaml) on a virtual clock",
                       description="Validate, then run every case of every *.test.yaml under PATH on a "
                       "virtual clock: no database, nothing sent. Prints each case, the expectation that "
                       "failed and the states it went through. Exit 0 when all pass, 1 otherwise.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: the current folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the trace of passing cases too")
    p.set_defaults(handler=_test)

    p = sub.add_parser("simulate", help="feed events to a journey and print what it does, step by step",
                       description="Run one journey on a virtual clock against events from a JSON Lines "
                       'file: each line is an event {"type": "invoice.overdue", "data": {...}} (also '
                       '"text", "channel", "message": N for the N-th message sent) or a pause '
                       '{"wait": "2d"}. Nothing is sent.')
    p.add_argument("file", metavar="FILE", help="the journey file")
    p.add_argument("--events", required=True, metavar="EVENTS.jsonl", help="the events, one JSON object a line")
    p.add_argument("--contact", metavar="JSON", default=None,
                   help='the contact, e.g. \'{"id": "c-1", "phone": "+4915112345678"}\'')
    p.add_argument("--start", metavar="TIME", default=None, help="virtual start time (default 2026-01-05T10:00:00Z)")
    p.set_defaults(handler=_simulate)

    p = sub.add_parser("serve", help="run the deployment: webhooks, engine, timers and actions in one process",
                       description="Validate and load the deployment in DIR, migrate a new database (SQLite "
                       "file DIR/journeys.db unless JOURNEYS_DATABASE_URL is set), register the journey "
                       "versions, then serve HTTP (webhook ingest, admin API, health) and run the engine, the "
                       "timers and the action executor until SIGTERM. With JOURNEYS_REDIS_URL set, actions "
                       "are relayed to `journeys worker` processes instead. A database whose migrations are "
                       "behind is refused: run `journeys db upgrade DIR`.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    _dev_flag(p)
    p.add_argument("--no-engine", action="store_true",
                   help="serve HTTP only (webhooks, admin API, health) and leave the engine, timers and "
                   "actions to `journeys engine` processes: webhooks then never wait behind journey work")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("engine", help="run the engine, timers and actions without HTTP (beside serve --no-engine)",
                       description="Run what `journeys serve` runs besides HTTP: the engine, the timers and "
                       "the action executor (or, with JOURNEYS_REDIS_URL set, the relay to `journeys worker`), "
                       "for the deployment in DIR, until SIGTERM. Use it beside `journeys serve --no-engine`, "
                       "on the same database; on PostgreSQL, several may run at once. The database must be "
                       "migrated (`journeys db upgrade DIR`).")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    _dev_flag(p)
    p.set_defaults(handler=_engine)

    p = sub.add_parser("db", help="database maintenance (db upgrade)",
                       description="Database maintenance. `journeys db upgrade [DIR]` applies every migration "
                       "to the database of DIR (JOURNEYS_DATABASE_URL, else DIR/journeys.db).")
    p.add_argument("action", choices=["upgrade"])
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.set_defaults(handler=_db)

    p = sub.add_parser("replay", help="re-run stored events through a journey version in a scratch database",
                       description="Take the stored events of a contact or a time range from the database of "
                       "DIR and run them, in arrival order and on a clock that follows them (timers fire at "
                       "their own time), through a journey: by default the version on disk in DIR, so a fix "
                       "can be checked before it is deployed. Works in a scratch SQLite file; nothing is sent "
                       "and the database of DIR is only read. Prints the resulting steps and actions.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.add_argument("--journey", required=True, metavar="ID")
    p.add_argument("--version", type=int, default=None, help="a stored version (default: the file on disk)")
    p.add_argument("--contact", metavar="ID", help="the events of this contact")
    p.add_argument("--since", metavar="TIME", help="events that occurred at or after TIME (ISO 8601)")
    p.add_argument("--until", metavar="TIME", help="... and at or before TIME; timers fire up to it")
    p.add_argument("--scratch", metavar="FILE", help="keep the scratch database in FILE")
    p.set_defaults(handler=_replay)

    p = sub.add_parser("loadtest", help="send signed webhooks at a rate; report throughput and latency",
                       description="Post new, correctly signed events to URL (an /ingest/SOURCE endpoint of a "
                       "server you run) from many connections, and print accepted requests per second and the "
                       "latency percentiles. A burst (--burst N and/or --burst-for S) follows the steady phase "
                       "on the same connections (--duration 0: the burst alone), and is reported on its own. "
                       "Exit 1 when a phase had nothing accepted.")
    p.add_argument("url", metavar="URL")
    p.add_argument("--provider", choices=["events", "twilio"], default="events")
    p.add_argument("--secret", help="the source's secret (whsec_... for events, the auth token for twilio)")
    p.add_argument("--public-url", help="twilio: the URL Twilio signs (the source's public_url); default URL")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of the steady phase (default 10; 0: none, only the burst)")
    p.add_argument("--concurrency", type=int, default=64, help="connections (default 64)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="the steady phase's requests per second in total; 0: as fast as possible")
    p.add_argument("--contacts", type=int, default=1000, help="distinct contacts the events name")
    p.add_argument("--requests", type=int, default=0,
                   help="stop the steady phase after this many requests (0: no limit)")
    p.add_argument("--type", help="events: the events' type (default invoice.overdue)")
    p.add_argument("--data", metavar="JSON",
                   help="events: the events' data, a JSON object; in its strings {n} is the request's number "
                   "(unique in the run) and {time} the Unix time it was sent "
                   "(default {\"amount_due\":40,\"invoice_id\":\"INV-{n}\"})")
    p.add_argument("--burst", type=int, default=0, metavar="N",
                   help="after the steady phase, a burst of N requests")
    p.add_argument("--burst-for", type=float, default=0.0, metavar="S",
                   help="after the steady phase, a burst lasting S seconds (with --burst N: whichever ends first)")
    p.add_argument("--burst-rate", type=float, default=0.0, metavar="R",
                   help="the burst's requests per second in total (default 0: as fast as the connections allow)")
    p.set_defaults(handler=_loadtest)

    p = sub.add_parser("dead-letters", help="list, retry or discard jobs that failed for good",
                       description="Jobs that ran out of attempts or failed permanently. `retry JOB` gives one a "
                       "new set of attempts now; `discard JOB` drops it. JOB is the job's id (its idempotency "
                       "key, as the admin API and the timeline show it).")
    p.add_argument("command_name", choices=["list", "retry", "discard"], metavar="list|retry|discard")
    p.add_argument("job", nargs="?", metavar="JOB")
    p.add_argument("--dir", default=".", help="the deployment folder (for its database; default .)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(handler=_dead_letters)

    p = sub.add_parser("worker", help="run action workers from Redis (arq); needs JOURNEYS_REDIS_URL",
                       description="Run arq workers that carry out the jobs of the deployment in DIR: sends, "
                       "calls, suppressions. `journeys serve` relays due jobs to Redis when "
                       "JOURNEYS_REDIS_URL is set; the database stays the truth.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.set_defaults(handler=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
