"""The OpenAPI description of ``/ingest/{source}``.

The endpoint is a mounted ASGI app (ingest.routes), which has no handler signature for
Litestar to describe it from, so it is described here, once, after the app is built.
"""

from __future__ import annotations

from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

JSON = "application/json"


def _error_response(description: str, retry_after: bool = False) -> OpenAPIResponse:
    wait = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="seconds to wait")
    headers: dict[str, OpenAPIHeader | Reference] | None = {"Retry-After": wait} if retry_after else None
    return OpenAPIResponse(description=description, headers=headers, content={JSON: OpenAPIMediaType(schema=Schema(
        type=OpenAPIType.OBJECT, properties={"error": Schema(type=OpenAPIType.STRING)}))})


def document(openapi: OpenAPI) -> None:
    """Add ``/ingest/{source}`` to the app's OpenAPI document."""
    source = Parameter(name="source", param_in=ParamType.PATH, required=True, schema=Schema(type=OpenAPIType.STRING),
                       description="a source named in config.yaml")
    stored = OpenAPIResponse(description="stored (or a repeat of a stored event, counted): committed before "
                             "this answer; Twilio gets 200 and an empty TwiML <Response/>, others 202")
    errors = {
        "400": _error_response("malformed body"),
        "401": _error_response("missing, wrong or stale signature"),
        "404": _error_response("no such source"),
        "413": _error_response("body over the source's max_body_bytes"),
        "415": _error_response("content type this provider does not send"),
        "429": _error_response("over the source's rate_limit", retry_after=True),
        "503": _error_response("storage unavailable: nothing was stored, retry", retry_after=True),
    }
    openapi.paths = {**(openapi.paths or {}), "/ingest/{source}": PathItem(
        post=Operation(
            tags=["ingest"], summary="A provider's webhook", operation_id="ingest",
            description="Verified on the raw bytes, normalized to canonical events, deduplicated and stored in a "
                        "group commit. The body is what the source's provider sends.",
            parameters=[source], request_body=RequestBody(content={"*/*": OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))}, required=True),
            responses={"200": stored, "202": stored, **errors}),
        get=Operation(
            tags=["ingest"], summary="Subscription handshake (Meta WhatsApp)", operation_id="ingest_handshake",
            parameters=[source], responses={
                "200": OpenAPIResponse(description="the challenge, echoed", content={
                    "text/plain": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))}),
                "401": errors["401"], "404": errors["404"],
                "405": _error_response("this source's provider has no handshake")}),
    )}
