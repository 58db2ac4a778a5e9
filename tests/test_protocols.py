"""The protocols other tools speak, against real ``altclip serve`` processes: the official ``openai`` package on
``/v1/embeddings`` and ``/v1/models`` (texts and images), and clip-retrieval's own ``ClipClient`` on
``/knn-service`` (with ``/indices-list`` and ``/metadata`` as its clip-front page calls them).

``ClipClient`` is clip-retrieval's real code: the package is installed without its dependencies (its tree pins
another torch), and ``clip_retrieval/clip_client.py`` is loaded on its own, since the package's ``__init__``
imports the whole back end (flask, faiss, the CLIP models); the client itself needs only ``requests``."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import requests
from PIL import Image

from altclip.index import ImageIndex
from serving import serve_process
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
CAT = PHOTOS / "cat.jpg"
TOKEN = "protocol-token"
pytestmark = pytest.mark.slow  # end to end: real `altclip serve` processes


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def vectors(answer) -> np.ndarray:
    """The embeddings of an SDK answer; those asked for as base64 stay strings in the SDK (little-endian float32)."""
    rows = [d.embedding for d in answer.data]
    return np.stack(
        [np.frombuffer(base64.b64decode(r), "<f4") if isinstance(r, str) else np.array(r, np.float32) for r in rows]
    )


def clip_client_class():
    """clip-retrieval's ClipClient, from the installed package's own file."""
    package = importlib.util.find_spec("clip_retrieval")
    assert package is not None, "clip-retrieval is not installed (pip install --no-deps clip-retrieval)"
    path = Path(package.submodule_search_locations[0]) / "clip_client.py"
    spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ClipClient


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("protocols")
    make_images(root / "photos", 6)
    for photo in PHOTOS.glob("*.jpg"):
        (root / "photos" / photo.name).write_bytes(photo.read_bytes())
    with ImageIndex(root / "index") as index:
        index.update([root / "photos"], embedder)
    return root / "index"


@pytest.fixture(scope="module")
def open_server(checkpoint, index_dir):
    with serve_process("--model", str(checkpoint), "--index", str(index_dir), "--max-items", "8") as url:
        yield url


@pytest.fixture(scope="module")
def token_server(checkpoint, index_dir, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with serve_process("--model", str(checkpoint), "--index", str(index_dir), "--token-file", str(token_file)) as url:
        yield url


@pytest.fixture(scope="module")
def client(token_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=token_server + "/v1", api_key=TOKEN, max_retries=0)


# --- OpenAI ---------------------------------------------------------------------------------------------------------


def test_models_list_the_served_model(client, checkpoint):
    models = client.models.list().data
    assert [m.id for m in models] == [Path(checkpoint).name]
    assert models[0].object == "model" and models[0].owned_by == "altclip"
    assert client.models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")
    with pytest.raises(openai.APIStatusError) as e:  # Starlette's own 405: OpenAI's error object too
        client.get("/embeddings", cast_to=object)
    assert e.value.status_code == 405 and e.value.body["message"] == "Method Not Allowed"
    assert e.value.response.headers["allow"] == "POST"


@pytest.mark.parametrize("encoding_format", ["base64", None, "float"])  # None: the SDK's default (base64)
def test_text_embeddings_through_the_sdk(client, embedder, checkpoint, encoding_format):
    import transformers

    texts = ["一只猫", "a photo of a dog", "Фотография кошки"]
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    answer = client.embeddings.create(model="anything", input=texts, **extra)
    assert isinstance(answer.data[0].embedding, str) == (encoding_format == "base64")
    got = vectors(answer)
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == Path(checkpoint).name
    assert np.abs(got - embedder.embed_texts(texts)).max() < 1e-5
    reference = transformers.AutoTokenizer.from_pretrained(str(checkpoint))  # tokens counted by another tokenizer
    tokens = sum(len(ids) for ids in reference(texts)["input_ids"])
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


def test_one_string_and_dimensions(client, embedder):
    answer = client.embeddings.create(model="m", input="一只猫", dimensions=embedder.dim, user="someone")
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == embedder.dim
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input="一只猫", dimensions=embedder.dim - 1)
    assert e.value.body["message"] == f"dimensions must be {embedder.dim}, this model's embedding size"
    assert e.value.body["type"] == "invalid_request_error"


def test_images_as_infinity_sends_them(client, embedder):
    """``modality: "image"`` (infinity-emb's extension) makes the strings images, as data: URIs or plain base64."""
    plain = base64.b64encode((PHOTOS / "coffee.jpg").read_bytes()).decode()
    answer = client.embeddings.create(model="m", input=[data_uri(CAT), plain], extra_body={"modality": "image"})
    got = vectors(answer)
    assert np.abs(got - embedder.embed_images([CAT, PHOTOS / "coffee.jpg"])).max() < 1e-5
    grid = embedder.model.config.vision_config.image_size // embedder.model.config.vision_config.patch_size
    assert answer.usage.prompt_tokens == 2 * (grid**2 + 1)  # patches and the class token, per image


def test_typed_items_mix_texts_and_images(client, embedder):
    answer = client.embeddings.create(model="m", input=[{"text": "一只猫"}, {"image": data_uri(CAT)}, "a dog"])
    got = vectors(answer)
    expected = np.stack(
        [embedder.embed_texts(["一只猫"])[0], embedder.embed_images([CAT])[0], embedder.embed_texts(["a dog"])[0]]
    )
    assert np.abs(got - expected).max() < 1e-5


def test_image_urls_are_never_fetched(client):
    fetched = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(CAT.read_bytes())

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as bait:
        threading.Thread(target=bait.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{bait.server_address[1]}/cat.jpg"
        shouted = url.replace("http://", "HTTP://")
        for body in (
            {"input": [url], "modality": "image"},
            {"input": [{"image": url}]},
            {"input": [{"image": shouted}]},
        ):
            with pytest.raises(openai.BadRequestError, match="not fetched"):
                client.embeddings.create(
                    model="m", input=body["input"], extra_body={k: v for k, v in body.items() if k != "input"}
                )
        bait.shutdown()
    assert fetched == []


def test_refusals_through_the_sdk(client, token_server):
    with pytest.raises(openai.BadRequestError, match="token ids are not supported"):
        client.embeddings.create(model="m", input=[[101, 2023, 102]])
    with pytest.raises(openai.BadRequestError, match="input") as e:  # not text, but not token ids either
        client.embeddings.create(model="m", input=[True])
    assert "token ids" not in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="Input 1 is empty"):
        client.embeddings.create(model="m", input=["a", "  "])
    with pytest.raises(openai.BadRequestError, match=r"Too many inputs: 2049 \(limit 2048\)"):  # OpenAI's limit
        client.embeddings.create(model="m", input=["a"] * 2049)
    with pytest.raises(
        openai.BadRequestError,
        match=r"Image 0: not a readable image \(unknown or unsupported format: altclip reads JPEG",
    ):
        client.embeddings.create(
            model="m", input=[base64.b64encode(b"no image").decode()], extra_body={"modality": "image"}
        )
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=token_server + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="m", input="a"
        )
    assert e.value.body["type"] == "authentication_error"
    assert httpx.get(token_server + "/v1/models").status_code == 401
    big = httpx.post(
        token_server + "/v1/embeddings",
        content=b"x" * (21 * 2**20),
        headers={"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
    )
    assert big.status_code == 413  # refused by the middleware, before any route: still OpenAI's error object
    assert big.json()["error"]["type"] == "invalid_request_error" and "over" in big.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model="m", input="x" * (21 * 2**20))
    assert e.value.status_code == 413 and e.value.body["type"] == "invalid_request_error"


def test_inputs_are_counted_before_they_are_validated(open_server):
    """250,000 wrong items (4.5 MB) cost pydantic an error each: 6 s of the event loop, every other request waiting.
    Counted first, they are refused before any is validated: the message is the count's alone, no item's."""
    for items in ([None] * 250_000, [{"text": {"a": []}}] * 250_000, [[1]] * 250_000):
        r = httpx.post(open_server + "/v1/embeddings", json={"model": "m", "input": items}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["message"] == "input: Too many inputs: 250000 (limit 8)"


def test_a_refused_request_leaves_no_work_behind(open_server):
    """Texts and images run at once; when the images fail, the texts are cancelled with the answer. They were left in
    the model's queue: 30 requests of 63 long texts and an image that is no image, each answered 422 in 60 ms, left
    1,700 texts queued, a minute of the model's time after the answers and outside max_queue."""
    texts = [f"{i} " + "word " * 790 for i in range(7)]
    body = {"model": "m", "input": [*texts, {"image": base64.b64encode(b"no image").decode()}]}
    before = _metric(open_server, 'altclip_batch_size_sum{kind="text"}')
    for _ in range(10):
        r = httpx.post(open_server + "/v1/embeddings", json=body)
        assert r.status_code == 400 and "not a readable image" in r.json()["error"]["message"]
    deadline = time.monotonic() + 60
    while _metric(open_server, 'altclip_queue_depth{kind="text"}') and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a batch already taken
    assert _metric(open_server, 'altclip_batch_size_sum{kind="text"}') - before < 35  # of 70 texts


def _metric(url: str, name: str) -> float:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return next((float(line.split()[-1]) for line in lines if line.startswith(name + " ")), 0.0)


# --- clip-retrieval ---------------------------------------------------------------------------------------------------


def test_clip_client_searches_the_index(open_server, embedder, index_dir):
    ClipClient = clip_client_class()
    (name,) = requests.get(open_server + "/indices-list").json()
    assert name == index_dir.name
    client = ClipClient(url=open_server + "/knn-service", indice_name=name, num_images=5, deduplicate=False)
    with ImageIndex(index_dir) as index:
        expected = index.search(embedder.embed_texts(["一只猫"])[0], 5)
    by_text = client.query(text="一只猫")
    assert [r["id"] for r in by_text] == [h.id for h in expected]
    assert max(abs(r["similarity"] - h.score) for r, h in zip(by_text, expected)) < 1e-5
    assert [r["caption"] for r in by_text] == [Path(h.path).name for h in expected]
    thumbnail = httpx.get(by_text[0]["url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"

    by_image = client.query(image=str(CAT))  # the client reads the file and sends it as base64
    assert by_image[0]["caption"] == "cat.jpg" and by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)

    vector = embedder.embed_texts(["一只猫"])[0]
    by_vector = client.query(embedding_input=(3 * vector).tolist())  # normalised by the server
    assert [r["id"] for r in by_vector] == [h.id for h in expected]


def near_duplicate_groups(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of 'cosine over threshold', by breadth-first search, each sorted."""
    linked = vectors @ vectors.T > threshold
    seen: set[int] = set()
    groups = []
    for start in range(len(vectors)):
        if start in seen:
            continue
        group, frontier = [], [start]
        seen.add(start)
        while frontier:
            node = frontier.pop()
            group.append(node)
            for other in np.flatnonzero(linked[node]):
                if int(other) not in seen:
                    seen.add(int(other))
                    frontier.append(int(other))
        groups.append(sorted(group))
    return groups


def test_clip_client_deduplicates_as_clip_retrieval(open_server, index_dir):
    ClipClient = clip_client_class()
    every = ClipClient(url=open_server + "/knn-service", indice_name=index_dir.name, num_images=15, deduplicate=False)
    unique = ClipClient(url=open_server + "/knn-service", indice_name=index_dir.name, num_images=15)  # its default
    all_hits, kept = every.query(text="coins"), unique.query(text="coins")
    with ImageIndex(index_dir) as index:
        vectors = index.vectors([r["id"] for r in all_hits])
    representatives = sorted(group[0] for group in near_duplicate_groups(vectors, 0.94))
    assert [r["id"] for r in kept] == [all_hits[i]["id"] for i in representatives]
    assert len(kept) < len(all_hits)  # the random tiny model makes many near duplicates


def test_clip_front_calls(open_server, index_dir):
    """clip-front posts JSON as text/plain; results past num_images carry no metadata; /metadata fills them in."""
    query = {"text": "cat", "modality": "image", "num_images": 2, "num_result_ids": 6, "indice_name": index_dir.name,
             "use_mclip": False, "deduplicate": False, "use_safety_model": True, "aesthetic_score": "", "aesthetic_weight": ""}  # fmt: skip
    results = httpx.post(
        open_server + "/knn-service", content=_json(query), headers={"content-type": "text/plain;charset=UTF-8"}
    ).json()
    assert (
        len(results) == 6 and all("caption" in r for r in results[:2]) and all("caption" not in r for r in results[2:])
    )
    ids = [r["id"] for r in results[2:]] + [10**9]
    metadata = httpx.post(open_server + "/metadata", content=_json({"ids": ids, "indice_name": index_dir.name})).json()
    assert [m["id"] for m in metadata] == ids[:-1]  # an id the index does not have is left out
    long_name = httpx.post(open_server + "/metadata", content=_json({"ids": ids, "indice_name": "x" * 257}))
    assert long_name.status_code == 422 and len(long_name.content) < 200
    assert all(m["metadata"]["url"].endswith(f"/v1/thumbnails/{m['id']}") for m in metadata)


def _json(data) -> bytes:
    import json

    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "query, status, message",
    [
        ({"text": "cat", "image_url": "http://example.com/cat.jpg"}, 422, "never fetches URLs"),
        ({"text": "cat", "modality": "text"}, 422, "modality 'text' is not supported"),
        ({"num_images": 3}, 422, "Send a text, an image or an embedding_input"),
        ({"text": "cat", "num_images": 1001}, 422, "num_images"),
        ({"text": "x" * 4001}, 422, "4,001 characters (limit 4,000)"),
        ({"embedding_input": [1.0, 2.0]}, 422, "embedding_input must be 16 finite numbers"),
        # counted before the numbers are validated, which costs an error each: 1 s of the event loop for 250,000
        ({"embedding_input": [None] * 250_000}, 422, "embedding_input must be 16 finite numbers"),
        ({"text": "cat", "indice_name": "laion5B"}, 404, "No index named 'laion5B'"),
        # not echoed whole: a name of 19 MB was a 404 of 19 MB
        ({"text": "cat", "indice_name": "x" * 257}, 422, "indice_name: String should have at most 256 characters"),
        (
            {"image": base64.b64encode(b"not an image").decode()},
            422,
            "Image 0: not a readable image (unknown or unsupported format: altclip reads JPEG",
        ),
    ],
)
def test_knn_service_refusals(open_server, query, status, message):
    r = httpx.post(open_server + "/knn-service", content=_json(query))
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_clip_client_needs_an_open_server(token_server, index_dir):
    """ClipClient sends no credentials: against a server with a token it gets the 401 answer back."""
    answer = clip_client_class()(url=token_server + "/knn-service", indice_name=index_dir.name).query(text="cat")
    assert answer == {"detail": "Missing or wrong bearer token"}
    assert httpx.get(token_server + "/indices-list").status_code == 401


def test_no_index_no_indices(checkpoint, tmp_path):
    with serve_process("--model", str(checkpoint)) as url:
        assert httpx.get(url + "/indices-list").json() == []
        assert httpx.post(url + "/knn-service", json={"text": "cat"}).status_code == 404
        image = tmp_path / "one.png"
        Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
        ok = openai.OpenAI(base_url=url + "/v1", api_key="unused").embeddings.create(
            model="m", input=[{"image": data_uri(image)}]
        )
        assert len(ok.data) == 1


# --- LangChain and LlamaIndex, with their defaults ---------------------------------------------------------------------

SENTENCES = [f"一只猫 number {i}" for i in range(1500)]  # 1,500 texts: more than one request


def test_langchain_openai_embeddings_with_its_defaults(token_server, embedder):
    """LangChain's OpenAIEmbeddings as the README configures it (base_url, api_key, check_embedding_ctx_length=False)
    and otherwise its defaults: 1,000 texts per request (OpenAI accepts 2,048), the SDK's base64 encoding."""
    from langchain_openai import OpenAIEmbeddings

    client = OpenAIEmbeddings(base_url=token_server + "/v1", api_key=TOKEN, check_embedding_ctx_length=False)
    assert client.chunk_size == 1000  # its default: the point of the test
    got = np.array(client.embed_documents(SENTENCES), np.float32)
    assert got.shape == (1500, embedder.dim)
    assert np.abs(got - embedder.embed_texts(SENTENCES)).max() < 1e-5
    query = np.array(client.embed_query("一只猫"), np.float32)
    assert np.abs(query - embedder.embed_texts(["一只猫"])[0]).max() < 1e-5


def test_llamaindex_openai_embedding_with_its_defaults(token_server, embedder):
    """LlamaIndex's OpenAIEmbedding given only api_base and api_key: its default model name and 100 texts per
    request."""
    from llama_index.embeddings.openai import OpenAIEmbedding

    client = OpenAIEmbedding(api_base=token_server + "/v1", api_key=TOKEN)
    assert client.embed_batch_size == 100
    texts = SENTENCES[:250]
    got = np.array(client.get_text_embedding_batch(texts), np.float32)
    assert np.abs(got - embedder.embed_texts(texts)).max() < 1e-5
    assert np.abs(np.array(client.get_query_embedding("一只猫")) - embedder.embed_texts(["一只猫"])[0]).max() < 1e-5
