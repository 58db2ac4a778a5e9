"""How request bodies reach FastAPI: route classes (FastAPI's ``APIRoute``, its documented way to customise a route's
request) that read bodies within the deployment's bounds before FastAPI validates them against the route's model.

- ``JSONRoute``: a JSON body (``application/json``; 415 otherwise), with no more values than any request takes
  (counted before parsing) and nested at most ``jsonsafe.MAX_DEPTH`` deep; JSON that is not valid is a 400.
- ``AnyJSONRoute``: the same whatever the content type says (clip-retrieval's clients send none, or text/plain).
- ``UploadRoute``: a multipart form, for the route beside a ``JSONRoute`` at the same path that takes uploads; it
  matches multipart requests only, so one path takes JSON and forms, each validated by its own model. Its files and
  fields are counted as Starlette parses them.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from altclip.server.errors import BadRequest, InvalidInput, UnsupportedMediaType
from altclip.server.schemas import UPLOAD_ENCODING
from altclip.utils import jsonsafe

JSON, MULTIPART = "application/json", "multipart/form-data"


def content_type(scope: Scope) -> str:
    return dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()


def read_json(body: bytes, settings: Any) -> Any:
    """The JSON value of ``body``; more values than any request takes is a 422 before parsing (a body of a million
    numbers costs the parser and the validation far more than its bytes), malformed or too deep a 400."""
    most = settings.max_request_chars + 64 * settings.max_items + 1024  # commas in texts, between items and fields
    if body.count(b",") > most:
        raise InvalidInput(f"The body holds more JSON values than any request takes (over {most:,} commas)")
    try:
        return jsonsafe.loads(body)
    except jsonsafe.NestingError:
        raise BadRequest("The body is not valid JSON here: it is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise BadRequest(f"The body is not valid JSON: {e}") from None


class BoundedRequest(Request):
    """A request whose JSON and form are read within the service's bounds."""

    async def json(self) -> Any:
        if not hasattr(self, "_bounded_json"):
            self._bounded_json = read_json(await self.body(), self.app.state.service.settings)
        return self._bounded_json

    def form(self, **_: Any):  # FastAPI may pass its own defaults: ours are the service's
        items = self.app.state.service.settings.max_items
        return super().form(max_files=items, max_fields=items + 16)


class JSONRoute(APIRoute):
    accepted = JSON  # what the 415 says to send

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request):
            request = BoundedRequest(self.scope_for(request.scope), request.receive)
            await request.json()  # here, so that its errors are ours, not FastAPI's generic 400
            return await handle(request)

        return handler

    def scope_for(self, scope: Scope) -> Scope:
        ctype = content_type(scope)
        if not ctype.startswith(JSON):
            raise UnsupportedMediaType(f"Send {self.accepted}, not {ctype or 'no content type'}")
        return scope


class JSONOrUploadRoute(JSONRoute):
    """The JSON route of a path that also takes multipart uploads (``UploadRoute``)."""

    accepted = f"{JSON} or {MULTIPART}"


class AnyJSONRoute(JSONRoute):
    def scope_for(self, scope: Scope) -> Scope:
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        return {**scope, "headers": [*headers, (b"content-type", JSON.encode())]}


class UploadRoute(APIRoute):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not content_type(scope).startswith(MULTIPART):
            return Match.NONE, {}
        return super().matches(scope)

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request):
            return await handle(BoundedRequest(request.scope, request.receive))

        return handler


def post(router: APIRouter, path: str, endpoint, *, upload=None, any_content_type: bool = False, **kwargs) -> None:
    """A POST route at ``path`` reading JSON into ``endpoint``'s body model, and with ``upload`` a route of its own
    for multipart forms at the same path (its parts described by ``UPLOAD_ENCODING`` in the document)."""
    if upload is not None:
        form = next(p.annotation for p in inspect.signature(upload).parameters.values() if p.name == "form")
        fields = typing.get_args(form)[0].model_fields
        encoding = {name: kind for name, kind in UPLOAD_ENCODING.items() if name in fields}
        extra = {"requestBody": {"content": {MULTIPART: {"encoding": encoding}}}}
        router.add_api_route(path, upload, methods=["POST"], route_class_override=UploadRoute, openapi_extra=extra,
                             **kwargs)  # fmt: skip
    route = JSONOrUploadRoute if upload is not None else AnyJSONRoute if any_content_type else JSONRoute
    router.add_api_route(path, endpoint, methods=["POST"], route_class_override=route, **kwargs)
