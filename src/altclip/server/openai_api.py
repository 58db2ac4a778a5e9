"""The OpenAI embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models`` (``/v1/models/{id}``), so that the
official ``openai`` package, and everything built on it, embeds through this server.

Texts follow OpenAI's API: ``input`` is a string or a list of strings; ``model``, ``encoding_format`` (``float``
or ``base64``, little-endian float32 as OpenAI encodes it; the SDK asks for base64 unless told otherwise),
``dimensions`` (only the model's own: no truncation) and ``user`` (ignored). Token-id inputs are refused: they
would be ids of OpenAI's tokenizer, not of this model's. Any ``model`` name is accepted (this server serves one
model, and the answer names it), as text-embeddings-inference does; ``GET /v1/models`` lists the one it serves.

Images come through the same endpoint in two forms, both sent as base64 or ``data:`` URIs (never fetched from
URLs): ``"modality": "image"``, which makes the strings of ``input`` images, as infinity-emb reads them; or typed
items, ``{"text": "..."}`` and ``{"image": "data:..."}`` (as Jina's embeddings API takes them), which can mix
texts and images in one request. Text and image embeddings share one space, so both are comparable.

``usage`` counts the tokens the model reads: a text's XLM-R tokens, with <s> and </s>, after truncation; an image's
patches and class token. Requests go through the same body parsing, limits, auth and batching as ``/v1/embed/*``.
Errors keep the service's ``{"detail": ...}`` and add OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, which the SDK reads.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, WithJsonSchema, model_validator
from starlette.concurrency import run_in_threadpool

from altclip.server import errors, limits
from altclip.server.inputs import body
from altclip.server.openapi import DIM, request_body
from altclip.server.schemas import (
    IMAGE_BASE64,
    TEXT,
    _optional,
    checked,
    counted,
    decode_base64,
    invalid,
    limit,
)
from altclip.server.service import Service, ServiceDep, together

# --- requests ----------------------------------------------------------------------------------------------------

TEXT_ITEM = {
    "type": "object",
    "properties": {"text": TEXT},
    "required": ["text"],
    "additionalProperties": False,
    "description": "A text",
}
IMAGE_ITEM = {
    "type": "object",
    "properties": {"image": IMAGE_BASE64},
    "required": ["image"],
    "additionalProperties": False,
    "description": "An image, as base64 or a data: URI (URLs are not fetched)",
}


def _inputs(strings: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of ``input`` where its bare strings are ``strings`` (texts, or images)."""
    item = {"anyOf": [strings, TEXT_ITEM, IMAGE_ITEM]}
    return {"anyOf": [strings, {"type": "array", "items": item, "minItems": 1, **limit("max_items")}]}


TEXT_INPUTS, IMAGE_INPUTS = _inputs(TEXT), _inputs(IMAGE_BASE64)
# Bare strings are texts, unless "modality" is "image": JSON Schema says so with one branch per modality.
BY_MODALITY = {
    "anyOf": [
        {"properties": {"input": TEXT_INPUTS, "modality": {"const": "text"}}},
        {"properties": {"input": IMAGE_INPUTS, "modality": {"const": "image"}}, "required": ["modality"]},
    ]
}


def _not_token_ids(value: Any) -> Any:
    """Token ids (a list of integers, or of lists of integers) are OpenAI's tokenizer's, not this model's."""
    if isinstance(value, list) and value and all(type(v) is int or isinstance(v, list) for v in value):
        if any(type(v) is int or (v and all(type(t) is int for t in v)) for v in value):  # bools are not ids
            raise invalid(
                "token ids are not supported: this model reads XLM-R tokens, not OpenAI's; send the texts "
                "(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))"
            )
    return value


def _dimensions(schema: dict[str, Any]) -> None:
    """May be left out; when sent, the model's embedding size (which ``openapi`` writes in)."""
    _optional(schema)
    schema[DIM] = True


class TextItem(BaseModel, extra="forbid"):
    text: str


class ImageItem(BaseModel, extra="forbid"):
    image: str


Item = str | TextItem | ImageItem


class EmbeddingsRequest(BaseModel, json_schema_extra=BY_MODALITY):
    input: Annotated[
        str | list[Item],
        BeforeValidator(_not_token_ids),
        counted("inputs"),  # runs first: a list of a million wrong items would cost pydantic an error for each
        WithJsonSchema({"anyOf": [TEXT_INPUTS, IMAGE_INPUTS], "description": "What to embed"}),
    ]
    model: Annotated[str, Field(max_length=256, description="Any name: this server embeds with the one it serves")]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[
        int, Field(description="The model's embedding size (no other is offered)", json_schema_extra=_dimensions)
    ] = None
    user: Annotated[str, Field(max_length=256, description="Ignored", json_schema_extra=_optional)] = None
    modality: Literal["text", "image"] = Field(
        "text", description="What the strings of input are: texts, or images (base64 or data: URIs)"
    )

    @model_validator(mode="after")
    def _limits(self, info: ValidationInfo) -> EmbeddingsRequest:
        items = self.items()
        checked(limits.check_count, items, "inputs", info.context)
        for i, (kind, value) in enumerate(items):
            if kind == "text":
                checked(limits.check_text, value, f"Input {i}", info.context)
            elif value[:8].lower().startswith(("http://", "https://")):
                raise invalid(f"Input {i}: images are not fetched from URLs; send the image as a data: URI")
        return self

    def items(self) -> list[tuple[Literal["text", "image"], str]]:
        """(modality, value) of each input, in order."""
        values = [self.input] if isinstance(self.input, str) else self.input
        out: list[tuple[Literal["text", "image"], str]] = []
        for value in values:
            if isinstance(value, TextItem):
                out.append(("text", value.text))
            elif isinstance(value, ImageItem):
                out.append(("image", value.image))
            else:
                out.append((self.modality, value))
        return out


# --- responses ---------------------------------------------------------------------------------------------------


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The unit-norm vector, or its float32 bytes in base64")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "altclip"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong")
    error: OpenAIError | None = Field(None, description="The same, as OpenAI's API reports errors")


# --- errors in both shapes -----------------------------------------------------------------------------------------


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for error statuses of these routes (both shapes of error body)."""
    descriptions = {**errors.DESCRIPTIONS, 400: "The body is not valid JSON, or its values cannot be used"}
    return {status: {"description": descriptions[status], "model": OpenAIErrorResponse} for status in statuses}


# --- the routes ----------------------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["OpenAI"])
EmbeddingsBody = Annotated[EmbeddingsRequest, Depends(body(EmbeddingsRequest))]
STARTED = int(time.time())


@router.post(
    "/embeddings",
    summary="OpenAI-compatible embeddings of texts and images",
    response_model=EmbeddingsResponse,
    responses=documented(400, 413, 415, 429, 504),
    openapi_extra=request_body(EmbeddingsRequest),
)
async def embeddings(service: ServiceDep, payload: EmbeddingsBody) -> EmbeddingsResponse:
    embedder = service.embedder
    if payload.dimensions is not None and payload.dimensions != embedder.dim:
        raise errors.InvalidInput(f"dimensions must be {embedder.dim}, this model's embedding size")
    items = payload.items()
    vectors, tokens = await _embed(service, items)
    data = [
        Embedding(index=i, embedding=_encode(v, payload.encoding_format)) for i, v in enumerate(vectors)
    ]  # fmt: skip
    return EmbeddingsResponse(
        data=data, model=service.model_name, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


@router.get("/models", summary="The model this server serves (OpenAI-compatible)", response_model=ModelList)
async def models(service: ServiceDep) -> ModelList:
    return ModelList(data=[_card(service)])


@router.get(
    "/models/{model_id:path}",
    summary="One model by id (OpenAI-compatible)",
    response_model=ModelCard,
    responses=documented(404),
)
async def model(service: ServiceDep, model_id: Annotated[str, Path(description="A model id")]) -> ModelCard:
    card = _card(service)
    if model_id != card.id:
        raise errors.NotFound(f"This server serves {card.id}, not {model_id}")
    return card


def _card(service: Service) -> ModelCard:
    return ModelCard(id=service.model_name, created=STARTED)


async def _embed(service: Service, items: list[tuple[str, str]]) -> tuple[np.ndarray, int]:
    """The embeddings of the inputs, in order (texts and images batched with the service's other requests), and the
    tokens the model read for them."""
    texts = [(i, value) for i, (kind, value) in enumerate(items) if kind == "text"]
    images = [(i, decode_base64(value, i)) for i, (kind, value) in enumerate(items) if kind == "image"]
    work = []
    if texts:
        work.append(service.embed_texts([t for _, t in texts]))
    if images:
        work.append(service.embed_images([data for _, data in images]))
    results = await together(*work)
    vectors = np.empty((len(items), service.embedder.dim), np.float32)
    for positions, result in zip([p for p in (texts, images) if p], results):
        vectors[[i for i, _ in positions]] = result
    tokens = len(images) * _image_tokens(service)
    if texts:
        tokens += sum(await run_in_threadpool(_text_tokens, service, [t for _, t in texts]))
    return vectors, tokens


def _text_tokens(service: Service, texts: list[str]) -> list[int]:
    """Tokens per text as the model reads them (the tokenizer's ids, special tokens included, after truncation)."""
    return [len(ids) for ids in service.embedder.processor.tokenizer(texts)["input_ids"]]


def _image_tokens(service: Service) -> int:
    """Tokens per image: the vision tower's patches and its class token."""
    vision = service.embedder.model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + 1


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
