"""clip-retrieval's back-end API over the service's index, for its ``ClipClient`` and its clip-front page:
``POST /knn-service``, ``GET /indices-list`` and ``POST /metadata``, answering in clip-retrieval's shapes.

The index has one name, its folder's (``/indices-list``). A query is a text, an image (base64), or an
``embedding_input`` vector (normalised here; clip-retrieval uses it as given), in that order of precedence as in
clip-retrieval. Results are the index's images: ``id``, ``similarity`` and, for the first ``num_images`` of the
``num_result_ids`` results, the metadata ``url`` (the image's thumbnail on this server) and ``caption`` (its file
name). ``deduplicate`` drops every result whose embedding is within cosine 0.94 of a better one, as clip-retrieval
does (files with the same content are one result anyway).

Not supported, documented and otherwise ignored: ``use_mclip`` (the text tower is multilingual already),
``use_safety_model``, ``use_violence_detector``, ``aesthetic_score`` and ``aesthetic_weight`` (no such models
here). Refused with 422: ``image_url`` (the server never fetches URLs) and ``modality: "text"`` (the index holds
images, no caption embeddings).

As clip-retrieval's back end, these endpoints read JSON whatever the content type (``ClipClient`` sends none,
clip-front sends text/plain); the limits, auth and batching are the service's. ``ClipClient`` and clip-front send
no credentials, so they work against a server without a token, and clip-front in a browser of another origin
needs ``--cors-origin``.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, WithJsonSchema, model_validator

from altclip.server import limits
from altclip.server.errors import InvalidInput, NotFound
from altclip.server.inputs import body
from altclip.server.limits import NON_BLANK
from altclip.server.openapi import DIM, errors, request_body
from altclip.server.schemas import IMAGE_BASE64, TEXT, _optional, checked, decode_base64, invalid, strip
from altclip.server.service import Service, ServiceDep

DUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for near duplicates
MOST_RESULTS = 1000  # as top_k of /v1/search
MOST_DIMENSIONS = 4096  # more than any model's embedding size: an embedding_input's length, checked before its numbers

# --- requests ----------------------------------------------------------------------------------------------------

EMBEDDING = {"type": "array", "items": {"type": "number"}, DIM: True}
# At least one of the three query fields, not null (clip-retrieval takes the first in this order).
ONE_QUERY = {
    "anyOf": [
        {"required": ["text"], "properties": {"text": TEXT}},
        {"required": ["image"], "properties": {"image": IMAGE_BASE64}},
        {"required": ["embedding_input"], "properties": {"embedding_input": EMBEDDING}},
    ]
}


def _nullable(schema: dict[str, Any], description: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}], "description": description})


def _sized(value: Any) -> Any:
    """A list of a million wrong numbers would cost pydantic an error for each: its length is checked first (the
    exact length, the model's embedding size, with the numbers in ``_query``)."""
    if isinstance(value, list) and len(value) > MOST_DIMENSIONS:
        raise invalid(f"{len(value):,} numbers; no embedding has over {MOST_DIMENSIONS:,}")
    return value


Ignored = Field(description="Accepted and ignored: not offered by this server")
Count = Annotated[int, Field(ge=1, le=MOST_RESULTS)]
# bounded as OpenAI's model names are: the 404 of a name that is not the index's says which name it was
IndexName = Annotated[str | None, Field(max_length=256, description="The index (GET /indices-list) [default: the one]")]


class KnnRequest(BaseModel, json_schema_extra=ONE_QUERY):
    text: Annotated[str | None, _nullable(TEXT, "Text to search for, in any language")] = None
    image: Annotated[str | None, _nullable(IMAGE_BASE64, "Or an image to search with")] = None
    image_url: Annotated[
        None, WithJsonSchema({"type": "null", "description": "Not supported: the server never fetches URLs"})
    ] = None
    embedding_input: Annotated[
        list[float] | None,
        BeforeValidator(_sized),
        _nullable(EMBEDDING, "Or an embedding to search with (normalised here)"),
    ] = None
    modality: Annotated[
        Literal["image"], Field(description="Search the image embeddings (the index holds no caption embeddings)")
    ] = "image"
    num_images: Annotated[Count, Field(description="How many results get their metadata")] = 40
    num_result_ids: Annotated[
        Count, Field(description="How many results [default: num_images]", json_schema_extra=_optional)
    ] = None
    indice_name: IndexName = None
    deduplicate: Annotated[bool, Field(description="Drop results within cosine 0.94 of a better one")] = False
    use_mclip: Annotated[bool | None, Ignored] = None
    use_safety_model: Annotated[bool | None, Ignored] = None
    use_violence_detector: Annotated[bool | None, Ignored] = None
    aesthetic_score: Annotated[int | str | None, Ignored] = None
    aesthetic_weight: Annotated[float | str | None, Ignored] = None

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("image_url") is not None:
                raise invalid("image_url is not supported: the server never fetches URLs; send the image")
            if data.get("modality") == "text":
                raise invalid("modality 'text' is not supported: the index holds images, not captions")
        return data

    @model_validator(mode="after")
    def _one_query(self, info: ValidationInfo) -> KnnRequest:
        if self.text is not None and not NON_BLANK.search(self.text):
            self.text = None  # clip-retrieval treats an empty text as none
        if self.text is not None:
            checked(limits.check_text, self.text, "The text", info.context)
        elif self.image is None and self.embedding_input is None:
            raise invalid("Send a text, an image or an embedding_input")
        if self.num_result_ids is None:
            self.num_result_ids = self.num_images
        return self


class MetadataRequest(BaseModel):
    ids: Annotated[list[Annotated[int, Field(ge=0, le=2**53 - 1)]], Field(max_length=MOST_RESULTS)]
    indice_name: IndexName = None


# --- responses ---------------------------------------------------------------------------------------------------


class Metadata(BaseModel):
    url: str = Field(description="The image's thumbnail on this server")
    caption: str = Field(description="The image's file name")


class KnnResult(BaseModel):
    id: int = Field(description="The image's id in the index")
    similarity: float = Field(description="Cosine similarity to the query")
    url: str | None = Field(None, description="For the first num_images results: the thumbnail")
    caption: str | None = Field(None, description="For the first num_images results: the file name")


class MetadataResult(BaseModel):
    id: int
    metadata: Metadata


# --- the routes ----------------------------------------------------------------------------------------------------

router = APIRouter(tags=["clip-retrieval"])
KnnBody = Annotated[KnnRequest, Depends(body(KnnRequest, any_content_type=True))]
MetadataBody = Annotated[MetadataRequest, Depends(body(MetadataRequest, any_content_type=True))]


@router.get("/indices-list", summary="The index this server searches (clip-retrieval)", response_model=list[str])
async def indices_list(service: ServiceDep) -> list[str]:
    return [] if service.index is None else [index_name(service)]


@router.post(
    "/knn-service",
    summary="Nearest images to a text, an image or an embedding (clip-retrieval)",
    response_model=list[KnnResult],
    response_model_exclude_none=True,
    responses=errors(400, 404, 413, 422, 429, 504),
    openapi_extra=request_body(KnnRequest),
)
async def knn_service(request: Request, service: ServiceDep, payload: KnnBody) -> list[KnnResult]:
    _check_name(service, payload.indice_name)
    hits = await service.on_index(lambda index, q, k: index.search(q, k), await _query(service, payload),
                                  payload.num_result_ids)  # fmt: skip
    if payload.deduplicate and len(hits) > 1:
        vectors = await service.on_index(lambda index, ids: index.vectors(ids), [h.id for h in hits])
        hits = [hits[i] for i in unique_positions(vectors)]
    return [
        KnnResult(id=h.id, similarity=h.score, **(_metadata(request, h.id, h.path) if rank < payload.num_images else {}))
        for rank, h in enumerate(hits)
    ]  # fmt: skip


@router.post(
    "/metadata",
    summary="The metadata of images by id (clip-retrieval)",
    response_model=list[MetadataResult],
    responses=errors(400, 404, 413, 422),
    openapi_extra=request_body(MetadataRequest),
)
async def metadata(request: Request, service: ServiceDep, payload: MetadataBody) -> list[MetadataResult]:
    _check_name(service, payload.indice_name)
    paths = await service.on_index(_paths, payload.ids)
    return [MetadataResult(id=i, metadata=_metadata(request, i, paths[i])) for i in payload.ids if i in paths]


def index_name(service: Service) -> str:
    """The index's name in clip-retrieval's API: its folder's."""
    return FilePath(service.settings.index).name or "index"


def _check_name(service: Service, name: str | None) -> None:
    if service.index is None:
        raise NotFound("This server has no index (start it with --index)")
    if name is not None and name != index_name(service):
        raise NotFound(f"No index named {name!r}; this server has {index_name(service)!r}")


async def _query(service: Service, payload: KnnRequest) -> np.ndarray:
    """The query embedding: of the text, else of the image, else the embedding given (normalised)."""
    if payload.text is not None:
        return (await service.embed_texts([strip(payload.text)]))[0]
    if payload.image is not None:
        return (await service.embed_images([decode_base64(payload.image, 0)]))[0]
    vector = np.asarray(payload.embedding_input, dtype=np.float64)
    if vector.shape != (service.embedder.dim,) or not np.isfinite(vector).all():
        raise InvalidInput(f"embedding_input must be {service.embedder.dim} finite numbers")
    vector /= np.abs(vector).max() or 1.0  # first to the largest magnitude, so the norm cannot overflow
    return (vector / (np.linalg.norm(vector) or 1.0)).astype(np.float32)


def unique_positions(vectors: np.ndarray, threshold: float = DUPLICATE_COSINE) -> list[int]:
    """Positions of ranked results to keep: the best of each group linked by cosine over ``threshold`` (clip-
    retrieval's connected components of near duplicates)."""
    parent = list(range(len(vectors)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(vectors @ vectors.T > threshold, 1)):
        a, b = root(int(i)), root(int(j))
        parent[max(a, b)] = min(a, b)  # a group is represented by its best-ranked result
    return [i for i in range(len(vectors)) if root(i) == i]


def _paths(index, ids: list[int]) -> dict[int, str]:
    found = {i: index.display_name(i) for i in set(ids)}
    return {i: name for i, name in found.items() if name is not None}


def _metadata(request: Request, file_id: int, path: str) -> dict[str, str]:
    return {"url": str(request.url_for("thumbnail", file_id=file_id)), "caption": FilePath(path).name}
