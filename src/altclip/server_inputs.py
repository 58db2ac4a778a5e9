"""Reading and validating the service's requests: JSON bodies, multipart forms, base64 images, and the limits on
what a request may hold. Malformed input becomes a 4xx with a message that says what is wrong."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from altclip.server import ServerSettings


class TextsRequest(BaseModel):
    texts: list[str] = Field(description="Texts in any language")


class ImagesRequest(BaseModel):
    images: list[str] = Field(description="Base64-encoded image files (JPEG, PNG, WebP, ...), or data: URLs")


class ClassifyRequest(BaseModel):
    image: str = Field(description="A base64-encoded image file")
    labels: list[str] = Field(description="Candidate labels, in any language")
    templates: str | list[str] | None = Field(
        "auto", description="'auto', a language code, a list of '{}' templates, or null"
    )


class SimilarityRequest(BaseModel):
    texts: list[str]
    images: list[str] = Field(description="Base64-encoded image files")


class SearchRequest(BaseModel):
    query: str | None = Field(None, description="Text to search for, in any language")
    image: str | None = Field(None, description="Or a base64-encoded image to search with")
    top_k: int = Field(10, ge=1, le=1000)


def check_count(items: list, settings: ServerSettings, what: str) -> list:
    if not items:
        raise HTTPException(422, f"No {what} given")
    if len(items) > settings.max_items:
        raise HTTPException(422, f"Too many {what}: {len(items)} (limit {settings.max_items})")
    return items


def check_texts(texts: list[str], settings: ServerSettings) -> list[str]:
    check_count(texts, settings, "texts")
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"Text {i} is empty")
        if len(text) > settings.max_text_chars:
            raise HTTPException(422, f"Text {i} has {len(text)} characters (limit {settings.max_text_chars})")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(422, f"Text {i} is not valid Unicode (a lone surrogate)") from None
    return texts


def check_labels(labels: list[str], settings: ServerSettings) -> list[str]:
    labels = [label for label in labels if isinstance(label, str)]
    check_count(labels, settings, "labels")
    if any(not label.strip() for label in labels):
        raise HTTPException(422, "Labels must not be empty")
    return labels


def parse_labels(raw: Any) -> list[str]:
    if raw is None:
        raise HTTPException(422, "Send the candidate labels (form field 'labels')")
    raw = str(raw)
    if raw.lstrip().startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise HTTPException(400, "labels is not valid JSON") from None
        if not isinstance(value, list):
            raise HTTPException(422, "labels must be a list")
        return [str(v) for v in value]
    return [v.strip() for v in raw.split(",")]


def int_field(raw: Any, name: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise HTTPException(422, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPException(422, f"{name} must be between {low} and {high}")
    return value


def is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        return True
    if ctype.startswith("multipart/form-data"):
        return False
    raise HTTPException(415, f"Send application/json or multipart/form-data, not {ctype or 'no content type'}")


async def json_request(request: Request, model: type[BaseModel]) -> Any:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        raise HTTPException(415, f"Send application/json, not {ctype or 'no content type'}")
    return validate(model, await read_json(request))


def json_body(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"The body is not valid JSON: {e}") from None


def validate(model: type[BaseModel], data: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, validation_message(e.errors())) from None


async def read_form(request: Request, settings: ServerSettings):
    try:
        return await request.form(max_files=settings.max_items, max_fields=settings.max_items + 16)
    except HTTPException:
        raise
    except Exception as e:  # malformed multipart bodies
        raise HTTPException(400, f"Malformed multipart body: {e}") from None


async def read_files(form, name: str, settings: ServerSettings, required: bool = True) -> list[bytes]:
    uploads = [v for key in (name, name + "s") for v in form.getlist(key) if hasattr(v, "read")]
    if not uploads and required:
        raise HTTPException(422, f"Send the image as a file in the form field '{name}'")
    if len(uploads) > settings.max_items:
        raise HTTPException(422, f"Too many images: {len(uploads)} (limit {settings.max_items})")
    return [await u.read() for u in uploads]


async def read_images(request: Request, settings: ServerSettings, name: str) -> list[bytes]:
    if is_json(request):
        body = validate(ImagesRequest, await read_json(request))
        return [decode_base64(s, i) for i, s in enumerate(check_count(body.images, settings, "images"))]
    return check_count(
        await read_files(await read_form(request, settings), name.rstrip("s"), settings), settings, "images"
    )


def decode_base64(text: str, index: int) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"Image {index} is not valid base64") from None
    if not data:
        raise HTTPException(422, f"Image {index} is empty")
    return data


def image_body(name: str, many: bool, extra: dict | None = None) -> dict:
    """OpenAPI request bodies for endpoints that take an upload or base64 JSON."""
    file_schema = {"type": "string", "format": "binary"}
    form = {name: {"type": "array", "items": file_schema} if many else file_schema, **(extra or {})}
    b64 = {"type": "array", "items": {"type": "string"}} if many else {"type": "string", "description": "base64"}
    return {
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": form}},
                "application/json": {"schema": {"type": "object", "properties": {name: b64, **(extra or {})}}},
            }
        }
    }


def validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "Invalid request"
