"""The ``/v1`` API: embeddings, zero-shot classification, similarity, index search, thumbnails and what the server
runs, all behind the bearer token when the server has one (the page learns that it needs one from a 401).

``add_routes`` adds them to an app for one deployment: their bodies are that deployment's request models
(``schemas.requests``). The routes that take uploads have a route of their own for multipart forms at the same
path (``body.post``)."""

from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Path
from fastapi.responses import Response

from altclip.server import body
from altclip.server.errors import documented
from altclip.server.schemas import (
    ClassifyResponse,
    EmbeddingsResponse,
    Fields,
    IndexInfo,
    InfoResponse,
    Limits,
    SearchResponse,
    SimilarityResponse,
    requests,
)
from altclip.server.service import ServiceDep

BODY_ERRORS = (400, 413, 415, 422, 429, 504)  # every endpoint that reads a body; 429 and 504: it is admitted


class JPEGResponse(Response):
    media_type = "image/jpeg"


def add_routes(router: APIRouter, fields: Fields, auth: list) -> None:
    api = requests(fields)
    common: dict[str, Any] = {"dependencies": auth, "responses": documented(*BODY_ERRORS, *([401] if auth else []))}

    async def embed_text(service: ServiceDep, payload: api.texts) -> EmbeddingsResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        vectors = (await service.embed(payload.texts)).texts
        return EmbeddingsResponse(model=service.model_name, dim=service.embedder.dim, embeddings=vectors.tolist())

    async def embed_image(service: ServiceDep, payload: api.images) -> EmbeddingsResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        vectors = (await service.embed(images=payload.image_bytes())).images
        return EmbeddingsResponse(model=service.model_name, dim=service.embedder.dim, embeddings=vectors.tolist())

    async def embed_image_upload(service: ServiceDep, form: Annotated[api.images_form, File()]) -> EmbeddingsResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        return await embed_image(service, form)

    async def classify(service: ServiceDep, payload: api.classify) -> ClassifyResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        ranked = await service.classify(payload.image_bytes(), payload.labels, payload.prompts())
        return ClassifyResponse(labels=ranked)

    async def classify_upload(service: ServiceDep, form: Annotated[api.classify_form, File()]) -> ClassifyResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        return await classify(service, form)

    async def similarity(service: ServiceDep, payload: api.similarity) -> SimilarityResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        scores = await service.similarity(payload.texts, payload.image_bytes())
        return SimilarityResponse(**{key: value.tolist() for key, value in scores.items()})

    async def search(service: ServiceDep, payload: api.search) -> SearchResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        hits = await service.search(payload.query, payload.image_bytes(), payload.top_k)
        results = [{"id": h.id, "score": h.score, "name": FilePath(h.path).name, "duplicates": len(h.duplicates)}
                   for h in hits]  # fmt: skip
        return SearchResponse(results=results)

    async def search_upload(service: ServiceDep, form: Annotated[api.search_form, File()]) -> SearchResponse:  # type: ignore[name-defined]  # the deployment's model, made at run time
        return await search(service, form)

    async def thumbnail(service: ServiceDep, file_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> JPEGResponse:
        data = await service.thumbnail(file_id)
        return JPEGResponse(data, headers={"Cache-Control": "private, max-age=3600"})

    async def info(service: ServiceDep) -> InfoResponse:
        settings, embedder = service.settings, service.embedder
        images = await service.indexed_images()
        return InfoResponse(
            model=service.model_name,
            dim=embedder.dim,
            index=None if images is None else IndexInfo(images=images),
            auth=settings.token is not None,
            limits=Limits(**{name: getattr(settings, name) for name in Limits.model_fields}),
        )

    body.post(router, "/v1/embed/text", embed_text, summary="Unit-norm embeddings of texts",
              response_model=EmbeddingsResponse, **common)  # fmt: skip
    body.post(router, "/v1/embed/image", embed_image, upload=embed_image_upload,
              summary="Unit-norm embeddings of images", response_model=EmbeddingsResponse, **common)  # fmt: skip
    body.post(router, "/v1/classify", classify, upload=classify_upload, response_model=ClassifyResponse,
              summary="Zero-shot classification of one image against labels", **common)  # fmt: skip
    body.post(router, "/v1/similarity", similarity, summary="Image-text similarity matrix",
              response_model=SimilarityResponse, **common)  # fmt: skip
    search_errors = {**common, "responses": {**common["responses"], **documented(404, 503)}}
    body.post(router, "/v1/search", search, upload=search_upload, summary="Search the index by text or by image",
              response_model=SearchResponse, **search_errors)  # fmt: skip
    router.add_api_route(
        "/v1/thumbnails/{file_id}",
        thumbnail,
        summary="A JPEG thumbnail of an indexed image, by its id",
        response_class=JPEGResponse,
        dependencies=auth,
        responses={200: {"content": {"image/jpeg": {}}, "description": "The thumbnail"},
                   **documented(404, 422, 429, 504, *([401] if auth else []))},
    )  # fmt: skip
    router.add_api_route("/v1/info", info, summary="The model, the index, and whether the API needs a token",
                         response_model=InfoResponse, dependencies=auth,
                         responses=documented(429, 504, *([401] if auth else [])))  # fmt: skip
