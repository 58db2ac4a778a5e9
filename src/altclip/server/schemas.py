"""The service's API types: what each endpoint accepts (JSON and, where the endpoint takes uploads, multipart
forms) and what it returns. ``/openapi.json`` is generated from these models, so it says what the code does.

Two limits are settings of the deployment (``max_items``, ``max_text_chars``): a model marks where they apply with
``limit(...)``, validation reads them from its context (the settings), and ``openapi.py`` writes them into the
document of each app as ``maxItems`` / ``maxLength``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from altclip.server.errors import BadRequest, InvalidInput
from altclip.zeroshot import TEMPLATE_MODES, check_template

LIMIT = "x-altclip-limit"  # {LIMIT: "max_items"}: maxItems (arrays) or maxLength (strings) from the app's settings
LABEL_LIST = "x-altclip-label-list"  # the multipart labels field, whose patterns depend on max_items
# JSON Schema patterns are ECMA-262 regular expressions, whose whitespace (\s) is this set, not Python's (which also
# counts \x1c-\x1f and \x85). The patterns and the server's own checks both use it, so they agree on what is blank.
WHITESPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NON_BLANK = re.compile(rf"[^{WHITESPACE}]")
_EDGES = re.compile(rf"^[{WHITESPACE}]+|[{WHITESPACE}]+$")


def strip(text: str) -> str:
    """``text`` without whitespace (as ``WHITESPACE`` counts it) at either end."""
    return _EDGES.sub("", text)


def limit(setting: str) -> dict[str, str]:
    return {LIMIT: setting}


def _optional(schema: dict[str, Any]) -> None:
    """For fields that may be left out but not sent as null: no ``"default": null`` in their schema."""
    schema.pop("default", None)


def invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid", message)


# --- validation against the deployment's limits ------------------------------------------------------------------


def _max_items(info: ValidationInfo) -> int | None:
    return getattr(info.context, "max_items", None)


def _check_count(items: list, what: str, info: ValidationInfo) -> None:
    if not items:
        raise invalid(f"No {what} given")
    most = _max_items(info)
    if most is not None and len(items) > most:
        raise invalid(f"Too many {what}: {len(items)} (limit {most})")


def _check_text(text: str, what: str, info: ValidationInfo) -> None:
    if not NON_BLANK.search(text):
        raise invalid(f"{what} is empty")
    most = getattr(info.context, "max_text_chars", None)
    if most is not None and len(text) > most:
        raise invalid(f"{what} has {len(text)} characters (limit {most})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{what} is not valid Unicode (a lone surrogate)") from None


def _texts(texts: list[str], info: ValidationInfo) -> list[str]:
    _check_count(texts, "texts", info)
    for i, text in enumerate(texts):
        _check_text(text, f"Text {i}", info)
    return texts


def _query(query: str, info: ValidationInfo) -> str:
    _check_text(query, "The query", info)
    return query


def _labels(labels: list[str], info: ValidationInfo) -> list[str]:
    _check_count(labels, "labels", info)
    if any(not NON_BLANK.search(label) for label in labels):
        raise invalid("Labels must not be empty")
    return labels


def _images(images: list, info: ValidationInfo) -> list:
    _check_count(images, "images", info)
    return images


def _templates(value: Any, info: ValidationInfo) -> Any:
    if value is None or value in TEMPLATE_MODES:
        return value
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        most = _max_items(info)
        if most is not None and len(value) > most:
            raise invalid(f"Too many templates: {len(value)} (limit {most})")
        try:
            for template in value:
                check_template(template)
        except ValueError as e:
            raise invalid(str(e)) from None
        return value
    raise invalid(
        f"templates must be 'auto', 'none', a language code ({', '.join(TEMPLATE_MODES[2:])}), a non-empty list of "
        "templates with '{}', or null"
    )


def _label_list(value: Any) -> Any:
    """The multipart ``labels`` field (each part, if sent several times): a JSON list of labels, or labels separated
    by commas."""
    parts = value if isinstance(value, list) else [value]
    labels: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise invalid("labels must be text: a JSON list of labels, or labels separated by commas")
        text = strip(part)
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise BadRequest("labels is not valid JSON") from None
            if not isinstance(parsed, list) or not all(isinstance(label, str) for label in parsed):
                raise invalid("labels must be a JSON list of strings")
            labels += parsed
        else:
            labels += [strip(label) for label in text.split(",")]
    return labels


def decode_base64(text: str, index: int) -> bytes:
    """An image sent as base64 (optionally a ``data:`` URL)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Image {index} is not valid base64") from None
    if not data:
        raise InvalidInput(f"Image {index} is empty")
    return data


# --- the parts of requests -------------------------------------------------------------------------------------------

IMAGE_BASE64 = {
    "type": "string",
    "format": "base64-image",
    "contentEncoding": "base64",
    "contentMediaType": "image/*",
    "description": "An image file (JPEG, PNG, WebP, ...) in base64, or as a data: URL",
}
IMAGE_FILE = {"type": "string", "format": "binary", "description": "An image file (JPEG, PNG, WebP, ...)"}
TEXT = {"type": "string", "pattern": NON_BLANK.pattern, **limit("max_text_chars")}
TEMPLATE = {"type": "string", "pattern": r"^[^{}]*(\{\}[^{}]*)+$", "description": "A prompt with '{}' for the label"}

Text = Annotated[str, WithJsonSchema(TEXT)]
Texts = Annotated[
    list[Text],
    AfterValidator(_texts),
    Field(description="Texts in any language", json_schema_extra={"minItems": 1, **limit("max_items")}),
]
Label = Annotated[str, WithJsonSchema({"type": "string", "pattern": NON_BLANK.pattern})]
Labels = Annotated[
    list[Label],
    AfterValidator(_labels),
    Field(description="Candidate labels, in any language", json_schema_extra={"minItems": 1, **limit("max_items")}),
]
Base64Image = Annotated[str, WithJsonSchema(IMAGE_BASE64)]
Base64Images = Annotated[
    list[Base64Image], AfterValidator(_images), Field(json_schema_extra={"minItems": 1, **limit("max_items")})
]
ImageFile = Annotated[bytes, WithJsonSchema(IMAGE_FILE)]
TemplateModes = Literal[TEMPLATE_MODES]  # type: ignore[valid-type]
Templates = Annotated[
    Any,
    AfterValidator(_templates),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "enum": list(TEMPLATE_MODES)},
                {"type": "array", "items": TEMPLATE, "minItems": 1, **limit("max_items")},
                {"type": "null"},
            ],
            "description": "'auto' (each label in the template set of its language), 'none' (the label alone), a "
            "language code (that template set), a list of templates with '{}' for the label, or null (transformers' "
            "'This is a photo of {}.')",
        }
    ),
]
TopK = Annotated[int, Field(ge=1, le=1000, description="How many results")]


# --- requests ----------------------------------------------------------------------------------------------------


class TextsRequest(BaseModel):
    texts: Texts


class ImagesRequest(BaseModel):
    images: Base64Images

    def image_bytes(self) -> list[bytes]:
        return [decode_base64(text, i) for i, text in enumerate(self.images)]


class ImagesForm(BaseModel):
    images: Annotated[
        list[ImageFile], AfterValidator(_images), Field(json_schema_extra={"minItems": 1, **limit("max_items")})
    ]

    def image_bytes(self) -> list[bytes]:
        return self.images


class ClassifyRequest(BaseModel):
    image: Base64Image
    labels: Labels
    templates: Templates = "auto"

    def image_bytes(self) -> list[bytes]:
        return [decode_base64(self.image, 0)]


class ClassifyForm(BaseModel):
    image: ImageFile
    labels: Annotated[
        list[str],
        BeforeValidator(_label_list),
        AfterValidator(_labels),
        WithJsonSchema(
            {
                "type": "string",
                "description": "Labels separated by commas, or a JSON list of labels",
                LABEL_LIST: True,
            }
        ),
    ]
    templates: Annotated[TemplateModes, Field(description="'auto', 'none' or a language code")] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _fields_sent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "image" not in data:
                raise invalid("Send the image as a file in the form field 'image'")
            if "labels" not in data:
                raise invalid("Send the candidate labels (form field 'labels')")
        return data

    def image_bytes(self) -> list[bytes]:
        return [self.image]


class SimilarityRequest(BaseModel):
    texts: Texts
    images: Base64Images

    def image_bytes(self) -> list[bytes]:
        return [decode_base64(text, i) for i, text in enumerate(self.images)]


QUERY_OR_IMAGE = {"anyOf": [{"required": ["query"]}, {"required": ["image"]}], "not": {"required": ["query", "image"]}}


class _QueryOrImage(BaseModel, json_schema_extra=QUERY_OR_IMAGE):
    @model_validator(mode="after")
    def _one_of(self) -> _QueryOrImage:
        if (self.query is None) == (self.image is None):
            raise invalid("Send a text query or an image (one of them)")
        return self


class SearchRequest(_QueryOrImage):
    query: Annotated[
        Text, AfterValidator(_query), Field(description="Text to search for", json_schema_extra=_optional)
    ] = None
    image: Annotated[Base64Image, Field(description="Or an image to search with", json_schema_extra=_optional)] = None
    top_k: TopK = 10

    def image_bytes(self) -> bytes | None:
        return None if self.image is None else decode_base64(self.image, 0)


class SearchForm(_QueryOrImage):
    query: Annotated[
        Text, AfterValidator(_query), Field(description="Text to search for", json_schema_extra=_optional)
    ] = None
    image: Annotated[ImageFile, Field(description="Or an image to search with", json_schema_extra=_optional)] = None
    top_k: TopK = 10

    def image_bytes(self) -> bytes | None:
        return self.image


# --- responses ---------------------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong")


class EmbeddingsResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="Unit-norm embeddings, one per input, in order")


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    labels: list[LabelScore] = Field(description="Every label with its probability, highest first")


class SimilarityResponse(BaseModel):
    cosine: list[list[float]] = Field(description="(images, texts) cosine similarities")
    logits_per_image: list[list[float]] = Field(description="Cosine similarities scaled by the model's temperature")
    probs: list[list[float]] = Field(description="Per image, the softmax of its logits over the texts")


class SearchHit(BaseModel):
    id: int = Field(description="The image's id in the index (for /v1/thumbnails/{id})")
    score: float = Field(description="Cosine similarity")
    name: str = Field(description="The file's name")
    duplicates: int = Field(description="Other indexed files with the same content")


class SearchResponse(BaseModel):
    results: list[SearchHit]


class IndexInfo(BaseModel):
    images: int


class Limits(BaseModel):
    max_items: int
    max_body_bytes: int


class InfoResponse(BaseModel):
    model: str
    dim: int | None
    index: IndexInfo | None
    auth: bool = Field(description="Whether /v1/* needs a bearer token")
    limits: Limits


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    draining: bool
