"""The OpenAPI document of an app: FastAPI's, with the request bodies our endpoints read themselves (JSON, and
multipart forms where they take uploads) and the limits of this deployment written in."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from altclip.server.errors import DESCRIPTIONS
from altclip.server.middleware import admitted
from altclip.server.schemas import LABEL_LIST, LIMIT, WHITESPACE, ErrorResponse
from altclip.server.settings import ServerSettings

DIM = "x-altclip-dim"  # {DIM: True}: the model's embedding size, an integer's only value or an array's length


def request_body(json_model: type[BaseModel], form_model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``json_model`` (and ``form_model`` from multipart forms) itself."""
    content: dict[str, Any] = {"application/json": {"schema": json_model.model_json_schema()}}
    if form_model is not None:
        schema = form_model.model_json_schema()
        encoding = {name: {"contentType": _part_type(prop)} for name, prop in schema["properties"].items()}
        content["multipart/form-data"] = {"schema": schema, "encoding": {k: v for k, v in encoding.items() if v}}
    return {"requestBody": {"required": True, "content": content}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for error statuses, all with the JSON body ``{"detail": "..."}``."""
    content = {"application/json": {"schema": ErrorResponse.model_json_schema()}}
    return {status: {"description": DESCRIPTIONS[status], "content": content} for status in statuses}


def document(app: FastAPI, settings: ServerSettings) -> dict[str, Any]:
    """The app's OpenAPI document (made once the model is loaded), with this deployment's limits and the model's
    embedding size."""
    if app.openapi_schema is None:
        description = f"{app.description}\n\n{limits_text(settings)}"
        schema = get_openapi(title=app.title, version=app.version, description=description, routes=app.routes)
        embedder = app.state.service.embedder
        schema = _with_dim(_with_admission(_with_limits(schema, settings)), embedder.dim if embedder else None)
        if embedder is None:  # not final until the model is loaded
            return schema
        app.openapi_schema = schema
    return app.openapi_schema


def limits_text(settings: ServerSettings) -> str:
    """The limits of this deployment that JSON Schema cannot state beside a field."""
    s = settings
    return (
        f"Limits: {s.max_items} texts, images, labels or templates per request, {s.max_text_chars:,} characters per "
        f"text, query, label or template and {s.max_request_chars:,} in all (prompts included), "
        f"{s.max_prompts:,} prompts (labels x templates) per classification, {s.max_pixels:,} pixels per image and "
        f"{s.max_request_pixels:,} to decode per request, a body of {s.max_body_bytes:,} bytes, "
        f"{s.request_timeout_s:g} s per request (504), and {s.max_queue} requests served at once (429 beyond)."
    )


def _with_admission(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation that counts against ``max_queue`` and runs under the request timeout documents 429 and 504."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if admitted(method.upper(), path):
                responses = operation.setdefault("responses", {})
                for status, entry in errors(429, 504).items():
                    responses.setdefault(str(status), entry)
    return schema


def _part_type(prop: dict[str, Any]) -> str | None:
    """The content type of a form part that has one: image files, and the text of a list of labels."""
    if prop.get("format") == "binary" or prop.get("items", {}).get("format") == "binary":
        return "image/*"
    return "text/plain" if LABEL_LIST in prop else None


def _with_limits(node: Any, settings: ServerSettings) -> Any:
    """Replaces the limit marks of ``schemas`` by the settings' values: ``maxItems`` for arrays, ``maxLength`` for
    strings, and the patterns of the multipart ``labels`` field."""
    if isinstance(node, list):
        return [_with_limits(item, settings) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _with_limits(value, settings) for key, value in node.items()}
    if LIMIT in node:
        value = getattr(settings, node.pop(LIMIT))
        node["maxItems" if node.get("type") == "array" else "maxLength"] = value
    if node.pop(LABEL_LIST, False):
        node["minLength"] = 1
        node["pattern"] = "|".join(f"(?:{pattern})" for pattern in label_list_patterns(settings.max_items))
    return node


def _with_dim(node: Any, dim: int | None) -> Any:
    """Replaces the ``DIM`` marks by the model's embedding size (none before the model is loaded)."""
    if isinstance(node, list):
        return [_with_dim(item, dim) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _with_dim(value, dim) for key, value in node.items()}
    if node.pop(DIM, False) and dim is not None:
        if node.get("type") == "array":
            node["minItems"] = node["maxItems"] = dim
        else:
            node["enum"] = [dim]
    return node


def label_list_patterns(max_items: int) -> tuple[str, str]:
    """The multipart ``labels`` field as ``schemas`` reads it: labels separated by commas (each with a non-blank
    character; the first not starting with '[', which would make it JSON), or a JSON list of labels (written here
    without escapes); at most ``max_items`` of them."""
    more = f"{{0,{max_items - 1}}}"
    space = f"[{WHITESPACE}]*"
    commas = rf"^{space}[^{WHITESPACE},\[][^,]*(,[^,]*[^{WHITESPACE},][^,]*){more}$"
    char = r'[^"\\\x00-\x1f]'
    label = rf'"{char}*[^"\\\x00-\x1f{WHITESPACE}]{char}*"'
    json_space = r"[ \t\n\r]*"
    json_list = rf"^{space}\[{json_space}{label}({json_space},{json_space}{label}){more}{json_space}\]{space}$"
    return commas, json_list
