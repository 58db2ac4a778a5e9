"""Image files to pixels: the one way every entry point opens and decodes an image, each cost bounded before it is
paid. The library's processor, ``altclip index``, ``embed`` (also on Ray), training, evaluation and the service all
come through here, often in worker processes (``decode_pool``), so this module imports neither torch nor the rest of
the package.

1. ``read_source``: a path (a regular file of at most ``MAX_FILE_BYTES``, read whole: a FIFO put in its place is
   refused, never waited on), a URL (where allowed) or bytes, as bytes.
2. ``open_image``: the header's cost bounded (``headers.excess``: segment, chunk, block and strip counts), then
   ``Image.open`` in the formats of ``FORMATS`` only (no other Pillow parser is reached: EPS's would run
   Ghostscript), then the size checked against the pixel and aspect-ratio limits. Nothing is decoded yet.
3. ``prepare``: the pixels decoded, RGB (transparency composited onto white), upright (EXIF orientation), resized
   and centre-cropped to (H, W, 3) uint8, as transformers' ``CLIPImageProcessor`` does on its PIL path, bit for bit.
   Two documented reduced paths: ``draft`` (the library's ``CLIPImageProcessor(draft=True)``: JPEGs decoded at the
   smallest DCT scale that still covers the resize) and ``reduce`` (the service's: an image at least ``FAR`` times
   the model's input on its short side is decoded at a reduced scale where the format allows it and box-reduced as
   it is resized, to no less than ``REDUCING_GAP`` times the input, then resized to the size the exact path gives).

Whatever Pillow raises for one image (its format plugins signal malformed data with OSError, SyntaxError,
ValueError, KeyError, IndexError, struct.error, ...) becomes that image's ``ImageError``; ``prepare_or_reason`` is
the rule every bulk path applies: pixels, or the reason there are none.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from altclip.processing import headers
from altclip.utils.files import read_regular_file, stat_failure

Image.init()
# The formats any image input may be in; whatever a file is named, its content picks the parser, among these only.
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)
# An image file is read whole (to hash and decode the same bytes): larger ones are refused unread. Images within the
# pixel limit are far smaller, even uncompressed.
MAX_FILE_BYTES = 512 * 2**20
MAX_DOWNLOAD_BYTES = 50 * 2**20
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC
FAR = 4  # reduce: an image is far larger than needed when its short side is this many times the model's input
REDUCING_GAP = 2.0  # reduce: to no less than twice the resize's output (Pillow's resize(reducing_gap=))

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
_OBJECT = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f...>"


class ImageError(ValueError):
    """An input image could not be used. ``reason`` says why; the message also names which image."""

    def __init__(self, reason: str, index: int | None = None, source: str = ""):
        self.reason, self.index, self.source = reason, index, source
        super().__init__(reason if index is None else f"Image {index}{_describe(source)}: {reason}")

    def __reduce__(self):  # pickled whole, from a decoding process back to the caller
        return ImageError, (self.reason, self.index, self.source)


@dataclass(frozen=True)
class Preparation:
    """How an image becomes model-sized pixels: the geometric half of CLIP preprocessing and the limits checked
    before decoding. ``CLIPImageProcessor.preparation`` makes one; small, so it travels to decoding processes."""

    size: dict  # {"shortest_edge": 224}, or {"height", "width"}
    crop_size: dict  # {"height": 224, "width": 224}
    resample: int = BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_convert_rgb: bool = True
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    max_aspect_ratio: float = 50.0
    max_bytes: int = MAX_FILE_BYTES  # an image file is read whole: larger ones are refused unread
    allow_urls: bool = False
    draft: bool = False  # the library's reduced JPEG decoding (CLIPImageProcessor(draft=True))
    reduce: bool = False  # the service's reduced decoding of far larger images

    def check_size(self, size: tuple[int, int]) -> None:
        width, height = size
        if width < 1 or height < 1:
            raise ImageError(f"empty image ({width}x{height})")
        if width * height > self.max_pixels:
            raise ImageError(f"{width}x{height} is {width * height:,} pixels, over the limit of {self.max_pixels:,}")
        if max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise ImageError(f"aspect ratio of {width}x{height} is over the limit of {self.max_aspect_ratio:g}:1")

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after the resize: shortest edge to ``size['shortest_edge']``, or a fixed size."""
        width, height = size
        if "shortest_edge" not in self.size:
            return self.size["width"], self.size["height"]
        target = self.size["shortest_edge"]
        if width <= height:
            return target, int(target * height / width)
        return int(target * width / height), target

    @property
    def need(self) -> int:
        """The longest side the resize asks for: both sides of a decoded image should be at least this."""
        return max(self.size.values())


# ---------------------------------------------------------------------------------------------------------------
# Reading and opening


@dataclass(frozen=True)
class Unreadable:
    """A source that could not be read, carrying why (``readable`` returns one; ``prepare`` raises its reason)."""

    reason: str


def readable(source: Any) -> Any:
    """``source`` as what a decoding process can take: an object with ``read()`` (a tar member) is read here, in
    the calling thread, into bytes (or an ``Unreadable``); paths, URLs and bytes are returned as they are. One that
    says its ``size`` is over ``MAX_FILE_BYTES`` is refused unread, as a file over it is."""
    if not hasattr(source, "read"):
        return source
    size = getattr(source, "size", None)
    if isinstance(size, int) and size > MAX_FILE_BYTES:
        return Unreadable(f"{size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for an image file")
    try:
        return source.read()
    except Exception as e:  # whatever reading one input raises (OSError, tarfile's errors, ...) is that input's
        return Unreadable(getattr(e, "reason", None) or failure(e))


def read_source(source: Any, allow_urls: bool = False, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a bytes-like input, a path (``str`` or ``os.PathLike``: ``read_file``), or a URL (when
    ``allow_urls``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, Unreadable):
        raise ImageError(source.reason)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        if not allow_urls:
            raise ImageError("URLs are not accepted here")
        return _fetch(source)
    if isinstance(source, (str, os.PathLike)):
        return read_file(source, max_bytes)
    raise ImageError(f"unsupported input type {type(source).__name__}")


def read_file(path: str | bytes | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file of at most ``max_bytes``, read whole (a FIFO or device in its place is refused unread)."""
    try:
        return read_regular_file(path, max_bytes)
    except PermissionError as e:
        raise ImageError(f"could not be read: {e.strerror}") from None
    except OSError as e:
        raise ImageError(stat_failure(path, e)) from None
    except ValueError as e:  # not a regular file, or too large
        raise ImageError(str(e)) from None


def open_image(source: Any, preparation: Preparation) -> Image.Image:
    """The image's header read and checked, its pixels not decoded yet: the cost of opening bounded
    (``headers.excess``), the format one of ``FORMATS``, the size within the limits."""
    data = read_source(source, preparation.allow_urls, preparation.max_bytes)
    excess = headers.excess(data)
    if excess is not None:
        raise ImageError(f"not a readable image (refused unopened: {excess})")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            f"not a readable image (unknown or unsupported format: altclip reads {', '.join(FORMATS)})"
        ) from None
    except Exception as e:
        raise ImageError(f"not a readable image ({failure(e)})") from None
    preparation.check_size(image.size)
    return image


def open_upright(source: Any, preparation: Preparation) -> Image.Image:
    """``open_image``, decoded (at the library's draft scale where ``preparation.draft``) and turned upright."""
    image = open_image(source, preparation)
    try:
        if preparation.draft and image.format == "JPEG":
            image.draft(image.mode, (preparation.need, preparation.need))
        image.load()
    except Exception as e:  # a truncated or malformed file fails only when its pixels are decoded
        raise ImageError(f"could not be decoded: {failure(e)}") from None
    upright = UPRIGHT.get(orientation(image))
    return image if upright is None else image.transpose(upright)


# ---------------------------------------------------------------------------------------------------------------
# Preparing


def prepare(source: Any, preparation: Preparation) -> np.ndarray:
    """One image file (path, bytes or URL) decoded, RGB, upright, resized and cropped: (H, W, 3) uint8."""
    if preparation.reduce:
        return _prepare_reduced(source, preparation)
    image = open_upright(source, preparation)
    try:
        return resize_and_crop(image, preparation)
    except Exception as e:
        raise ImageError(f"could not be decoded: {failure(e)}") from None


def prepare_or_reason(source: Any, preparation: Preparation) -> tuple[np.ndarray | None, str]:
    """``prepare``'s pixels and "", or None and the reason there are none: what every bulk path records for an
    image (``Unreadable`` sources give their own reason)."""
    try:
        return prepare(source, preparation), ""
    except ImageError as e:
        return None, e.reason


def prepare_file(
    path: str | bytes | os.PathLike, preparation: Preparation
) -> tuple[str | None, np.ndarray | None, str, float]:
    """A file read once, hashed and prepared: (the BLAKE2b-128 hex digest of the very bytes decoded, pixels, "",
    seconds) or (None, None, the reason, seconds). What the image index keys vectors by."""
    import hashlib
    import time

    start = time.perf_counter()
    try:
        data = read_file(path, preparation.max_bytes)
        content = hashlib.blake2b(data, digest_size=16).hexdigest()
        return content, prepare(data, preparation), "", time.perf_counter() - start
    except ImageError as e:
        return None, None, e.reason, time.perf_counter() - start


def resize_and_crop(image: Image.Image, preparation: Preparation) -> np.ndarray:
    """A decoded image to (H, W, C) uint8: RGB, resized (shortest edge, bicubic), centre-cropped."""
    if preparation.do_convert_rgb:
        image = convert_rgb(image)
    if preparation.do_resize:
        image = image.resize(preparation.output_size(image.size), resample=preparation.resample)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if preparation.do_center_crop:
        array = center_crop(array, preparation.crop_size["height"], preparation.crop_size["width"])
    return array


def pixels_to_decode(source: Any, preparation: Preparation) -> int:
    """How many pixels ``prepare`` will decode: the full size, or the reduced size where the format allows a
    reduced decoding (what the service counts against its per-request limit). Opens the header only."""
    image = open_image(source, preparation)
    if preparation.reduce:
        _reduce_scale(image, preparation)
    width, height = image.size
    image.close()
    return width * height


def _reduce_scale(image: Image.Image, preparation: Preparation) -> tuple[float, float, float, float] | None:
    """Sets a reduced decoding scale (JPEG: DCT scaling) to no less than ``REDUCING_GAP`` times the input; the
    region of the decoded pixels to use (the draft's box) when it took effect."""
    side = int(REDUCING_GAP * preparation.need)
    size = image.size
    drafted = image.draft(image.mode, (side, side))  # JPEG; other formats ignore it
    return drafted[1] if drafted and image.size != size else None


def _prepare_reduced(source: Any, preparation: Preparation) -> np.ndarray:
    image = open_image(source, preparation)
    size = image.size
    try:
        box = _reduce_scale(image, preparation)
        image.load()
        upright = UPRIGHT.get(orientation(image))
        far = box is not None or min(size) >= FAR * preparation.need
        if far and preparation.do_resize:  # resized before it is turned: smaller then
            swapped = upright in SWAPPED
            width, height = size[::-1] if swapped else size
            target = preparation.output_size((width, height))  # from the full size, whatever the draft
            image = convert_rgb(image).resize(
                target[::-1] if swapped else target, resample=preparation.resample, box=box, reducing_gap=REDUCING_GAP
            )
        if upright is not None:
            image = image.transpose(upright)
        return resize_and_crop(image, preparation)  # (a resize to the size it has is a copy)
    except Exception as e:
        raise ImageError(f"could not be decoded: {failure(e)}") from None


def thumbnail(path: Any, size: int, preparation: Preparation) -> bytes:
    """A JPEG of at most ``size`` x ``size`` pixels of the image file at ``path`` (``str``, ``bytes`` or
    ``os.PathLike``), upright."""
    image = open_image(read_file(path, preparation.max_bytes), preparation)
    try:
        image.thumbnail((size, size))  # decodes JPEGs at a reduced scale itself
        upright = UPRIGHT.get(orientation(image))
        if upright is not None:
            image = image.transpose(upright)
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85)
    except Exception as e:
        raise ImageError(f"could not be decoded: {failure(e)}") from None
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def convert_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as transformers does)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) centre crop; an image smaller than the crop is padded with zeros around it."""
    h, w = array.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return array[top : top + height, left : left + width]
    out = np.zeros((max(h, height), max(w, width), array.shape[2]), dtype=array.dtype)
    pad_top, pad_left = -(-(out.shape[0] - h) // 2), -(-(out.shape[1] - w) // 2)
    out[pad_top : pad_top + h, pad_left : pad_left + w] = array
    top, left = (out.shape[0] - height) // 2, (out.shape[1] - width) // 2
    return out[top : top + height, left : left + width]


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 when there is none, or the EXIF block is malformed: that should not lose the image)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1


def failure(error: BaseException) -> str:
    """Why Pillow could not open or decode an image, in a few words, never showing an object's memory address."""
    if isinstance(error, UnidentifiedImageError):
        return "unknown or unsupported format"
    if isinstance(error, MemoryError):
        return "decoding it needs more memory than it may use"
    text = str(error) if isinstance(error, (OSError, SyntaxError, ValueError)) else ""
    text = _OBJECT.sub("the image", text or f"{type(error).__name__}: {error}".removesuffix(": "))
    return text if len(text) <= 200 else text[:197] + "..."


def _describe(source: str) -> str:
    return f" ({source})" if source else ""


def _fetch(url: str, timeout: float = 20.0) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except OSError as e:
        raise ImageError(f"could not be downloaded ({e})") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ImageError(f"download is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB")
    return data
