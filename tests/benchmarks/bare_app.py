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


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same endpoint in plain ASGI, without Litestar (for information)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
