"""What the service does, behind the routes: the model (an ``Embedder``) with batchers that gather concurrent
requests into model calls, the image decoder (its own copy of the image processor, with the service's limits), the
index, the zero-shot classifiers, the metrics, and whether it is ready. Routes reach it through ``ServiceDep``.

The routes hand it requests their models have validated (``schemas``). What only the model can count, it counts
here, once per request, before the work is paid: the tokens the model will read (``embed``), admitted against the
request's limit (422) and against the work the service has admitted from all requests (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from altclip import zeroshot
from altclip.inference import Embedder
from altclip.processing.image_processing import ImageError
from altclip.server.batching import DynamicBatcher
from altclip.server.decoding import Decoder
from altclip.server.errors import InvalidInput, NotFound, QueueFull
from altclip.server.metrics import Metrics
from altclip.server.settings import ServerSettings


@dataclasses.dataclass
class Embedded:
    texts: np.ndarray  # (texts, dim)
    images: np.ndarray  # (images, dim)
    tokens: int  # what the model read: texts' tokens, and images' patches plus one


class Budget:
    """Tokens of model work admitted at once, all requests together: beyond ``most``, a request is turned away (429)
    before any of its work is done."""

    def __init__(self, most: int):
        self.most, self.used = most, 0

    @contextlib.contextmanager
    def admit(self, tokens: int) -> Iterator[None]:
        if self.used + tokens > self.most:
            raise QueueFull(f"it has {self.used:,} tokens of work admitted (limit {self.most:,})")
        self.used += tokens
        try:
            yield
        finally:
            self.used -= tokens


class Service:
    def __init__(self, settings: ServerSettings, embedder: Embedder):
        self.settings = settings
        self.embedder = embedder
        self.image_processor = dataclasses.replace(  # our own copy, with the service's limits
            embedder.processor.image_processor,
            max_pixels=settings.max_pixels,
            max_aspect_ratio=settings.max_aspect_ratio,
            allow_urls=False,  # the server never fetches what clients name
        )
        self.decoder = Decoder(self.image_processor, settings)
        self.index = None  # without an index, search answers 404
        if settings.index:
            from altclip.index import open_index

            self.index = open_index(settings.index)  # an image index, or one over embedding files
            self.index.bind(embedder.name, embedder.dim)
        self.index_lock = threading.Lock()  # SQLite connections are not for concurrent use
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")  # one model call at a time
        self.texts = self._batcher("text", embedder.embed_texts)
        self.images = self._batcher("image", lambda arrays: embedder.embed_prepared(np.stack(arrays)))
        vision = embedder.model.config.vision_config
        self.image_tokens = (vision.image_size // vision.patch_size) ** 2 + 1  # patches and the class token
        self.budget = Budget(settings.max_queue_tokens)
        self.classifiers = zeroshot.ClassifierCache()
        self.ready = False
        self.draining = False  # after SIGTERM: /readyz says no while requests are still served

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the batchers and warms the model up: one forward of each tower before /readyz says yes."""
        self.texts.start()
        self.images.start()
        crop = self.image_processor.crop_size
        await self.texts.run_alone(["warm-up"])
        await self.images.run_alone([np.zeros((crop["height"], crop["width"], 3), np.uint8)])
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for batcher in (self.texts, self.images):
            await batcher.stop()
        self.executor.shutdown(wait=False)
        self.decoder.close()
        if self.index is not None:
            self.index.close()

    def _batcher(self, kind: str, fn) -> DynamicBatcher:
        s = self.settings
        return DynamicBatcher(
            fn,
            executor=self.executor,
            max_batch_size=s.max_batch_size,
            max_batch_tokens=s.max_batch_tokens,
            max_wait_ms=s.max_wait_ms,
            on_batch=lambda size, seconds: self.metrics.model_call(kind, size, seconds),
        )

    @property
    def model_name(self) -> str:
        """The model as clients see it: a Hub id, or a local checkpoint's folder name (never its path)."""
        return public_name(self.embedder.name)

    # -- embedding ----------------------------------------------------------------------------------------------

    def text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model reads them (the tokenizer's ids, special tokens included, after truncation)."""
        return [len(ids) for ids in self.embedder.processor.tokenizer(list(texts))["input_ids"]]

    async def embed(self, texts: Sequence[str] = (), images: Sequence[bytes] = ()) -> Embedded:
        """Unit-norm embeddings of ``texts`` and ``images`` (image files), both at once. The request's tokens are
        counted first and admitted (``max_request_tokens``: 422; ``max_queue_tokens``: 429); its images are decoded
        by the decoder, every pixel limit checked before the first is decoded. When one part fails, the other is
        cancelled with it: no work of a refused request is left in the batchers."""
        text_tokens = await run_in_threadpool(self.text_tokens, texts) if texts else []
        tokens = sum(text_tokens) + len(images) * self.image_tokens
        most = self.settings.max_request_tokens
        if tokens > most:
            raise InvalidInput(f"The request has {tokens:,} tokens for the model, over the limit of {most:,} per "
                               "request: send fewer or shorter texts, or fewer images")  # fmt: skip
        with self.budget.admit(tokens):
            try:
                async with asyncio.TaskGroup() as group:
                    text_part = group.create_task(self.texts.submit(texts, text_tokens)) if texts else None
                    image_part = group.create_task(self._embed_images(images)) if images else None
            except ExceptionGroup as failed:  # the request's answer is its first failure
                raise failed.exceptions[0] from None
        dim = self.embedder.dim
        return Embedded(
            np.stack(text_part.result()) if text_part else np.zeros((0, dim), np.float32),
            np.stack(image_part.result()) if image_part else np.zeros((0, dim), np.float32),
            tokens,
        )

    async def _embed_images(self, images: Sequence[bytes]) -> list[np.ndarray]:
        arrays = await self.decoder.prepare(list(images))
        return await self.images.submit(arrays, [self.image_tokens] * len(arrays))

    # -- what the endpoints answer ------------------------------------------------------------------------------

    async def classify(self, image: bytes, labels: list[str], prompts: list[list[str]]) -> list[dict[str, Any]]:
        """``labels`` ranked for ``image``, by the zero-shot classifier of their ``prompts`` (one list per label):
        the image and the prompts are embedded at once, the prompts only when the classifier is not cached."""
        classifier = self.classifiers.get(prompts)
        flat = [] if classifier is not None else [p for ps in prompts for p in ps]
        embedded = await self.embed(flat, [image])
        if classifier is None:
            classifier = zeroshot.classifier_from_prompts(torch.from_numpy(embedded.texts), prompts)
            self.classifiers.put(prompts, classifier)
        probs = zeroshot.scores(torch.from_numpy(embedded.images), classifier, self.embedder.logit_scale).probs[0]
        return zeroshot.ranked(labels, probs.tolist())

    async def similarity(self, texts: list[str], images: list[bytes]) -> dict[str, np.ndarray]:
        embedded = await self.embed(texts, images)
        return self.embedder.scores(embedded.images, embedded.texts)

    async def query_vector(self, query: str | None, image: bytes | None) -> np.ndarray:
        """The embedding of a search: of its text, else of its image."""
        if query is not None:
            return (await self.embed([query])).texts[0]
        assert image is not None  # a search has a query or an image (its request model checks that)
        return (await self.embed(images=[image])).images[0]

    async def search(self, query: str | None, image: bytes | None, top_k: int) -> list:
        if self.index is None:
            raise NotFound("This server has no index (start it with --index)")
        return await self.on_index(lambda index, v: index.search(v, top_k), await self.query_vector(query, image))

    async def thumbnail(self, file_id: int) -> bytes:
        if self.index is None:
            raise NotFound("This server has no index")
        path = await self.on_index(lambda index: index.file_path(file_id))
        if path is None:
            raise NotFound(f"No indexed image with id {file_id}")
        try:
            return await self.decoder.thumbnail(path, self.settings.thumbnail_size)
        except ImageError as e:
            raise NotFound(f"The indexed image can no longer be read: {e.reason}") from None
        except OSError as e:
            raise NotFound(f"The indexed image can no longer be read: {e.strerror or e}") from None

    async def indexed_images(self) -> int | None:
        return None if self.index is None else await self.on_index(lambda index: index.count())

    async def on_index(self, fn, *args):
        """``fn(index, *args)`` in a worker thread, holding the index's lock; NotFound when the server has no index."""
        if self.index is None:
            raise NotFound("This server has no index (start it with --index)")
        return await run_in_threadpool(self._locked, fn, self.index, *args)

    def queue_depths(self) -> dict[str, int]:
        return {"text": self.texts.waiting, "image": self.images.waiting}

    def _locked(self, fn, *args):
        with self.index_lock:
            return fn(*args)


def get_service(request: Request) -> Service:
    """The app's service, for routes to depend on."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def load_embedder(settings: ServerSettings) -> Embedder:
    from altclip.pipelines import load
    from altclip.utils.devices import resolve_device

    model, processor = load(settings.model, device=resolve_device(settings.device), dtype=settings.dtype)
    return Embedder(model, processor, settings.model, batch_size=settings.max_batch_size)


def public_name(model: str) -> str:
    """A Hub id as it is; a local checkpoint by its folder's name, so that no server path reaches clients."""
    if os.path.isabs(model) or model.startswith(".") or os.path.exists(model):
        return os.path.basename(os.path.normpath(model))
    return model
