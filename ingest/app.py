"""The HTTP application that ``journeys serve`` runs (Litestar).

Built with ``Litestar(...)`` directly: ``Litestar.from_config`` breaks handlers that read
a body. Background loops (engine, timers) start and stop with the app, so a SIGTERM lets
the current batch finish and hands back claims before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from engine.admin import AdminController, healthz, openapi_document, readyz
from engine.db.database import Database
from ingest.openapi import document
from ingest.routes import ingest_endpoint

log = logging.getLogger("journeys.serve")

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def build_app(db: Database, *, loops: Sequence[Loop] = (), admin_token: str | None = None,
              state: dict[str, Any] | None = None, route_handlers: Sequence[Any] = ()) -> Litestar:
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(app: Litestar) -> None:
        stop.clear()
        for loop in loops:
            tasks.append(asyncio.create_task(loop(stop)))

    async def finish(app: Litestar) -> None:
        stop.set()
        # each loop finishes its batch and releases what it claimed
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("background loop ended with %r", result)
        tasks.clear()
        await db.dispose()

    app = Litestar(
        route_handlers=[healthz, readyz, openapi_document, AdminController, *route_handlers],
        on_startup=[start],
        on_shutdown=[finish],
        openapi_config=OpenAPIConfig(title="journeys", version="0.1.0", path="/schema/ui"),
        debug=False,
    )

    if ingest_endpoint in route_handlers:
        document(app.openapi_schema)
    app.state["db"] = db
    app.state["admin_token"] = admin_token
    for key, value in (state or {}).items():
        app.state[key] = value
    return app
