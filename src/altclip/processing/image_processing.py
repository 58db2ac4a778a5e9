"""CLIP image preprocessing, equal to transformers' ``CLIPImageProcessor`` on its PIL path.

RGB (transparency composited onto white), shortest edge resized to 224 with PIL's bicubic filter, centre crop
to 224x224, scaled to [0, 1], normalised with OpenAI's mean and std. Inputs may be paths, bytes, URLs, PIL
images, numpy arrays or torch tensors. Images that would cost unreasonable time or memory (huge pixel counts,
absurd aspect ratios) are refused with an error naming the image, before they are decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from altclip.loading.hub import HUB_KEYWORDS
from altclip.processing import decoding
from altclip.processing.batch import BatchFeature
from altclip.processing.decoding import (  # noqa: F401  (convert_rgb and center_crop: part of this module's API)
    BICUBIC,
    ImageError,
    Preparation,
    center_crop,
    convert_rgb,
)
from altclip.utils.jsonsafe import read_json

PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # transformers 5 saves the image processor's settings nested in it
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray | torch.Tensor


@dataclass
class CLIPImageProcessor:
    do_resize: bool = True
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = BICUBIC
    do_center_crop: bool = True
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: Sequence[float] = OPENAI_CLIP_MEAN
    image_std: Sequence[float] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    # Our limits, checked before decoding. Pillow's own decompression-bomb guard stays on as well.
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    max_aspect_ratio: float = 50.0  # 1x20000 would become 224x4,480,000 pixels before the crop
    allow_urls: bool = True  # fetch http(s) URLs given as inputs (never enabled by the server)
    # Decode JPEGs at a reduced scale (1/2, 1/4, 1/8, done by the decoder in the DCT domain) as long as the image
    # stays larger than the resize's output. Several times faster and lighter on big photos, but not the exact
    # path: the pixels differ slightly from transformers' (benchmarks/jpeg_throughput.py measures by how much).
    draft: bool = False

    def __post_init__(self) -> None:
        # Older configs (BAAI/AltCLIP's) give sizes as one int.
        if isinstance(self.size, int):
            self.size = {"shortest_edge": self.size}
        if isinstance(self.crop_size, int):
            self.crop_size = {"height": self.crop_size, "width": self.crop_size}
        if not ("shortest_edge" in self.size or {"height", "width"} <= set(self.size)):
            raise ValueError(f"size must give 'shortest_edge' or 'height' and 'width', got {self.size}")

    # -----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPImageProcessor:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        for ours in ("max_pixels", "max_aspect_ratio", "allow_urls", "draft"):
            del out[ours]
        return {**out, "image_processor_type": "CLIPImageProcessor", "processor_class": "AltCLIPProcessor"}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> CLIPImageProcessor:
        """Reads ``preprocessor_config.json``, or the ``image_processor`` part of transformers 5's
        ``processor_config.json``. Keywords: the hub keywords of ``altclip.loading.hub.resolve_file`` (revision, subfolder,
        ...) and settings that override the file's (``size={"shortest_edge": 180}``)."""
        from altclip.loading.hub import resolve_first

        hub = {k: kwargs.pop(k) for k in HUB_KEYWORDS if k in kwargs}
        path = resolve_first(name_or_path, [PREPROCESSOR_FILE, PROCESSOR_FILE], what="an image processor config", **hub)
        data = read_json(path)
        if path.name == PROCESSOR_FILE:
            if "image_processor" not in data:
                raise ValueError(f"{path} has no image_processor settings")
            data = data["image_processor"]
        return cls.from_dict({**data, **kwargs})

    @classmethod
    def has_config(cls, name_or_path: str | os.PathLike, **hub: Any) -> bool:
        from altclip.loading.hub import resolve_file

        return any(resolve_file(name_or_path, f, required=False, **hub) for f in (PREPROCESSOR_FILE, PROCESSOR_FILE))

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / PREPROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # -----------------------------------------------------------------------------------------------------------

    model_input_names = ["pixel_values"]

    def __call__(
        self, images: ImageInput | Sequence[ImageInput], return_tensors: str | None = "pt", **settings: Any
    ) -> BatchFeature:
        """``pixel_values`` (B, 3, H, W) float32 for one image or a list of them. ``settings`` override this
        processor's for the call (``size={"shortest_edge": 180}``, ``do_center_crop=False``, ...)."""
        if settings:
            return dataclasses.replace(self, **settings)(images, return_tensors=return_tensors)
        batch = images if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ImageError("No images given")
        pixels = self.normalize(np.stack([self.prepare(image, index=i) for i, image in enumerate(batch)]))
        if return_tensors == "pt":
            return BatchFeature(pixel_values=torch.from_numpy(pixels))
        return BatchFeature(pixel_values=pixels if return_tensors == "np" else list(pixels))

    def preprocess(self, image: ImageInput, index: int = 0) -> np.ndarray:
        """One image -> (3, H, W) float32 array."""
        return self.normalize(self.prepare(image, index=index)[None])[0]

    def prepare(self, image: ImageInput, index: int = 0) -> np.ndarray:
        """The geometric half of preprocessing: load, RGB, resize, crop -> (H, W, 3) uint8. Cheap to send between
        processes (a quarter of the float32 pixels); ``normalize`` finishes the job for a whole batch. Files, bytes
        and URLs go through ``altclip.processing.decoding.prepare``, the path every entry point takes."""
        if _is_file(image):
            with _naming(index, image):
                return decoding.prepare(image, self.preparation)
        pil = self.load(image, index=index)
        try:
            return self.resize_and_crop(pil)
        except Exception as e:  # a lazily decoded image fails only when its pixels are decoded
            raise ImageError(f"could not be decoded: {decoding.failure(e)}", index, _source(image)) from None

    @property
    def preparation(self) -> Preparation:
        """This processor's geometry and limits, as the decoding functions (and decoding processes) take them."""
        return Preparation(
            size=self.size,
            crop_size=self.crop_size,
            resample=self.resample,
            do_resize=self.do_resize,
            do_center_crop=self.do_center_crop,
            do_convert_rgb=self.do_convert_rgb,
            max_pixels=self.max_pixels,
            max_aspect_ratio=self.max_aspect_ratio,
            allow_urls=self.allow_urls,
            draft=self.draft,
        )

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        return decoding.resize_and_crop(image, self.preparation)

    def normalize(self, arrays: np.ndarray) -> np.ndarray:
        """(B, H, W, C) uint8 -> (B, C, H, W) float32: rescaled to [0, 1] and normalised."""
        arrays = np.asarray(arrays)
        if not arrays.flags.writeable:  # a view of a decoded image: torch warns about sharing read-only memory
            arrays = arrays.copy()
        return self.normalize_tensor(torch.from_numpy(arrays)).numpy()

    def normalize_tensor(self, arrays: torch.Tensor) -> torch.Tensor:
        """``normalize`` for a (B, H, W, C) uint8 tensor, on its device (a GPU spares the CPU this work): in
        transformers' order of operations (rescale in float64, then float32 arithmetic), each step correctly
        rounded, so every device gives the same numbers."""
        x = arrays.double() * self.rescale_factor if self.do_rescale else arrays.double()
        x = x.float()
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(self.image_std, dtype=torch.float32, device=x.device)
            x = (x - mean) / std
        return x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)

    def load(self, image: ImageInput, index: int = 0) -> Image.Image:
        """Opens any supported input as a PIL image, checked against the size limits before it is decoded.

        EXIF orientation is applied to files, bytes and URLs, which we decode ourselves
        (``altclip.processing.decoding.open_upright``); a PIL image is taken as the caller decoded it.
        """
        with _naming(index, image):
            if _is_file(image):
                return decoding.open_upright(image, self.preparation)
            try:
                pil = image if isinstance(image, Image.Image) else array_to_pil(image)
            except ImageError:
                raise
            except Exception as e:
                raise ImageError(f"not a readable image ({decoding.failure(e)})") from None
            self.check_size(pil.size)
            return pil

    def check_size(self, size: tuple[int, int]) -> None:
        self.preparation.check_size(size)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after the resize: shortest edge to ``size['shortest_edge']``, or a fixed size."""
        return self.preparation.output_size(size)


def array_to_pil(image: np.ndarray | torch.Tensor) -> Image.Image:
    """A numpy array or tensor (HW, HWC or CHW; uint8, or float in [0, 1]) as a PIL image."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"array of shape {array.shape} is not an image (HW, HWC or CHW with 1, 3 or 4 channels)")
    if array.size == 0:
        raise ImageError(f"empty image (shape {array.shape})")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all():
            raise ImageError("array holds NaN or infinite values")
        if array.dtype.kind == "f" and array.min() >= 0 and array.max() <= 1:
            array = array * 255  # floats in [0, 1], as transformers reads them
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"values in [{array.min()}, {array.max()}], expected uint8 or floats in [0, 1]")
        array = array.astype(np.uint8)
    return Image.fromarray(array)


def _is_file(image: Any) -> bool:
    """Whether ``image`` is a file to decode (a path, bytes or a URL) rather than pixels the caller has."""
    return not isinstance(image, (Image.Image, np.ndarray, torch.Tensor))


@contextlib.contextmanager
def _naming(index: int, image: Any) -> Iterator[None]:
    """Gives an ImageError raised inside the number and the path or URL of the image it is about."""
    try:
        yield
    except ImageError as e:
        raise ImageError(e.reason, index, _source(image)) from None


def _source(image: Any) -> str:
    """A path or URL input as text, for error messages; "" for other inputs."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else ""


def load_image(image: ImageInput) -> Image.Image:
    """Opens an image input (path, bytes, URL, array, PIL image) with the default limits."""
    return CLIPImageProcessor().load(image)
