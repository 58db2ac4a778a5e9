"""What the service does, behind the routes: the model (an ``Embedder``) with batchers that gather concurrent
requests into model calls, the image decoder (its own copy of the image processor, with the service's limits), the
index, the zero-shot classifiers, the metrics, and whether it is ready. Routes reach it through ``get_service``.

Every method checks what it is given against the limits (``limits``), whatever the route's schema checked before,
so that every endpoint, present or future, is bounded the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from altclip import zeroshot
from altclip.image_processing import ImageError
from altclip.inference import Embedder
from altclip.server import limits
from altclip.server.batching import DynamicBatcher
from altclip.server.decoding import Decoder
from altclip.server.errors import InvalidInput, NotFound
from altclip.server.metrics import Metrics
from altclip.server.settings import ServerSettings


class Service:
    def __init__(self, settings: ServerSettings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder  # None: loaded from settings.model at start
        self.image_processor = None  # our own copy, with the service's limits
        self.decoder: Decoder | None = None
        self.index = None
        self.index_lock = threading.Lock()  # SQLite connections are not for concurrent use
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")  # one model call at a time
        self.texts: DynamicBatcher | None = None
        self.images: DynamicBatcher | None = None
        self.classifiers = zeroshot.ClassifierCache()
        self.ready = False
        self.draining = False  # after SIGTERM: /readyz says no while requests are still served

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the model (unless given), opens the index, starts the batchers and warms the model up."""
        settings = self.settings
        if self.embedder is None:
            self.embedder = await run_in_threadpool(_load, settings)
        embedder = self.embedder
        self.image_processor = dataclasses.replace(
            embedder.processor.image_processor,
            max_pixels=settings.max_pixels,
            max_aspect_ratio=settings.max_aspect_ratio,
            allow_urls=False,  # the server never fetches what clients name
        )
        self.decoder = Decoder(self.image_processor, settings)
        if settings.index:
            from altclip.index import open_index

            self.index = open_index(settings.index)  # an image index, or one over embedding files
            self.index.bind(embedder.name, embedder.dim)
        self.texts = self._batcher("text", embedder.embed_texts)
        self.images = self._batcher("image", lambda arrays: embedder.embed_prepared(np.stack(arrays)))
        crop = self.image_processor.crop_size
        await self.texts.submit(["warm-up"])  # one forward of each tower before /readyz says yes
        await self.images.submit([np.zeros((crop["height"], crop["width"], 3), np.uint8)])
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for batcher in (self.texts, self.images):
            if batcher is not None:
                await batcher.stop()
        self.executor.shutdown(wait=False)
        if self.decoder is not None:
            self.decoder.close()
        if self.index is not None:
            self.index.close()

    def _batcher(self, kind: str, fn) -> DynamicBatcher:
        s = self.settings
        batcher = DynamicBatcher(
            fn,
            executor=self.executor,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            on_batch=lambda size, seconds: self.metrics.model_call(kind, size, seconds),
        )
        batcher.start()
        return batcher

    @property
    def model_name(self) -> str:
        """The model as clients see it: a Hub id, or a local checkpoint's folder name (never its path)."""
        return public_name(self.embedder.name if self.embedder else self.settings.model)

    # -- embedding ----------------------------------------------------------------------------------------------

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        limits.check_texts(texts, self.settings)
        return await self._embed_texts(texts)

    async def _embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack(await self.texts.submit(texts))

    async def embed_images(self, images: list[bytes]) -> np.ndarray:
        """Decoded, resized and cropped by the decoder (every limit checked before the first image is decoded),
        then embedded through the image batcher."""
        limits.check_count(images, "images", self.settings)
        arrays = await self.decoder.prepare(images)
        return np.stack(await self.images.submit(arrays))

    # -- what the endpoints answer ------------------------------------------------------------------------------

    def prompts(self, labels: list[str], templates: zeroshot.Templates) -> list[list[str]]:
        """The prompts of each label, within the limits (labels, templates, and prompts in all)."""
        limits.check_texts(labels, self.settings, "labels", "Label")
        limits.check_templates(templates, self.settings)
        if templates is not None and not isinstance(templates, str):  # a list: its cost known before it is paid
            limits.check_prompt_cost(*limits.prompt_cost(labels, templates), self.settings)
        try:
            prompts = zeroshot.label_prompts(labels, templates)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        limits.check_prompts(prompts, self.settings)
        return prompts

    async def classifier(self, prompts: list[list[str]]) -> torch.Tensor:
        """The zero-shot classifier of ``prompts`` (one list per label), its prompts embedded through the batcher."""
        cached = self.classifiers.get(prompts)
        if cached is not None:
            return cached
        vectors = await self._embed_texts([p for ps in prompts for p in ps])
        return self.classifiers.put(prompts, zeroshot.classifier_from_prompts(torch.from_numpy(vectors), prompts))

    async def classify(self, image: bytes, labels: list[str], templates: zeroshot.Templates) -> list[dict[str, Any]]:
        prompts = self.prompts(labels, templates)  # before the image is decoded: a request over a limit costs nothing
        image_embeds = torch.from_numpy(await self.embed_images([image]))
        classifier = await self.classifier(prompts)
        probs = zeroshot.scores(image_embeds, classifier, self.embedder.logit_scale).probs[0]
        return zeroshot.ranked(labels, probs.tolist())

    async def similarity(self, texts: list[str], images: list[bytes]) -> dict[str, np.ndarray]:
        limits.check_texts(texts, self.settings)
        image_embeds, text_embeds = await together(self.embed_images(images), self._embed_texts(texts))
        return self.embedder.scores(image_embeds, text_embeds)

    async def search(self, query: str | None, image: bytes | None, top_k: int) -> list:
        if self.index is None:
            raise NotFound("This server has no index (start it with --index)")
        if image is not None:
            vectors = await self.embed_images([image])
        else:
            limits.check_text(query, "The query", self.settings)
            vectors = await self._embed_texts([query])
        return await run_in_threadpool(self._locked, self.index.search, vectors[0], top_k)

    async def thumbnail(self, file_id: int) -> bytes:
        if self.index is None:
            raise NotFound("This server has no index")
        path = await run_in_threadpool(self._locked, self.index.file_path, file_id)
        if path is None:
            raise NotFound(f"No indexed image with id {file_id}")
        try:
            return await self.decoder.thumbnail(path, self.settings.thumbnail_size)
        except ImageError as e:
            raise NotFound(f"The indexed image can no longer be read: {e.reason}") from None
        except OSError as e:
            raise NotFound(f"The indexed image can no longer be read: {e.strerror or e}") from None

    async def indexed_images(self) -> int | None:
        return None if self.index is None else await run_in_threadpool(self._locked, self.index.count)

    async def on_index(self, fn, *args):
        """``fn(index, *args)`` in a worker thread, holding the index's lock; NotFound when the server has no index."""
        if self.index is None:
            raise NotFound("This server has no index (start it with --index)")
        return await run_in_threadpool(self._locked, fn, self.index, *args)

    def queue_depths(self) -> dict[str, int]:
        return {kind: b.waiting for kind, b in (("text", self.texts), ("image", self.images)) if b is not None}

    def _locked(self, fn, *args):
        with self.index_lock:
            return fn(*args)


async def together(*work) -> list[Any]:
    """The results of ``work``, run at once. When one fails, the others are cancelled before the error is answered
    (``asyncio.gather`` would leave them running: their items in the batchers, the model's time, after the request
    and its place in ``max_queue`` are gone)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def get_service(request: Request) -> Service:
    """The app's service, for routes to depend on."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def _load(settings: ServerSettings) -> Embedder:
    from altclip.devices import resolve_device
    from altclip.pipeline import load

    model, processor = load(settings.model, device=resolve_device(settings.device), dtype=settings.dtype)
    return Embedder(model, processor, settings.model, batch_size=settings.max_batch_size)


def public_name(model: str) -> str:
    """A Hub id as it is; a local checkpoint by its folder's name, so that no server path reaches clients."""
    if os.path.isabs(model) or model.startswith(".") or os.path.exists(model):
        return os.path.basename(os.path.normpath(model))
    return model
