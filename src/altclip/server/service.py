"""What the service does, behind the routes: the model (an ``Embedder``) with batchers that gather concurrent
requests into model calls, its own copy of the image processor (with the service's limits, URLs off), the index,
the zero-shot classifiers, the metrics, and whether it is ready. Routes reach it through ``get_service``."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from altclip import zeroshot
from altclip.inference import Embedder
from altclip.server.batching import DynamicBatcher, QueueFull
from altclip.server.errors import NotFound, Timeout
from altclip.server.metrics import Metrics
from altclip.server.settings import ServerSettings


class Service:
    def __init__(self, settings: ServerSettings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder  # None: loaded from settings.model at start
        self.image_processor = None  # our own copy, with the service's limits
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
        if settings.index:
            from altclip.index import ImageIndex

            self.index = ImageIndex(settings.index, create=False)
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
        if self.index is not None:
            self.index.close()

    def _batcher(self, kind: str, fn) -> DynamicBatcher:
        s = self.settings
        batcher = DynamicBatcher(
            fn,
            executor=self.executor,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            on_batch=lambda size, seconds: self.metrics.model_call(kind, size, seconds),
        )
        batcher.start()
        return batcher

    # -- embedding ----------------------------------------------------------------------------------------------

    async def _run(self, batcher: DynamicBatcher, items: list) -> np.ndarray:
        try:
            return np.stack(await asyncio.wait_for(batcher.submit(items), self.settings.request_timeout_s))
        except asyncio.TimeoutError:
            raise Timeout(f"The request took longer than {self.settings.request_timeout_s:g} s") from None

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self._run(self.texts, texts)

    async def embed_images(self, images: list[bytes]) -> np.ndarray:
        """Decoded, resized and cropped in worker threads (in parallel across requests), checked against the
        limits first; then embedded through the image batcher."""
        if not self.images.has_room(len(images)):  # refuse before the costly part
            raise QueueFull("the image queue is full")
        prepare = self.image_processor.prepare
        arrays = await asyncio.gather(*(run_in_threadpool(prepare, data, index=i) for i, data in enumerate(images)))
        return await self._run(self.images, list(arrays))

    # -- what the endpoints answer ------------------------------------------------------------------------------

    async def classifier(self, prompts: list[list[str]]) -> torch.Tensor:
        """The zero-shot classifier of ``prompts`` (one list per label), its prompts embedded through the batcher."""
        cached = self.classifiers.get(prompts)
        if cached is not None:
            return cached
        vectors = await self.embed_texts([p for ps in prompts for p in ps])
        return self.classifiers.put(prompts, zeroshot.classifier_from_prompts(torch.from_numpy(vectors), prompts))

    async def classify(self, image: bytes, labels: list[str], templates: zeroshot.Templates) -> list[dict[str, Any]]:
        prompts = zeroshot.label_prompts(labels, templates)
        image_embeds = torch.from_numpy(await self.embed_images([image]))
        classifier = await self.classifier(prompts)
        probs = zeroshot.scores(image_embeds, classifier, self.embedder.logit_scale).probs[0]
        return zeroshot.ranked(labels, probs.tolist())

    async def similarity(self, texts: list[str], images: list[bytes]) -> dict[str, np.ndarray]:
        image_embeds, text_embeds = await asyncio.gather(self.embed_images(images), self.embed_texts(texts))
        return self.embedder.scores(image_embeds, text_embeds)

    async def search(self, query: str | None, image: bytes | None, top_k: int) -> list:
        if self.index is None:
            raise NotFound("This server has no index (start it with --index)")
        vectors = await (self.embed_images([image]) if image is not None else self.embed_texts([query]))
        return await run_in_threadpool(self._locked, self.index.search, vectors[0], top_k)

    async def thumbnail(self, file_id: int) -> bytes:
        if self.index is None:
            raise NotFound("This server has no index")
        path = await run_in_threadpool(self._locked, self.index.file_path, file_id)
        if path is None:
            raise NotFound(f"No indexed image with id {file_id}")
        return await run_in_threadpool(_thumbnail, path, self.settings.thumbnail_size)

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


def get_service(request: Request) -> Service:
    """The app's service, for routes to depend on."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def _load(settings: ServerSettings) -> Embedder:
    from altclip.devices import resolve_device
    from altclip.pipeline import load

    model, processor = load(settings.model, device=resolve_device(settings.device), dtype=settings.dtype)
    return Embedder(model, processor, settings.model, batch_size=settings.max_batch_size)


def _thumbnail(path: bytes, size: int) -> bytes:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=85)
    except OSError:
        raise NotFound("The indexed image is no longer readable") from None
    return out.getvalue()
