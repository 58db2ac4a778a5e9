"""The service's routes in process (httpx's ASGI transport; no server, no sockets): every route's body carries the
deployment's limits, and the regressions of issue 21 (items 5, 7, 8, 10) and issue 23 (item 12's counting)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from altclip.index import ImageIndex
from altclip.server import ServerSettings
from altclip.server.body import JSONRoute, UploadRoute
from serving import in_process, running_server, until
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
CAT = (PHOTOS / "cat.jpg").read_bytes()
# Limits no default has, so that a bound in the document is this deployment's and no other
ODD = dict(max_items=7, max_text_chars=123, max_body_bytes=54_321)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("routes")
    make_images(root / "photos", 3)
    (root / "photos" / "cat.jpg").write_bytes(CAT)
    with ImageIndex(root / "index") as index:
        index.update([root / "photos"], embedder)
    return root / "index"


@pytest.fixture(scope="module")
def served(embedder, index_dir):
    with in_process(ServerSettings(index=str(index_dir), **ODD), embedder) as app:
        yield app


def schemas_in(node, document: dict):
    """Every schema within ``node``, ``$ref``s followed."""
    seen, stack = set(), [node]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rpartition("/")[2]
                if name not in seen:
                    seen.add(name)
                    stack.append(document["components"]["schemas"][name])
                continue
            yield node
            stack.extend(v for k, v in node.items() if k not in ("enum", "const", "examples", "default"))


def test_every_route_body_carries_the_deployments_limits(served, embedder):
    """Every route that takes a body reads it through the service's route classes (JSON bounded before parsing,
    forms counted as parsed), and its body, as FastAPI validates and documents it, bounds every list by this
    deployment's max_items (or the model's embedding size, or the 1,000 results of a search) and every string by
    its max_text_chars (or 256 for names, or the body for images): a route given a plain body of its own would
    show here unbounded."""
    document = served.get("/openapi.json").json()
    body_routes = [r for r in served.app.routes if isinstance(r, APIRoute) and r.body_field is not None]
    assert {r.path for r in body_routes} >= {"/v1/embed/text", "/v1/classify", "/v1/embeddings", "/knn-service"}
    for route in body_routes:
        assert isinstance(route, (JSONRoute, UploadRoute)), route.path
    documented = {path for path, ops in document["paths"].items() for op in ops.values() if "requestBody" in op}
    assert documented == {r.path for r in body_routes}
    lists, strings = {ODD["max_items"], embedder.dim, 1000}, {ODD["max_text_chars"], 256, ODD["max_body_bytes"]}
    bounded = 0
    for path in documented:
        for method, operation in document["paths"][path].items():
            for media, content in operation["requestBody"]["content"].items():
                for schema in schemas_in(content["schema"], document):
                    where = f"{method} {path} ({media}): {json.dumps(schema)[:200]}"
                    if schema.get("type") == "array":
                        assert schema.get("maxItems") in lists, where
                        bounded += 1
                    if schema.get("type") == "string" and "enum" not in schema and "const" not in schema:
                        assert schema.get("maxLength") in strings or schema.get("format") == "binary", where
                        bounded += 1
    assert bounded > 30
    texts = document["components"]["schemas"]["TextsRequest"]["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (7, 123)


class Plain(BaseModel):
    texts: list[str]


async def plain(body: Plain) -> dict:
    return {}


def test_an_unbounded_route_would_be_seen(embedder):
    """The check above, on an app given one more route (read through the service's JSON route class, even) whose
    body is a plain model: it finds the unbounded list."""
    with in_process(ServerSettings(**ODD), embedder) as app:
        app.app.router.add_api_route("/v1/plain", plain, methods=["POST"], route_class_override=JSONRoute)
        app.app.openapi_schema = None
        with pytest.raises(AssertionError, match="v1/plain"):
            test_every_route_body_carries_the_deployments_limits(app, embedder)


# --- issue 21 -------------------------------------------------------------------------------------------------------


def test_21_5_a_deeply_nested_labels_field_is_a_400_not_a_500(served, caplog):
    with caplog.at_level(logging.ERROR):
        r = served.post("/v1/classify", files={"image": ("c.jpg", CAT)}, data={"labels": "[" * 3000})
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    r = served.post("/v1/classify", files={"image": ("c.jpg", CAT)}, data={"labels": '["cat", "dog"]'})
    assert r.status_code == 200


def test_21_7_result_urls_never_come_from_the_host_header(embedder, index_dir):
    query = {"text": "cat", "num_images": 3}
    evil = {"Host": "evil.example"}
    for settings, base in [
        (ServerSettings(index=str(index_dir)), "http://127.0.0.1:8000"),  # where it listens
        (ServerSettings(index=str(index_dir), public_url="https://images.example/altclip/"), "https://images.example/altclip"),
        (ServerSettings(index=str(index_dir), host="0.0.0.0"), ""),  # every interface: relative
    ]:  # fmt: skip
        with in_process(settings, embedder) as app:
            results = app.post("/knn-service", json=query, headers=evil).json()
            metadata = app.post("/metadata", json={"ids": [r["id"] for r in results]}, headers=evil).json()
        urls = [r["url"] for r in results] + [m["metadata"]["url"] for m in metadata]
        assert len(urls) == 6 and all(url == f"{base}/v1/thumbnails/{url.rpartition('/')[2]}" for url in urls), urls
        assert not any("evil" in url for url in urls)


def test_21_8_an_all_zero_embedding_is_refused(served, embedder):
    r = served.post("/knn-service", json={"embedding_input": [0.0] * embedder.dim})
    assert r.status_code == 422 and "all zeros" in r.json()["detail"]
    r = served.post("/knn-service", json={"embedding_input": [0.0] * (embedder.dim - 1) + [1e-30]})
    assert r.status_code == 200 and len(r.json()) == 4


@pytest.mark.parametrize("dimensions", ["16", 16.0, True, 15])
def test_21_10_dimensions_must_be_the_integer(served, dimensions):
    r = served.post("/v1/embeddings", json={"model": "m", "input": "cat", "dimensions": dimensions})
    assert r.status_code == 400 and r.json()["error"]["message"] == "dimensions must be 16, this model's embedding size"
    assert served.post("/v1/embeddings", json={"model": "m", "input": "cat", "dimensions": 16}).status_code == 200


def test_21_10_a_long_model_id_is_not_echoed(served):
    r = served.get("/v1/models/" + "x" * 60_000)
    assert r.status_code in (400, 404) and len(r.content) < 1000
    assert "x" * 300 not in r.text


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/v1/info", "/v1/models", "/openapi.json", "/docs",
                                  "/redoc", "/static/app.js", "/indices-list"])  # fmt: skip
def test_21_10_head_is_get_without_a_body(served, path):
    get, head = served.get(path), served.head(path)
    assert get.status_code == head.status_code == 200 and get.content and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_21_10_head_on_a_thumbnail_and_not_on_post_routes(served):
    file_id = served.post("/v1/search", json={"query": "cat", "top_k": 1}).json()["results"][0]["id"]
    head = served.head(f"/v1/thumbnails/{file_id}")
    assert head.status_code == 200 and head.headers["content-type"] == "image/jpeg" and head.content == b""
    assert served.head("/v1/embed/text").status_code == 405


# --- issue 23, item 12 ----------------------------------------------------------------------------------------------


def test_23_12_pages_answered_whole_are_not_counted_as_clients_gone(embedder, caplog):
    """A real server (the disconnect that follows a sent answer is the point): the page, the docs and their files
    are 200s in /metrics, and nothing is logged as a client gone."""
    import httpx

    pages = ["/", "/docs", "/redoc", "/static/app.js", "/static/docs/swagger-ui.css", "/openapi.json"]
    with caplog.at_level(logging.INFO, logger="altclip.server"), running_server(ServerSettings(), embedder) as url:
        for page in pages:
            with httpx.Client(base_url=url) as client:  # a connection per page, closed once it is read
                assert client.get(page).status_code == 200, page
        metrics = httpx.get(url + "/metrics").text
    assert 'status="499"' not in metrics, [line for line in metrics.splitlines() if "499" in line]
    assert 'altclip_requests_total{endpoint="/",status="200"} 1.0' in metrics
    assert not [r for r in caplog.records if "went away" in r.getMessage()]


# --- admission in tokens ----------------------------------------------------------------------------------------------


def test_requests_are_admitted_by_their_tokens(embedder):
    """A request's tokens are counted before its work starts: over max_request_tokens it could never be served
    (422); over what is left of max_queue_tokens while other work waits, it is turned away for now (429)."""
    import asyncio

    texts = [f"text number {i}" for i in range(6)]
    with in_process(
        ServerSettings(max_request_tokens=100, max_queue_tokens=100, max_wait_ms=3_600_000), embedder
    ) as app:
        tokens = sum(app.app.state.service.text_tokens(texts))
        assert 50 < tokens <= 100  # the held request below leaves less than its own size
        held = asyncio.run_coroutine_threadsafe(app.client.post("/v1/embed/text", json={"texts": texts}), app.loop)
        until(lambda: app.app.state.service.budget.used == tokens, "the first request admitted")
        busy = app.post("/v1/embed/text", json={"texts": texts})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert f"{tokens:,} tokens of work admitted (limit 100)" in busy.json()["detail"]
        never = app.post("/v1/embed/text", json={"texts": texts * 2})
        assert never.status_code == 422 and "over the limit of 100 per request" in never.json()["detail"]
        usage = app.post("/v1/embeddings", json={"model": "m", "input": texts}).json()
        assert usage["error"]["type"] == "rate_limit_error"  # the OpenAI route, turned away the same way
        held.cancel()
        until(lambda: app.app.state.service.budget.used == 0, "the held request's tokens released")


def test_similarity_is_bounded_in_pairs_before_any_work(embedder, monkeypatch):
    """texts x images is bounded, not only each side: a similarity answer holds three numbers per pair (2,048 texts
    and 2,048 one-pixel images made a 218 MB answer). A request over it is a 422 before an image is decoded."""
    import base64

    from altclip.server import decoding

    decoded = []
    original = decoding.Decoder.prepare

    async def counting(self, images, *args, **kwargs):
        decoded.append(len(images))
        return await original(self, images, *args, **kwargs)

    monkeypatch.setattr(decoding.Decoder, "prepare", counting)
    image = base64.b64encode(CAT).decode()
    with in_process(ServerSettings(max_pairs=6), embedder) as app:
        over = app.post("/v1/similarity", json={"texts": ["a", "b", "c", "d"], "images": [image, image]})
        assert (
            over.status_code == 422
            and "4 texts and 2 images make 8 pairs, over the limit of 6" in over.json()["detail"]
        )
        assert decoded == []
        within = app.post("/v1/similarity", json={"texts": ["a", "b", "c"], "images": [image, image]})
        assert within.status_code == 200 and len(within.json()["cosine"]) == 2 and decoded == [2]
        assert app.get("/v1/info").json()["limits"]["max_pairs"] == 6
