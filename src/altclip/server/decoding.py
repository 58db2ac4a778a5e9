"""Decoding the images of requests, each cost bounded before it is paid.

1. ``open``: each image's header alone, in the formats the service reads (``FORMATS``; not every format Pillow
   knows: EPS, for one, would run Ghostscript), checked against the per-image limits (pixels, aspect ratio). An image
   far larger than the model needs gets a reduced decoding size where the format allows it (JPEG: DCT scaling in
   the decoder, Pillow's ``draft``). Then the pixels the request would decode, in all, are checked against
   ``max_request_pixels``: a request over it is refused before any image is decoded.
2. ``decode``: the pixels, in a pool of ``decode_workers`` threads (Pillow releases the GIL), so at most that many
   images are held decoded at once, whatever the number of requests. An image still far larger than needed is
   box-reduced by a whole factor (any format; Pillow's ``reducing_gap``) as it is resized. A request that has gone
   (timeout, client disconnect) leaves its images that have not started in the queue, and they are never decoded.

"Far larger" is at least 4x the model's input on the short side (896 pixels for a 224 input): such an image is
reduced to no less than twice the input, then resized to the size the exact path resizes it to (computed from the
image's full size). The pixels differ a little from the exact path's (``draft=False`` in the settings keeps every
image on it); images under that size take the exact path.

Whatever Pillow raises for one image (it raises many kinds of errors for malformed files) becomes that image's
``ImageError`` (422), and no message shows an object's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from altclip.processing.image_processing import CLIPImageProcessor, ImageError, convert_rgb

Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)
_OBJECT = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"
REDUCING_GAP = 2.0  # an image is reduced to no less than twice the resize's output (Pillow's resize(reducing_gap=))


# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose turns it)
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPPED = {5, 6, 7, 8}  # the orientations that swap width and height


@dataclass
class Opened:
    image: Image.Image  # the header read, the pixels not decoded; with its decoding size set (draft) where reduced
    size: tuple[int, int]  # (width, height) as the file has it, before any draft
    box: tuple[float, float, float, float] | None = None  # after a draft: the region of the decoded pixels to use


class Decoder:
    def __init__(self, processor: CLIPImageProcessor, settings: Any):
        self.processor = processor
        self.max_request_pixels: int = settings.max_request_pixels
        self.draft: bool = settings.draft
        need = max(processor.size.values())
        self.reduced_side = 2 * need  # a far larger image is reduced to no less than this
        self.far_side = 4 * need  # an image is far larger when its short side is at least this
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, images: list[bytes]) -> list[np.ndarray]:
        """Each image decoded, resized and cropped to (H, W, 3) uint8, as ``CLIPImageProcessor.prepare`` does."""
        opened = await self._in_pool(self.open_all, images)
        return list(await asyncio.gather(*(self._in_pool(self.decode, im, i) for i, im in enumerate(opened))))

    async def thumbnail(self, path: bytes, size: int) -> bytes:
        """A JPEG of at most ``size`` x ``size`` pixels of the image file at ``path``."""
        return await self._in_pool(self._thumbnail, path, size)

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- in the pool --------------------------------------------------------------------------------------------

    def open_all(self, images: list[bytes]) -> list[Opened]:
        opened = [self.open(data, i) for i, data in enumerate(images)]
        total = sum(o.image.width * o.image.height for o in opened)
        if total > self.max_request_pixels:
            raise ImageError(
                f"the images of this request have {total:,} pixels to decode, over the limit of "
                f"{self.max_request_pixels:,} per request: send fewer or smaller images"
            )
        return opened

    def open(self, data: bytes, index: int = 0) -> Opened:
        """The image's header, checked; its pixels are not decoded yet."""
        with _image_errors(index):
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            size = image.size
            self.processor.check_size(size)
            if not self.draft:
                return Opened(image, size)
            drafted = image.draft(image.mode, (self.reduced_side, self.reduced_side))  # JPEG; others ignore it
            return Opened(image, size, drafted[1] if drafted and image.size != size else None)

    def decode(self, opened: Opened, index: int = 0) -> np.ndarray:
        """The image decoded, RGB, upright, resized and cropped: (H, W, 3) uint8."""
        with _image_errors(index):
            image = opened.image
            image.load()
            upright = UPRIGHT.get(_orientation(image))
            far = opened.box is not None or min(opened.size) >= self.far_side
            if self.draft and far and self.processor.do_resize:  # resized before it is turned: smaller then
                image = convert_rgb(image).resize(
                    self._target(opened.size, upright in SWAPPED),
                    resample=self.processor.resample,
                    box=opened.box,
                    reducing_gap=REDUCING_GAP,
                )
            if upright is not None:
                image = image.transpose(upright)
            return self.processor.resize_and_crop(image)  # (a resize to the size it has is a copy)

    def _target(self, size: tuple[int, int], swapped: bool) -> tuple[int, int]:
        """The size the exact path resizes an image of ``size`` to (from its full size, whatever the draft),
        in the image's own orientation: ``swapped`` when it becomes upright by a quarter turn."""
        width, height = size[::-1] if swapped else size
        target = self.processor.output_size((width, height))
        return target[::-1] if swapped else target

    def _thumbnail(self, path: bytes, size: int) -> bytes:
        # O_NONBLOCK: a FIFO put in the file's place must not hold a decoding thread forever
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ImageError("not a regular file")
            with _image_errors(None):
                image = Image.open(f, formats=FORMATS)
                self.processor.check_size(image.size)
                image.thumbnail((size, size))  # decodes JPEGs at a reduced scale itself
                _exif_transpose(image)
                out = io.BytesIO()
                image.convert("RGB").save(out, "JPEG", quality=85)
        return out.getvalue()


@contextlib.contextmanager
def _image_errors(index: int | None) -> Iterator[None]:
    """Any error of one image's decoding as its ImageError."""
    try:
        yield
    except ImageError as e:
        raise ImageError(e.reason, index) from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a format the service reads ({', '.join(FORMATS)})", index) from None
    except Exception as e:  # Pillow raises OSError, ValueError, KeyError, struct.error, ... for malformed files
        detail = _OBJECT.sub("the image", str(e))[:200] or type(e).__name__
        raise ImageError(f"could not be decoded ({detail})", index) from None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a malformed EXIF block should not lose the image
        return 1


def _exif_transpose(image: Image.Image) -> None:
    """Turns the image upright, as its EXIF orientation says (in place: no copy of an upright image)."""
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
