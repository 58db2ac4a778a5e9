"""The service's errors and their HTTP statuses, in one table. Handlers, request parsing and the middleware raise
these (or the library's own ``ImageError``); ``install`` turns each into its status with a JSON body
``{"detail": "what went wrong"}``, the shape every error response of the API has, and ``response`` does the same
for the middleware, which answers outside the app's handlers. The OpenAI-compatible routes (``OPENAI_PATHS``) add
OpenAI's error object beside ``detail`` (``openai_error``), from their handlers and from the middleware alike.
``documented`` gives routes the entries of their error responses for ``/openapi.json``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from altclip.index.store import IndexFileError
from altclip.processing.image_processing import ImageError


class BadRequest(Exception):
    """The body is not valid JSON, multipart or base64."""


class Unauthorized(Exception):
    """The API needs a bearer token, and the request has none or another."""


class NotFound(Exception):
    """No index, or no indexed image with that id."""


class BodyTooLarge(Exception):
    """The body is over ``max_body_bytes``."""


class UnsupportedMediaType(Exception):
    """The body has a content type the endpoint does not read."""


class InvalidInput(Exception):
    """The request is well-formed but its values cannot be used (limits, empty texts, bad templates)."""


class QueueFull(Exception):
    """The service is already serving ``max_queue`` requests."""


class Timeout(Exception):
    """The request took longer than ``request_timeout_s``."""


class InternalError(Exception):
    """A bug: logged with its traceback, answered without one."""


# exception -> (status, how its message reads in "detail", headers)
STATUS: dict[type[Exception], tuple[int, str, dict[str, str] | None]] = {
    BadRequest: (400, "{}", None),
    Unauthorized: (401, "{}", {"WWW-Authenticate": "Bearer"}),
    NotFound: (404, "{}", None),
    BodyTooLarge: (413, "{}", None),
    UnsupportedMediaType: (415, "{}", None),
    InvalidInput: (422, "{}", None),
    ImageError: (422, "{}", None),  # undecodable images, images over the pixel or aspect-ratio limits
    QueueFull: (429, "The server is busy: {}; retry later", {"Retry-After": "1"}),
    InternalError: (500, "Internal error: {}", None),
    # A search file that changed under the running server (a shard cut short, a file damaged): the index must be
    # opened again (or built again); the server keeps answering everything else.
    IndexFileError: (503, "The index cannot be searched: {}", None),
    Timeout: (504, "{}", None),
}

DESCRIPTIONS = {
    400: "The body is not valid JSON, multipart or base64",
    401: "Missing or wrong bearer token",
    404: "Not found",
    413: "The body is over the size limit",
    415: "Unsupported content type",
    422: "The request's values cannot be used",
    429: "The server is busy (it serves at most max_queue requests at once); retry later",
    503: "Not ready, or the index cannot be searched",
    504: "The request took too long",
}


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong")


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong")
    error: OpenAIError | None = Field(None, description="The same, as OpenAI's API reports errors")


OPENAI_PATHS = ("/v1/embeddings", "/v1/models")
OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 504: "timeout_error"}


def error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def openai_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error as OpenAI's API gives it (``{"error": {"message", "type", ...}}``), with ``detail`` as ours."""
    kind = OPENAI_TYPES.get(status, "invalid_request_error")
    return JSONResponse(
        {"detail": detail, "error": {"message": detail, "type": kind, "param": None, "code": None}},
        status_code=status,
        headers=headers,
    )


def documented(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for error statuses, all with a JSON body ``{"detail": "..."}`` (and OpenAI's error
    object beside it on its routes, where an unusable request is a 400), whatever the route's own content type."""
    if openai:
        descriptions = {**DESCRIPTIONS, 400: "The body is not valid JSON, or its values cannot be used"}
        return {status: {"description": descriptions[status], "model": OpenAIErrorResponse} for status in statuses}
    content = {"application/json": {"schema": ErrorResponse.model_json_schema()}}
    return {status: {"description": DESCRIPTIONS[status], "content": content} for status in statuses}


def install(app: FastAPI, message: Callable[[Sequence[dict]], str]) -> None:
    """Registers the table, and validation errors (their ``message``), as the app's exception handlers."""
    for exc_type in STATUS:
        app.add_exception_handler(exc_type, _respond)

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return shaped(422, message(exc.errors()), None, request.scope["path"])

    # Starlette calls each handler with exceptions of its class only; its stub types handlers as taking any.
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _routing_error)  # type: ignore[arg-type]


def describe(exc: Exception) -> tuple[int, str, dict[str, str] | None] | None:
    """(status, detail, headers) of an exception of the table; None for any other."""
    for kind, (status, detail, headers) in STATUS.items():
        if isinstance(exc, kind):
            return status, detail.format(exc), headers
    return None


def shaped(status: int, detail: str, headers: Mapping[str, str] | None, path: str) -> JSONResponse:
    """An error answer in the shape of the route at ``path``: OpenAI's on its routes, where a request that cannot be
    used is a 400 as OpenAI answers it (the SDK's ``BadRequestError``); ``{"detail"}`` with our status elsewhere."""
    if path.startswith(OPENAI_PATHS):
        return openai_error(400 if status == 422 else status, detail, headers)
    return error(status, detail, headers)


def response(exc: Exception, path: str = "") -> JSONResponse:
    """The response the table gives ``exc`` (one of its exceptions) on the route at ``path``."""
    described = describe(exc)
    assert described is not None, f"{type(exc).__name__} is not in the table"
    return shaped(*described, path)


async def _respond(request: Request, exc: Exception) -> JSONResponse:
    return response(exc, request.scope["path"])


async def _routing_error(request: Request, exc: HTTPException):
    """Starlette's own refusals (404 for no route, 405 for another method), in OpenAI's shape on its routes."""
    if request.scope["path"].startswith(OPENAI_PATHS):
        return shaped(exc.status_code, str(exc.detail), exc.headers, request.scope["path"])
    return await http_exception_handler(request, exc)
