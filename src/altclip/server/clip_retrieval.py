"""clip-retrieval's back-end API over the service's index, for its ``ClipClient`` and its clip-front page:
``POST /knn-service``, ``GET /indices-list`` and ``POST /metadata``, answering in clip-retrieval's shapes.

The index has one name, its folder's (``/indices-list``). A query is a text, an image (base64), or an
``embedding_input`` vector (normalised here; clip-retrieval uses it as given), in that order of precedence as in
clip-retrieval. Results are the index's images: ``id``, ``similarity`` and, for the first ``num_images`` of the
``num_result_ids`` results, the metadata ``url`` (the image's thumbnail on this server) and ``caption`` (its file
name). ``deduplicate`` drops every result whose embedding is within cosine 0.94 of a better one, as clip-retrieval
does (files with the same content are one result anyway). The URLs are the server's own (``public_url``, else the
address it listens on, else relative), never made from what a request's ``Host`` header says.

Not supported, documented and otherwise ignored: ``use_mclip`` (the text tower is multilingual already),
``use_safety_model``, ``use_violence_detector``, ``aesthetic_score`` and ``aesthetic_weight`` (no such models
here). Refused with 422: ``image_url`` (the server never fetches URLs) and ``modality: "text"`` (the index holds
images, no caption embeddings).

As clip-retrieval's back end, these endpoints read JSON whatever the content type (``ClipClient`` sends none,
clip-front sends text/plain); the limits, auth and batching are the service's. ``ClipClient`` and clip-front send
no credentials, so they work against a server without a token, and clip-front in a browser of another origin
needs ``--cors-origin``.
"""

import re
from enum import Enum
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, FiniteFloat, WithJsonSchema, model_validator

from altclip.server import body
from altclip.server.errors import NotFound, documented
from altclip.server.schemas import NON_BLANK, Fields, Says, decode_base64, refuse, strip
from altclip.server.service import Service, ServiceDep

DUPLICATE_COSINE = 0.94  # clip-retrieval's threshold for near duplicates
MOST_RESULTS = 1000  # as top_k of /v1/search
NAME = Annotated[str, Field(max_length=256)]  # the 404 of a name that is not the index's says which name it was

# --- requests ----------------------------------------------------------------------------------------------------

Ignored = Field(description="Accepted and ignored: not offered by this server")
Count = Annotated[int, Field(ge=1, le=MOST_RESULTS)]
IndexName = Annotated[NAME | None, Field(description="The index (GET /indices-list) [default: the one]")]


def _blank_is_none(text: Any) -> Any:
    """clip-retrieval treats an empty text as none."""
    return None if isinstance(text, str) and not re.search(NON_BLANK, text) else text


def _not_zero(vector: list[float]) -> list[float]:
    if not any(vector):
        raise refuse("embedding_input is all zeros: it has no direction to search in")
    return vector


def knn_request(f: Fields) -> type[BaseModel]:
    """The body of ``POST /knn-service`` for one deployment."""
    embedding = Annotated[
        list[FiniteFloat],
        Field(min_length=f.dim, max_length=f.dim, json_schema_extra={"not": {"items": {"const": 0}}}),
        Says(f"embedding_input must be {f.dim} finite numbers"),
    ]
    one_query = {"anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                           for name in ("text", "image", "embedding_input")]}  # fmt: skip

    class KnnRequest(BaseModel, json_schema_extra=one_query):
        text: Annotated[f.text | None, BeforeValidator(_blank_is_none),  # type: ignore[name-defined]  # made at run time
                        Field(description="Text to search for, in any language")] = None  # fmt: skip
        image: Annotated[f.base64_image | None, Field(description="Or an image to search with")] = None  # type: ignore[name-defined]  # made at run time
        image_url: Annotated[
            None, WithJsonSchema({"type": "null", "description": "Not supported: the server never fetches URLs"})
        ] = None
        embedding_input: Annotated[embedding | None, AfterValidator(lambda v: v and _not_zero(v)),
                                   Field(description="Or an embedding to search with (normalised here)")] = None  # fmt: skip
        modality: Annotated[
            Literal["image"], Field(description="Search the image embeddings (the index holds no caption embeddings)")
        ] = "image"
        num_images: Annotated[Count, Field(description="How many results get their metadata")] = 40
        num_result_ids: Annotated[Count | None, Field(description="How many results [default: num_images]")] = None
        indice_name: IndexName = None
        deduplicate: Annotated[bool, Field(description="Drop results within cosine 0.94 of a better one")] = False
        use_mclip: Annotated[bool | None, Ignored] = None
        use_safety_model: Annotated[bool | None, Ignored] = None
        use_violence_detector: Annotated[bool | None, Ignored] = None
        aesthetic_score: Annotated[int | NAME | None, Ignored] = None
        aesthetic_weight: Annotated[float | NAME | None, Ignored] = None

        @model_validator(mode="before")
        @classmethod
        def _refused(cls, data: Any) -> Any:
            if isinstance(data, dict):
                if data.get("image_url") is not None:
                    raise refuse("image_url is not supported: the server never fetches URLs; send the image")
                if data.get("modality") == "text":
                    raise refuse("modality 'text' is not supported: the index holds images, not captions")
            return data

        @model_validator(mode="after")
        def _one_query(self):
            if self.text is None and self.image is None and self.embedding_input is None:
                raise refuse("Send a text, an image or an embedding_input")
            if self.num_result_ids is None:
                self.num_result_ids = self.num_images
            return self

    return KnnRequest


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


def add_routes(router: APIRouter, fields: Fields, auth: list) -> None:
    knn: Any = knn_request(fields)  # the deployment's model, made at run time
    unauthorized = [401] if auth else []
    tags: list[str | Enum] = ["clip-retrieval"]

    async def indices_list(service: ServiceDep) -> list[str]:
        return [] if service.index is None else [index_name(service)]

    async def knn_service(service: ServiceDep, payload: knn) -> list[KnnResult]:
        _check_name(service, payload.indice_name)
        hits = await service.on_index(lambda index, q, k: index.search(q, k), await _query(service, payload),
                                      payload.num_result_ids)  # fmt: skip
        if payload.deduplicate and len(hits) > 1:
            vectors = await service.on_index(lambda index, ids: index.vectors(ids), [h.id for h in hits])
            hits = [hits[i] for i in unique_positions(vectors)]
        thumbnails = Thumbnails(router, service)
        return [KnnResult(id=h.id, similarity=h.score, **(thumbnails.metadata(h.id, h.path) if rank < payload.num_images else {}))
                for rank, h in enumerate(hits)]  # fmt: skip

    async def metadata(service: ServiceDep, payload: MetadataRequest) -> list[MetadataResult]:
        _check_name(service, payload.indice_name)
        paths = await service.on_index(_paths, payload.ids)
        thumbnails = Thumbnails(router, service)
        return [MetadataResult(id=i, metadata=thumbnails.metadata(i, paths[i])) for i in payload.ids if i in paths]

    router.add_api_route("/indices-list", indices_list, summary="The index this server searches (clip-retrieval)",
                         response_model=list[str], tags=tags, dependencies=auth,
                         responses=documented(*unauthorized))  # fmt: skip
    body.post(router, "/knn-service", knn_service, any_content_type=True,
              summary="Nearest images to a text, an image or an embedding (clip-retrieval)",
              response_model=list[KnnResult], response_model_exclude_none=True, tags=tags, dependencies=auth,
              responses=documented(400, 404, 413, 422, 429, 503, 504, *unauthorized))  # fmt: skip
    body.post(router, "/metadata", metadata, any_content_type=True,
              summary="The metadata of images by id (clip-retrieval)", response_model=list[MetadataResult], tags=tags,
              dependencies=auth, responses=documented(400, 404, 413, 422, 429, 504, *unauthorized))  # fmt: skip


def index_name(service: Service) -> str:
    """The index's name in clip-retrieval's API: its folder's."""
    assert service.settings.index is not None  # asked only of a server with an index
    return FilePath(service.settings.index).name or "index"


def _check_name(service: Service, name: str | None) -> None:
    if service.index is None:
        raise NotFound("This server has no index (start it with --index)")
    if name is not None and name != index_name(service):
        raise NotFound(f"No index named {name!r}; this server has {index_name(service)!r}")


async def _query(service: Service, payload: Any) -> np.ndarray:
    """The query embedding: of the text, else of the image, else the embedding given (normalised)."""
    if payload.text is not None:
        return await service.query_vector(strip(payload.text), None)
    if payload.image is not None:
        return await service.query_vector(None, decode_base64(payload.image, 0))
    vector = np.asarray(payload.embedding_input, dtype=np.float64)
    vector /= np.abs(vector).max()  # first to the largest magnitude, so the norm cannot overflow
    return (vector / np.linalg.norm(vector)).astype(np.float32)


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


class Thumbnails:
    """The metadata of results: each image's thumbnail URL, on the server's own address (``public_base``), and its
    file name."""

    def __init__(self, router: APIRouter, service: Service):
        self.router, self.base = router, public_base(service.settings)

    def metadata(self, file_id: int, path: str) -> dict[str, str]:
        url = self.base + self.router.url_path_for("thumbnail", file_id=str(file_id))
        return {"url": url, "caption": FilePath(path).name}


def public_base(settings: Any) -> str:
    """Where clients reach this server, from its settings alone: ``public_url``; else the address it listens on
    (``http://host:port``); "" (URLs relative to the server) when it listens on every interface, which is no
    address a client can use."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::") or settings.port == 0:
        return ""
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
