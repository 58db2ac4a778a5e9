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
patches and class token; the same count the service admits the request by. A request takes up to ``max_items``
inputs (2,048 by default, as OpenAI), bounded by their characters and tokens. Requests go through the same body
parsing, limits, auth and batching as ``/v1/embed/*``.
Errors keep the service's ``{"detail": ...}`` and add OpenAI's ``{"error": {"message", "type", "param",
"code"}}``, which the SDK reads.
"""

import base64
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path
from pydantic import AfterValidator, BaseModel, BeforeValidator, Discriminator, Field, Tag, model_validator

from altclip.server import body
from altclip.server.errors import NotFound, documented
from altclip.server.schemas import Fields, Says, decode_base64, refuse
from altclip.server.service import Service, ServiceDep

STARTED = int(time.time())
NAME = Annotated[str, Field(max_length=256)]  # model and user names; a 404 says which name it was

# --- requests ----------------------------------------------------------------------------------------------------


def _not_fetched(image: str) -> str:
    if image[:8].lower().startswith(("http://", "https://")):
        raise refuse("images are not fetched from URLs; send the image as a data: URI")
    return image


def _item_kind(value: Any) -> str:
    if not isinstance(value, dict):
        return "a string"
    return "an image item" if "image" in value else "a text item"


def embeddings_request(f: Fields) -> Any:
    """The body of ``POST /v1/embeddings`` for one deployment: texts (bare strings, unless ``modality`` is
    ``image``, as infinity-emb reads them) and typed items, each checked against the deployment's limits."""
    # The deployment's field types, made at run time from its settings (so Any to a static type checker).
    # (capitalised: EmbeddingsImageItem annotates "image")
    Text: Any = f.text
    Image: Any = Annotated[f.base64_image, AfterValidator(_not_fetched)]

    class EmbeddingsTextItem(BaseModel, extra="forbid"):
        text: Text

    class EmbeddingsImageItem(BaseModel, extra="forbid"):
        image: Image

    def not_token_ids(value: Any) -> Any:
        """Token ids (a list of integers, or of lists of integers) are OpenAI's tokenizer's, not this model's. A list
        over the limit is left to the limit, which refuses it without looking at its items."""
        if isinstance(value, list) and 0 < len(value) <= f.max_items:
            if all(type(v) is int or isinstance(v, list) for v in value) and any(
                type(v) is int or (v and all(type(t) is int for t in v))
                for v in value  # bools are not ids
            ):
                raise refuse("token ids are not supported: this model reads XLM-R tokens, not OpenAI's; send the "
                             "texts (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))")  # fmt: skip
        return value

    def inputs(string: Any, description: str) -> Any:
        item = Annotated[
            Annotated[string, Tag("a string")] | Annotated[EmbeddingsTextItem, Tag("a text item")]
            | Annotated[EmbeddingsImageItem, Tag("an image item")],
            Discriminator(_item_kind),
        ]  # fmt: skip
        one_or_list = Discriminator(lambda value: "a list" if isinstance(value, list) else "a string")
        listed: Any = Annotated[f.items(item), BeforeValidator(not_token_ids), Tag("a list")]
        return Annotated[Annotated[string, Tag("a string")] | listed, one_or_list, Field(description=description)]

    TextInputs: Any = inputs(f.text, "What to embed: texts, or typed items of texts and images")
    ImageInputs: Any = inputs(Image, "What to embed: images (base64 or data: URIs), or typed items of texts and images")

    class EmbeddingsRequest(BaseModel):
        if TYPE_CHECKING:  # fields of each subclass
            input: str | list[Any]
            modality: Literal["text", "image"]

        model: Annotated[NAME, Field(description="Any name: this server embeds with the one it serves")]
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: Annotated[
            int | None,
            Field(strict=True, ge=f.dim, le=f.dim, description="The model's embedding size (no other is offered)"),
            Says(f"dimensions must be {f.dim}, this model's embedding size"),
        ] = None
        user: Annotated[NAME | None, Field(description="Ignored")] = None

        @model_validator(mode="after")
        def _chars(self):
            f.chars([value for kind, value in self.items() if kind == "text"], "texts")  # before they are tokenized
            return self

        def items(self) -> list[tuple[Literal["text", "image"], str]]:
            """(modality, value) of each input, in order."""
            values = [self.input] if isinstance(self.input, str) else self.input
            out: list[tuple[Literal["text", "image"], str]] = []
            for value in values:
                if isinstance(value, EmbeddingsTextItem):
                    out.append(("text", value.text))
                elif isinstance(value, EmbeddingsImageItem):
                    out.append(("image", value.image))
                else:
                    out.append((self.modality, value))
            return out

    class TextEmbeddingsRequest(EmbeddingsRequest):
        input: TextInputs
        modality: Annotated[Literal["text"], Field(description="What the strings of input are: texts")] = "text"

    class ImageEmbeddingsRequest(EmbeddingsRequest):
        input: ImageInputs
        modality: Annotated[Literal["image"], Field(description="What the strings of input are: images")]

    def modality(value: Any) -> str:
        return (
            "images as strings" if isinstance(value, dict) and value.get("modality") == "image" else "texts as strings"
        )

    return Annotated[Annotated[TextEmbeddingsRequest, Tag("texts as strings")]
                     | Annotated[ImageEmbeddingsRequest, Tag("images as strings")],
                     Discriminator(modality)]  # fmt: skip


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


# --- the routes ----------------------------------------------------------------------------------------------------


def add_routes(router: APIRouter, fields: Fields, auth: list) -> None:
    request: Any = embeddings_request(fields)  # the deployment's body type, made at run time
    unauthorized = [401] if auth else []

    async def embeddings(service: ServiceDep, payload: request) -> EmbeddingsResponse:
        items = payload.items()
        vectors, tokens = await _embed(service, items)
        data = [Embedding(index=i, embedding=_encode(v, payload.encoding_format)) for i, v in enumerate(vectors)]
        return EmbeddingsResponse(data=data, model=service.model_name,
                                  usage=Usage(prompt_tokens=tokens, total_tokens=tokens))  # fmt: skip

    async def models(service: ServiceDep) -> ModelList:
        return ModelList(data=[_card(service)])

    async def model(service: ServiceDep, model_id: Annotated[NAME, Path(description="A model id")]) -> ModelCard:
        card = _card(service)
        if model_id != card.id:
            raise NotFound(f"This server serves {card.id}, not {model_id}")
        return card

    body.post(router, "/v1/embeddings", embeddings, summary="OpenAI-compatible embeddings of texts and images",
              response_model=EmbeddingsResponse, tags=["OpenAI"], dependencies=auth,
              responses=documented(400, 413, 415, 429, 504, *unauthorized, openai=True))  # fmt: skip
    router.add_api_route("/v1/models", models, summary="The model this server serves (OpenAI-compatible)",
                         response_model=ModelList, tags=["OpenAI"], dependencies=auth,
                         responses=documented(429, 504, *unauthorized, openai=True))  # fmt: skip
    router.add_api_route("/v1/models/{model_id:path}", model, summary="One model by id (OpenAI-compatible)",
                         response_model=ModelCard, tags=["OpenAI"], dependencies=auth,
                         responses=documented(400, 404, 429, 504, *unauthorized, openai=True))  # fmt: skip


def _card(service: Service) -> ModelCard:
    return ModelCard(id=service.model_name, created=STARTED)


async def _embed(service: Service, items: list[tuple[str, str]]) -> tuple[np.ndarray, int]:
    """The embeddings of the inputs, in order (texts and images batched with the service's other requests, at
    once), and the tokens the model read for them."""
    texts = [(i, value) for i, (kind, value) in enumerate(items) if kind == "text"]
    images = [(i, decode_base64(value, i)) for i, (kind, value) in enumerate(items) if kind == "image"]
    embedded = await service.embed([t for _, t in texts], [data for _, data in images])
    vectors = np.empty((len(items), service.embedder.dim), np.float32)
    for positions, result in ((texts, embedded.texts), (images, embedded.images)):
        if positions:
            vectors[[i for i, _ in positions]] = result
    return vectors, embedded.tokens


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
