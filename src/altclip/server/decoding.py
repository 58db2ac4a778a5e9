"""Decoding the images of requests: an async layer over the library's decoding (``altclip.processing.decoding``, the
one opener every entry point uses) in a pool of ``decode_workers`` worker processes (``decode_pool``).

1. Each image's header, in a worker: its opening cost bounded (segment, chunk and strip counts), its format one of
   the allow-list, its size within the per-image limits; then the pixels the request would decode, in all, are
   checked against ``max_request_pixels``: a request over it is refused before any image is decoded. Nothing
   opened is kept between the two steps.
2. Each image decoded, resized and cropped in a worker, with the service's reduced decoding of images far larger
   than the model needs (``draft`` in the settings; see ``decoding.prepare``).

A worker holds one image at a time, within a budget (CPU seconds up to the request's timeout, memory for the
largest image the limits admit), so decoding memory follows ``decode_workers``, whatever the number of requests, and
a hostile file costs one worker's budget. The work of a request that has gone (timeout, client disconnect) stops:
its images not yet started never are, and the worker decoding one is ended and replaced. Whatever goes wrong with
an image is its ``ImageError`` (422), and no message shows an object's address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import numpy as np

from altclip.processing import decoding
from altclip.processing.decode_pool import ENVIRONMENT, DecodePool, memory_budget
from altclip.processing.decoding import FORMATS, ImageError  # noqa: F401  (the formats the service reads)
from altclip.processing.image_processing import CLIPImageProcessor


class Decoder:
    def __init__(self, processor: CLIPImageProcessor, settings: Any):
        self.preparation = dataclasses.replace(processor.preparation, allow_urls=False, reduce=settings.draft)
        self.max_request_pixels: int = settings.max_request_pixels
        self.pool = DecodePool(
            settings.decode_workers,
            os.environ.get(ENVIRONMENT) or "processes",
            cpu_seconds=getattr(settings, "request_timeout_s", 30.0),
            memory_bytes=memory_budget(self.preparation.max_pixels, getattr(settings, "max_body_bytes", 20 * 2**20)),
        )

    def close(self) -> None:
        self.pool.close()

    async def prepare(self, images: list[bytes]) -> list[np.ndarray]:
        """Each image decoded, resized and cropped to (H, W, 3) uint8, as ``CLIPImageProcessor.prepare`` does."""
        pixels = await self._each(decoding.pixels_to_decode, images)
        total = sum(pixels)
        if total > self.max_request_pixels:
            raise ImageError(
                f"the images of this request have {total:,} pixels to decode, over the limit of "
                f"{self.max_request_pixels:,} per request: send fewer or smaller images"
            )
        return await self._each(decoding.prepare, images)

    async def thumbnail(self, path: bytes, size: int) -> bytes:
        """A JPEG of at most ``size`` x ``size`` pixels of the image file at ``path``."""
        return await self.pool.run(decoding.thumbnail, path, size, self.preparation)

    async def _each(self, fn, images: list[bytes]) -> list:
        """``fn(image, preparation)`` for every image, in the pool. The error of the first image by position that
        fails is raised; every task still running is then cancelled (its worker ended), as when the request goes."""
        tasks = [asyncio.ensure_future(self._one(fn, data, i)) for i, data in enumerate(images)]
        try:
            return [await task for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, fn, data: bytes, index: int):
        try:
            return await self.pool.run(fn, data, self.preparation)
        except ImageError as e:
            raise ImageError(e.reason, index) from None
