"""The HTTP service: every endpoint, every error code and malformed requests in process (httpx's ASGI transport);
auth, CORS, limits, admission, timeouts and batching through a real uvicorn server on 127.0.0.1; draining on SIGTERM
in a real `altclip serve` process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import altclip
from altclip.index import ImageIndex
from altclip.server import ServerSettings
from serving import free_port, in_process, metric_value, running_server, until_async, wait_until_ready
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
CAT = (PHOTOS / "cat.jpg").read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("served")
    make_images(root / "photos", 10)
    for name in ("cat.jpg", "coffee.jpg"):
        (root / "photos" / name).write_bytes((PHOTOS / name).read_bytes())
    with ImageIndex(root / "index") as index:
        index.update([root / "photos"], embedder)
    return root / "index"


@pytest.fixture(scope="module")
def client(embedder, index_dir):
    with in_process(ServerSettings(index=str(index_dir), max_items=8, max_body_bytes=2_000_000), embedder) as app:
        yield app


# --- endpoints --------------------------------------------------------------------------------------------------


def test_health_ready_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "draining": False}
    info = client.get("/v1/info").json()
    assert info["dim"] == 16 and info["index"] == {"images": 12} and info["auth"] is False


def test_embed_text_matches_library(client, embedder):
    texts = ["一只猫", "a dog", "Фотография кошки"]
    r = client.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200
    got = np.array(r.json()["embeddings"], dtype=np.float32)
    assert np.abs(got - embedder.embed_texts(texts)).max() < 1e-5


def test_embed_image_multipart_and_base64(client, embedder):
    expected = embedder.embed_images([PHOTOS / "cat.jpg", PHOTOS / "coffee.jpg"])
    files = [
        ("images", ("cat.jpg", CAT, "image/jpeg")),
        ("images", ("coffee.jpg", (PHOTOS / "coffee.jpg").read_bytes(), "image/jpeg")),
    ]
    multipart = np.array(client.post("/v1/embed/image", files=files).json()["embeddings"])
    as_json = np.array(
        client.post(
            "/v1/embed/image",
            json={"images": [b64(CAT), "data:image/jpeg;base64," + b64((PHOTOS / "coffee.jpg").read_bytes())]},
        ).json()["embeddings"]
    )
    assert np.abs(multipart - expected).max() < 1e-5 and np.abs(as_json - expected).max() < 1e-5
    # base64 as the `base64` command writes it (a line break every 76 characters), and a data: URL in capitals
    wrapped = base64.encodebytes(CAT).decode()
    assert "\n" in wrapped
    r = client.post("/v1/embed/image", json={"images": [wrapped, "DATA:image/jpeg;base64," + b64(CAT)]})
    assert r.status_code == 200, r.text
    assert np.abs(np.array(r.json()["embeddings"]) - expected[[0, 0]]).max() < 1e-5


def test_classify(client, embedder):
    labels = ["猫", "dog", "café"]
    expected = altclip.ZeroShotImageClassificationPipeline(embedder.model, embedder.processor)(
        PHOTOS / "cat.jpg", candidate_labels=labels, templates="auto"
    )
    r = client.post(
        "/v1/classify", files={"image": ("cat.jpg", CAT, "image/jpeg")}, data={"labels": json.dumps(labels)}
    )
    got = r.json()["labels"]
    assert [x["label"] for x in got] == [x["label"] for x in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected)) < 1e-4
    plain = client.post("/v1/classify", json={"image": b64(CAT), "labels": labels, "templates": None}).json()["labels"]
    assert abs(sum(x["score"] for x in plain) - 1) < 1e-5
    comma = client.post("/v1/classify", files={"image": ("c.jpg", CAT)}, data={"labels": "猫, dog"})
    assert [x["label"] for x in comma.json()["labels"]] != [] and comma.status_code == 200


def test_similarity(client):
    r = client.post("/v1/similarity", json={"texts": ["一只猫", "coffee"], "images": [b64(CAT)]})
    data = r.json()
    assert np.array(data["probs"]).shape == (1, 2) and abs(sum(data["probs"][0]) - 1) < 1e-5


def test_search_by_text_and_image_and_thumbnail(client, embedder, index_dir):
    by_image = client.post("/v1/search", files={"image": ("q.jpg", CAT, "image/jpeg")}, data={"top_k": "3"}).json()[
        "results"
    ]
    assert by_image[0]["name"] == "cat.jpg" and by_image[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "path" not in by_image[0]  # no server paths leak to clients
    by_text = client.post("/v1/search", json={"query": "一只猫", "top_k": 5}).json()["results"]
    with ImageIndex(index_dir) as index:
        expected = index.search(embedder.embed_texts(["一只猫"])[0], 5)
    assert [h["id"] for h in by_text] == [h.id for h in expected]
    thumb = client.get(f"/v1/thumbnails/{by_image[0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(__import__("io").BytesIO(thumb.content)).size) <= 256


def test_metrics(client):
    client.post("/v1/embed/text", json={"texts": ["a"]})
    text = client.get("/metrics").text
    assert 'altclip_requests_total{endpoint="/v1/embed/text",status="200"}' in text
    assert "altclip_request_seconds_bucket" in text and 'altclip_batch_size_count{kind="text"}' in text
    assert 'altclip_queue_depth{kind="image"} 0.0' in text


def test_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/embed/text",
        "/v1/embed/image",
        "/v1/classify",
        "/v1/similarity",
        "/v1/search",
        "/v1/thumbnails/{file_id}",
    } <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/embed/image"]["post"]["requestBody"]["content"]


def test_page_is_served(client):
    page = client.get("/")
    assert (
        page.status_code == 200
        and "AltCLIP" in page.text
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    assert client.get("/static/app.js").status_code == 200


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, kwargs, code, message",
    [
        ("post", "/v1/embed/text", {"json": {"texts": ["x"] * 9}}, 422, "Too many texts: 9 (limit 8)"),
        ("post", "/v1/embed/text", {"json": {"texts": []}}, 422, "No texts given"),
        ("post", "/v1/embed/text", {"json": {"texts": ["  "]}}, 422, "Text 0 is empty"),
        ("post", "/v1/embed/text", {"json": {"nope": 1}}, 422, "texts: Field required"),
        (
            "post",
            "/v1/embed/text",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            "post",
            "/v1/embed/text",
            {"content": b'{"texts": ["\\ud800"]}', "headers": {"content-type": "application/json"}},
            422,
            "lone surrogate",
        ),
        (
            "post",
            "/v1/embed/text",
            {"content": b'{"texts": ["\xff\xfe"]}', "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            "post",
            "/v1/embed/text",
            {"content": b"texts=a", "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
        (
            "post",
            "/v1/embed/image",
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "multipart/form-data",
        ),
        ("post", "/v1/embed/image", {"json": {"images": ["%%%"]}}, 400, "Image 0 is not valid base64"),
        (
            "post",
            "/v1/embed/image",
            {"json": {"images": [b64(b"not an image")]}},
            422,
            "Image 0: not a readable image (unknown or unsupported format: altclip reads JPEG",
        ),
        ("post", "/v1/embed/image", {"json": {"images": [b64(CAT[: len(CAT) // 2])]}}, 422, "Image 0"),
        ("post", "/v1/embed/image", {"files": {"images": ("x.jpg", CAT)}, "data": {}}, 200, ""),
        (
            "post",
            "/v1/embed/image",
            {"content": b"--b\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=b"}},
            422,
            "",
        ),
        ("post", "/v1/classify", {"json": {"image": b64(CAT), "labels": []}}, 422, "No labels given"),
        ("post", "/v1/classify", {"files": {"image": ("x.jpg", CAT)}}, 422, "Send the candidate labels"),
        (
            "post",
            "/v1/classify",
            {"json": {"image": b64(CAT), "labels": ["a"], "templates": ["no placeholder"]}},
            422,
            "templates must",
        ),
        ("post", "/v1/search", {"json": {"top_k": 3}}, 422, "Send a text query or an image"),
        ("post", "/v1/search", {"json": {"query": "x", "top_k": 0}}, 422, "top_k"),
        ("get", "/v1/thumbnails/999999", {}, 404, "No indexed image with id 999999"),
        ("get", "/v1/thumbnails/abc", {}, 422, ""),
        (
            "post",
            "/v1/embed/text",
            {"content": b"x" * 2_000_001, "headers": {"content-type": "application/json"}},
            413,
            "over 2000000 bytes",
        ),
    ],
)
def test_error_codes(client, method, path, kwargs, code, message):
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == code, r.text
    if message:
        assert message in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_chunked_body_over_the_limit_is_refused(client):
    async def chunks():  # (the in-process client sends from its event loop)
        for _ in range(30):
            yield b"x" * 100_000

    r = client.post("/v1/embed/text", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_image_limits(embedder, tmp_path):
    huge = tmp_path / "wide.png"
    Image.new("RGB", (3000, 20)).save(huge)
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000)).save(big)
    with running_server(ServerSettings(max_pixels=5_000_000, max_aspect_ratio=50), embedder) as url:
        r = httpx.post(url + "/v1/embed/image", json={"images": [b64(huge.read_bytes())]})
        assert r.status_code == 422 and "aspect ratio of 3000x20 is over the limit of 50:1" in r.json()["detail"]
        r = httpx.post(url + "/v1/embed/image", json={"images": [b64(CAT), b64(big.read_bytes())]})
        assert r.status_code == 422 and "Image 1: 3000x3000 is 9,000,000 pixels, over the limit" in r.json()["detail"]
        r = httpx.post(url + "/v1/search", json={"query": "cat"})
        assert r.status_code == 404 and "no index" in r.json()["detail"]


def test_auth(embedder, index_dir):
    with running_server(ServerSettings(index=str(index_dir), token="s3cret"), embedder) as url:
        assert httpx.get(url + "/healthz").status_code == 200  # probes and the page stay open
        assert httpx.get(url + "/readyz").status_code == 200
        assert httpx.get(url + "/").status_code == 200
        assert httpx.get(url + "/v1/info").status_code == 401  # the page learns from this that it needs the token
        assert httpx.get(url + "/metrics").status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert httpx.get(url + "/v1/info", headers=key).json()["auth"] is True
        assert httpx.get(url + "/metrics", headers=key).status_code == 200
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer s3cre"},
        ):
            r = httpx.post(url + "/v1/embed/text", json={"texts": ["a"]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(url + "/v1/embed/text", json={"texts": ["a"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(url + "/v1/thumbnails/1").status_code == 401
        assert httpx.get(url + "/v1/thumbnails/1", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cors_off_unless_configured(embedder):
    origin = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    with running_server(ServerSettings(), embedder) as url:
        assert "access-control-allow-origin" not in httpx.options(url + "/v1/embed/text", headers=origin).headers
    with running_server(ServerSettings(cors_origins=["https://example.com"]), embedder) as url:
        r = httpx.options(url + "/v1/embed/text", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://example.com"


def test_queue_full_gives_429_and_timeout_504(embedder):
    async def scenario(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/embed/text", json={"texts": ["a", "b", "c"]}))

            async def first_in_the_batcher() -> bool:
                return metric_value((await c.get("/metrics")).text, 'altclip_queue_depth{kind="text"}') == 3

            await until_async(first_in_the_batcher, "the first request queueing")
            second = await c.post("/v1/embed/text", json={"texts": ["d"]})
            assert second.headers["retry-after"] == "1" and "limit 1" in second.json()["detail"]
            return [second.status_code, (await first).status_code]

    settings = ServerSettings(max_queue=1, max_wait_ms=1500, max_batch_size=64, request_timeout_s=10)
    with running_server(settings, embedder) as url:
        assert asyncio.run(scenario(url)) == [429, 200]
        assert httpx.get(url + "/healthz").status_code == 200
    with running_server(ServerSettings(max_wait_ms=2000, max_batch_size=64, request_timeout_s=0.3), embedder) as url:
        r = httpx.post(url + "/v1/embed/text", json={"texts": ["slow"]}, timeout=10)
        assert r.status_code == 504 and "longer than 0.3 s" in r.json()["detail"]


def test_dynamic_batching_gathers_concurrent_requests(embedder):
    async def burst(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            responses = await asyncio.gather(
                *(c.post("/v1/embed/text", json={"texts": [f"text {i}"]}) for i in range(16))
            )
            assert all(r.status_code == 200 for r in responses)

    with running_server(ServerSettings(max_wait_ms=200, max_batch_size=16), embedder) as url:
        asyncio.run(burst(url))
        metrics = httpx.get(url + "/metrics").text
    count = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('altclip_batch_size_count{kind="text"}')
        )
    )
    total = float(
        next(
            line.split()[-1] for line in metrics.splitlines() if line.startswith('altclip_batch_size_sum{kind="text"}')
        )
    )
    assert total - 1 >= 16 and (total - 1) / (count - 1) >= 4  # minus the warm-up batch: 16 requests in few batches


@pytest.mark.slow  # end to end: a real `altclip serve` process
def test_sigterm_drains_in_flight_requests(checkpoint, index_dir):
    """A real `altclip serve` process: it says where it listens; after SIGTERM /readyz turns 503 at once, a request
    in flight still completes, and the process exits cleanly."""
    port = free_port()
    command = [sys.executable, "-m", "altclip", "serve", "--model", str(checkpoint), "--port", str(port),
               "--max-wait-ms", "1500", "--drain-seconds", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 60, lambda: process.stderr.read().decode())

        async def scenario() -> tuple[bool, int]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                in_flight = asyncio.create_task(c.post("/v1/embed/text", json={"texts": ["in flight"]}))

                async def queued() -> bool:
                    return metric_value((await c.get("/metrics")).text, 'altclip_queue_depth{kind="text"}') == 1

                async def not_ready() -> bool:
                    return (await c.get("/readyz")).status_code == 503

                await until_async(queued, "the request queueing")
                process.send_signal(signal.SIGTERM)
                await until_async(not_ready, "/readyz turning 503")
                return not in_flight.done(), (await in_flight).status_code

        assert asyncio.run(scenario()) == (True, 200)  # 503 while the request was still in flight; then answered
        # uvicorn finishes the shutdown, then re-raises the signal so the exit status reports it
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        log = process.stderr.read().decode()
        assert "Waiting for application shutdown" in log and "Finished server process" in log
        assert f"Listening on http://127.0.0.1:{port}" in log  # issue 23: serve says where it listens
    finally:
        if process.poll() is None:
            process.kill()


def test_fuzzed_requests_never_break_the_server(client):
    """Random bodies, content types and paths: always a 4xx (or 200), never a 5xx, and the server stays up."""
    rng = random.Random(1)
    paths = ["/v1/embed/text", "/v1/embed/image", "/v1/classify", "/v1/similarity", "/v1/search"]
    types = [
        "application/json",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "text/plain",
        "image/jpeg",
        "",
        "application/x-www-form-urlencoded",
    ]
    bodies = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))),
        lambda: json.dumps({"texts": [rng.choice(["", "a", 1, None, [], {}])] * rng.randint(0, 3)}).encode(),
        lambda: json.dumps({"images": [rng.choice(["", "@@", b64(b"\x89PNG"), 5])]}).encode(),
        lambda: json.dumps(
            {"image": b64(CAT[: rng.randint(0, 2000)]), "labels": rng.choice([[], ["x"], "x", [1]])}
        ).encode(),
        lambda: b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n' + CAT[:500],
        lambda: json.dumps(["not", "an", "object"]).encode(),
        lambda: b'{"texts": ["' + b"\xed\xa0\x80" + b'"]}',
        lambda: json.dumps({"query": "x" * rng.randint(0, 6000), "top_k": rng.choice([1, -1, "a", 10**9])}).encode(),
    ]
    statuses = set()
    for _ in range(250):
        headers = {"content-type": rng.choice(types)} if rng.random() < 0.9 else {}
        r = client.post(rng.choice(paths), content=rng.choice(bodies)(), headers=headers)
        statuses.add(r.status_code)
        assert r.status_code < 500, (r.status_code, r.text)
        if r.status_code >= 400:
            assert r.json()["detail"]
    assert {400, 415, 422} <= statuses
    assert client.get("/readyz").json()["ready"] is True


def test_settings_from_env_and_config(tmp_path):
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"port": 9001, "max_items": 5, "cors_origins": ["https://a.example"]}))
    env = {
        "ALTCLIP_PORT": "9002",
        "ALTCLIP_TOKEN": "t",
        "ALTCLIP_MAX_WAIT_MS": "7.5",
        "ALTCLIP_CORS_ORIGINS": "https://b, https://c",
    }
    settings = ServerSettings.load(config, env=env, max_items=6)
    assert (settings.port, settings.max_items, settings.token, settings.max_wait_ms) == (9002, 6, "t", 7.5)
    assert settings.cors_origins == ["https://b", "https://c"]
    assert ServerSettings.load(config, env={}).cors_origins == ["https://a.example"]
    assert ServerSettings().host == "127.0.0.1"  # loopback unless told otherwise
    toml = tmp_path / "serve.toml"
    toml.write_text('port = 9003\nindex = "/data/index"\n')
    assert ServerSettings.load(toml, env={}).index == "/data/index"
    config.write_text(json.dumps({"prot": 1}))
    with pytest.raises(ValueError, match="unknown settings prot"):
        ServerSettings.load(config, env={})


def test_env_is_clean():
    assert "ALTCLIP_TOKEN" not in os.environ


def test_typed_settings_read_false_as_false(tmp_path):
    assert ServerSettings.load(env={"ALTCLIP_ACCESS_LOG": "false"}).access_log is False
    assert ServerSettings.load(env={"ALTCLIP_ACCESS_LOG": "true"}).access_log is True
    with pytest.raises(ValueError, match="port"):
        ServerSettings.load(env={"ALTCLIP_PORT": "eighty"})


def test_the_server_works_on_its_own_image_processor(embedder):
    before = embedder.processor.image_processor.to_dict(), embedder.processor.image_processor.max_pixels
    with running_server(ServerSettings(max_pixels=1234, max_aspect_ratio=2), embedder) as url:
        r = httpx.post(url + "/v1/embed/image", json={"images": [b64(CAT)]})
        assert r.status_code == 422 and "over the limit of 1,234" in r.json()["detail"]
    processor = embedder.processor.image_processor
    assert (processor.to_dict(), processor.max_pixels) == before and processor.allow_urls
