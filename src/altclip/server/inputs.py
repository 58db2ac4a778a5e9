"""Reading request bodies into the API types (``schemas``): JSON, or a multipart form where the endpoint takes
uploads, validated against the deployment's limits. Malformed input raises the errors of ``errors``, which the app
turns into 4xx responses that say what is wrong."""

from __future__ import annotations

import functools
import json
import typing
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from altclip.server import limits
from altclip.server.errors import BadRequest, BodyTooLarge, InvalidInput, UnsupportedMediaType, validation_message
from altclip.server.service import ServiceDep
from altclip.server.settings import ServerSettings

M = TypeVar("M", bound=BaseModel)


def body(json_model: type[BaseModel], form_model: type[BaseModel] | None = None, *, any_content_type: bool = False):
    """A dependency giving the request's body as ``json_model``, or as ``form_model`` when it is a multipart form.
    ``any_content_type``: the body is read as JSON whatever its content type says (for clients that send JSON
    without one, or as text/plain)."""

    async def read(request: Request, service: ServiceDep) -> BaseModel:
        settings = service.settings
        if any_content_type or _is_json(request, accepts_forms=form_model is not None):
            return validate(json_model, await _json(request, settings), settings)
        assert form_model is not None
        return validate(form_model, await _form(request, form_model, settings), settings)

    return read


def validate(model: type[M], data: Any, settings: ServerSettings) -> M:
    """``data`` as ``model``, checked against the limits of ``settings``; InvalidInput naming what is wrong."""
    try:
        return model.model_validate(data, context=settings)
    except ValidationError as e:
        raise InvalidInput(validation_message(e.errors())) from None


def _is_json(request: Request, accepts_forms: bool) -> bool:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("application/json"):
        return True
    if accepts_forms and ctype.startswith("multipart/form-data"):
        return False
    accepted = "application/json or multipart/form-data" if accepts_forms else "application/json"
    raise UnsupportedMediaType(f"Send {accepted}, not {ctype or 'no content type'}")


async def _json(request: Request, settings: ServerSettings) -> Any:
    body = await request.body()
    limits.check_json_size(body, settings)
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("The body is not valid JSON here: it is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise BadRequest(f"The body is not valid JSON: {e}") from None


async def _form(request: Request, model: type[BaseModel], settings: ServerSettings) -> dict[str, Any]:
    """The form's fields that ``model`` knows, uploads read into bytes; repeated fields as lists where ``model``
    takes a list."""
    try:
        form = await request.form(max_files=settings.max_items, max_fields=settings.max_items + 16)
    except BodyTooLarge:
        raise
    except HTTPException as e:  # Starlette's own refusals: too many files or fields
        raise BadRequest(f"Malformed multipart body: {e.detail}") from None
    except Exception as e:  # malformed multipart bodies
        raise BadRequest(f"Malformed multipart body: {e}") from None
    files = _file_fields(model)
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        values = [await _part(v, name in files) for v in form.getlist(name)]
        if values:
            data[name] = values if typing.get_origin(field.annotation) is list else values[0]
    return data


@functools.cache
def _file_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a form model that hold files (``format: binary`` in its schema)."""
    properties = model.model_json_schema()["properties"]
    return frozenset(
        n for n, p in properties.items() if "binary" in (p.get("format"), p.get("items", {}).get("format"))
    )


async def _part(value: UploadFile | str, binary: bool) -> bytes | str:
    """A form part's content, as the model's field takes it: files as bytes, text as text. A file sent as a plain
    field (no file name) is taken back to the bytes it was sent as (Starlette decodes such fields as UTF-8, or as
    Latin-1 when they are not UTF-8, which image files never are); text sent as a file is read as UTF-8."""
    if isinstance(value, UploadFile):
        data = await value.read()
        if binary:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The form field {value.filename or ''!r} is not UTF-8 text") from None
    if binary:
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return value.encode("utf-8")
    return value
