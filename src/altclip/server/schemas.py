"""The service's API types: what each endpoint accepts (JSON and, where the endpoint takes uploads, multipart
forms) and what it returns. ``/openapi.json`` is generated from these models, so it says what the code does.

The limits are settings of the deployment, checked by ``limits`` (validation reads the settings from its context).
Those JSON Schema can state (``max_items``, ``max_text_chars``) are marked with ``limit(...)`` where they apply, and
``openapi.py`` writes them into the document of each app as ``maxItems`` / ``maxLength``; the others (characters
and prompts per request, pixels) are in the descriptions of the endpoints.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
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

from altclip.server import limits
from altclip.server.errors import BadRequest, InvalidInput
from altclip.server.limits import NON_BLANK, WHITESPACE
from altclip.zeroshot import TEMPLATE_MODES

LIMIT = "x-altclip-limit"  # {LIMIT: "max_items"}: maxItems (arrays) or maxLength (strings) from the app's settings
LABEL_LIST = "x-altclip-label-list"  # the multipart labels field, whose patterns depend on max_items
_EDGES = re.compile(rf"^[{WHITESPACE}]+|[{WHITESPACE}]+$")
_BASE64_BREAKS = re.compile(r"[\r\n\t ]+")


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


# --- validation against the deployment's limits (``limits``; the settings are the validation context) ---------------


def checked(check: Callable[..., None], *args: Any) -> None:
    """Runs one of the ``limits`` checks, its InvalidInput as a validation error."""
    try:
        check(*args)
    except InvalidInput as e:
        raise invalid(str(e)) from None


def _texts(texts: list[str], info: ValidationInfo) -> list[str]:
    checked(limits.check_texts, texts, info.context)
    return texts


def _query(query: str, info: ValidationInfo) -> str:
    checked(limits.check_text, query, "The query", info.context)
    return query


def _labels(labels: list[str], info: ValidationInfo) -> list[str]:
    checked(limits.check_texts, labels, info.context, "labels", "Label")
    return labels


def counted(what: str) -> BeforeValidator:
    """The number of items of a list checked before the items are: a list of millions of wrong items would
    otherwise cost pydantic an error for each (seconds and gigabytes)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list):
            checked(limits.check_count, value, what, info.context)
        return value

    return BeforeValidator(check)


def _templates(value: Any, info: ValidationInfo) -> Any:
    if value is None or value in TEMPLATE_MODES:
        return value
    if isinstance(value, list) and value:
        checked(limits.check_count, value, "templates", info.context)
        if all(isinstance(t, str) for t in value):
            checked(limits.check_templates, value, info.context)
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
    """An image sent as base64 (optionally a ``data:`` URL, whose scheme is case-insensitive), with or without the
    line breaks of MIME base64 (what the ``base64`` command writes)."""
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    if _BASE64_BREAKS.search(text):
        text = _BASE64_BREAKS.sub("", text)
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
TEMPLATE = {
    "type": "string",
    "pattern": r"^[^{}]*(\{\}[^{}]*)+$",
    "description": "A prompt with '{}' for the label",
    **limit("max_text_chars"),
}

Text = Annotated[str, WithJsonSchema(TEXT)]
Texts = Annotated[
    list[Text],
    counted("texts"),
    AfterValidator(_texts),
    Field(description="Texts in any language", json_schema_extra={"minItems": 1, **limit("max_items")}),
]
Label = Annotated[str, WithJsonSchema(TEXT)]
Labels = Annotated[
    list[Label],
    counted("labels"),
    AfterValidator(_labels),
    Field(description="Candidate labels, in any language", json_schema_extra={"minItems": 1, **limit("max_items")}),
]
Base64Image = Annotated[str, WithJsonSchema(IMAGE_BASE64)]
Base64Images = Annotated[
    list[Base64Image],
    counted("images"),
    Field(json_schema_extra={"minItems": 1, **limit("max_items")}),
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
        list[ImageFile], counted("images"), Field(json_schema_extra={"minItems": 1, **limit("max_items")})
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
                "description": "Labels separated by commas, or a JSON list of labels (each within the length limit "
                "of texts)",
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
    """This deployment's limits (the settings of the same names)."""

    max_items: int
    max_body_bytes: int
    max_text_chars: int
    max_request_chars: int
    max_prompts: int
    max_pixels: int
    max_request_pixels: int
    max_queue: int
    request_timeout_s: float


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
