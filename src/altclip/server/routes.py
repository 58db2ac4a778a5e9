"""The ``/v1`` API: embeddings, zero-shot classification, similarity, index search, thumbnails and what the server
runs, all behind the bearer token when the server has one (the page learns that it needs one from a 401)."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

from altclip.server.inputs import body
from altclip.server.openapi import errors, request_body
from altclip.server.schemas import (
    ClassifyForm,
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingsResponse,
    ImagesForm,
    ImagesRequest,
    IndexInfo,
    InfoResponse,
    Limits,
    SearchForm,
    SearchRequest,
    SearchResponse,
    SimilarityRequest,
    SimilarityResponse,
    TextsRequest,
)
from altclip.server.service import ServiceDep

router = APIRouter(prefix="/v1")
TextsBody = Annotated[TextsRequest, Depends(body(TextsRequest))]
ImagesBody = Annotated[ImagesRequest | ImagesForm, Depends(body(ImagesRequest, ImagesForm))]
ClassifyBody = Annotated[ClassifyRequest | ClassifyForm, Depends(body(ClassifyRequest, ClassifyForm))]
SimilarityBody = Annotated[SimilarityRequest, Depends(body(SimilarityRequest))]
SearchBody = Annotated[SearchRequest | SearchForm, Depends(body(SearchRequest, SearchForm))]
BODY_ERRORS = (400, 413, 415, 422)  # every endpoint that reads a body (429 and 504: openapi.document adds them)


class JPEGResponse(Response):
    media_type = "image/jpeg"


@router.post(
    "/embed/text",
    summary="Unit-norm embeddings of texts",
    response_model=EmbeddingsResponse,
    responses=errors(*BODY_ERRORS),
    openapi_extra=request_body(TextsRequest),
)
async def embed_text(service: ServiceDep, payload: TextsBody) -> EmbeddingsResponse:
    vectors = await service.embed_texts(payload.texts)
    return EmbeddingsResponse(model=service.model_name, dim=service.embedder.dim, embeddings=vectors.tolist())


@router.post(
    "/embed/image",
    summary="Unit-norm embeddings of images",
    response_model=EmbeddingsResponse,
    responses=errors(*BODY_ERRORS),
    openapi_extra=request_body(ImagesRequest, ImagesForm),
)
async def embed_image(service: ServiceDep, payload: ImagesBody) -> EmbeddingsResponse:
    vectors = await service.embed_images(payload.image_bytes())
    return EmbeddingsResponse(model=service.model_name, dim=service.embedder.dim, embeddings=vectors.tolist())


@router.post(
    "/classify",
    summary="Zero-shot classification of one image against labels",
    response_model=ClassifyResponse,
    responses=errors(*BODY_ERRORS),
    openapi_extra=request_body(ClassifyRequest, ClassifyForm),
)
async def classify(service: ServiceDep, payload: ClassifyBody) -> ClassifyResponse:
    ranked = await service.classify(payload.image_bytes()[0], payload.labels, payload.templates)
    return ClassifyResponse(labels=ranked)


@router.post(
    "/similarity",
    summary="Image-text similarity matrix",
    response_model=SimilarityResponse,
    responses=errors(*BODY_ERRORS),
    openapi_extra=request_body(SimilarityRequest),
)
async def similarity(service: ServiceDep, payload: SimilarityBody) -> SimilarityResponse:
    scores = await service.similarity(payload.texts, payload.image_bytes())
    return SimilarityResponse(**{key: value.tolist() for key, value in scores.items()})


@router.post(
    "/search",
    summary="Search the index by text or by image",
    response_model=SearchResponse,
    responses=errors(*BODY_ERRORS, 404),
    openapi_extra=request_body(SearchRequest, SearchForm),
)
async def search(service: ServiceDep, payload: SearchBody) -> SearchResponse:
    hits = await service.search(payload.query, payload.image_bytes(), payload.top_k)
    results = [
        {"id": h.id, "score": h.score, "name": FilePath(h.path).name, "duplicates": len(h.duplicates)} for h in hits
    ]
    return SearchResponse(results=results)


@router.get(
    "/thumbnails/{file_id}",
    summary="A JPEG thumbnail of an indexed image, by its id",
    response_class=JPEGResponse,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The thumbnail"}, **errors(404, 422)},
)
async def thumbnail(service: ServiceDep, file_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> JPEGResponse:
    data = await service.thumbnail(file_id)
    return JPEGResponse(data, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/info", summary="The model, the index, and whether the API needs a token", response_model=InfoResponse)
async def info(service: ServiceDep) -> InfoResponse:
    settings, embedder = service.settings, service.embedder
    images = await service.indexed_images()
    return InfoResponse(
        model=service.model_name,
        dim=embedder.dim if embedder else None,
        index=None if images is None else IndexInfo(images=images),
        auth=settings.token is not None,
        limits=Limits(**{name: getattr(settings, name) for name in Limits.model_fields}),
    )
