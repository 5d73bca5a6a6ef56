"""The yardstick of the ingest benchmark: a Litestar endpoint that reads the body and answers 202."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, post
from litestar.params import FromPath


@post("/ingest/{source:str}", status_code=202)
async def ingest(request: Request[Any, Any, Any], source: FromPath[str]) -> Response[bytes]:
    await request.body()
    return Response(b'{"ok":true}', status_code=202, media_type="application/json")


app = Litestar(route_handlers=[ingest])
