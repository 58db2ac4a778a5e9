"""CLIP image preprocessing against transformers' CLIPImageProcessor (PIL path), and bad images."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altclip import CLIPImageProcessor, ImageError
from hostile_images import crafted

PHOTOS = sorted((Path(__file__).parent.parent / "examples" / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def ref():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


def pixels_ours(image, processor=None) -> np.ndarray:
    return (processor or CLIPImageProcessor())(image, return_tensors="np")["pixel_values"]


def pixels_ref(ref, image) -> np.ndarray:
    return ref(image, return_tensors="np")["pixel_values"]


def assert_pixels_equal(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape == (1, 3, 224, 224), what
    assert np.abs(a - b).max() <= 1e-5, f"{what}: {np.abs(a - b).max()}"


def test_there_are_real_photos():
    assert len(PHOTOS) >= 8


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_photos_match_reference(ref, photo):
    image = Image.open(photo)
    assert_pixels_equal(pixels_ours(image), pixels_ref(ref, image), photo.name)


@pytest.mark.parametrize("size", [(1000, 223), (97, 713), (50, 40), (224, 224), (225, 224), (4000, 3000), (301, 2999)])
def test_sizes_and_aspect_ratios_match_reference(ref, size):
    image = Image.open(PHOTOS[0]).convert("RGB").resize(size)
    assert_pixels_equal(pixels_ours(image), pixels_ref(ref, image), str(size))


def _variants() -> dict[str, Image.Image]:
    base = Image.open(PHOTOS[2]).convert("RGB")
    rgba = np.array(base.convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None]
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.info["transparency"] = 5
    cmyk = io.BytesIO()
    base.convert("CMYK").save(cmyk, "JPEG")
    sixteen = io.BytesIO()
    Image.fromarray(np.array(base.convert("L")).astype(np.uint16) * 257).save(sixteen, "PNG")
    return {
        "grayscale": base.convert("L"),
        "rgba": Image.fromarray(rgba),
        "la": base.convert("LA"),
        "palette-transparency": palette,
        "cmyk-jpeg": Image.open(io.BytesIO(cmyk.getvalue())),
        "16-bit-png": Image.open(io.BytesIO(sixteen.getvalue())),
        "1-bit": base.convert("1"),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_modes_match_reference(ref, name):
    image = _variants()[name]
    if name == "cmyk-jpeg":
        assert image.mode == "CMYK"
    if name == "16-bit-png":
        assert image.mode.startswith("I")
    assert_pixels_equal(pixels_ours(image), pixels_ref(ref, image), name)


def test_arrays_and_tensors(ref):
    image = Image.open(PHOTOS[1]).convert("RGB")
    expected = pixels_ref(ref, image)
    hwc = np.array(image)
    for name, value in {
        "HWC uint8": hwc,
        "CHW uint8": np.ascontiguousarray(hwc.transpose(2, 0, 1)),
        "HWC tensor": torch.from_numpy(hwc),
        "CHW tensor": torch.from_numpy(hwc).permute(2, 0, 1),
        # transformers rescales float arrays twice (flattening the image); we read them as intensities in [0, 1].
        "HWC float in [0, 1]": hwc.astype(np.float32) / 255,
    }.items():
        assert_pixels_equal(pixels_ours(value), expected, name)
    gray = np.array(image.convert("L"))
    assert_pixels_equal(pixels_ours(gray), pixels_ref(ref, image.convert("L")), "HW uint8")


def test_paths_and_bytes_apply_exif_orientation(ref, tmp_path):
    image = Image.open(PHOTOS[0].parent / "cat.jpg").convert("RGB")  # 451 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    from PIL import ImageOps

    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (300, 451)
    expected = pixels_ref(ref, upright)
    assert_pixels_equal(pixels_ours(path), expected, "path")
    assert_pixels_equal(pixels_ours(str(path)), expected, "str path")
    assert_pixels_equal(pixels_ours(path.read_bytes()), expected, "bytes")
    # A PIL image is taken as the caller decoded it: no rotation.
    assert_pixels_equal(pixels_ours(Image.open(path)), pixels_ref(ref, Image.open(path)), "PIL")


def test_config_forms(tmp_path, ref):
    legacy = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    old = CLIPImageProcessor.from_pretrained(tmp_path)
    assert old.size == {"shortest_edge": 224} and old.crop_size == {"height": 224, "width": 224}
    new = CLIPImageProcessor(size={"height": 200, "width": 300}, crop_size={"height": 180, "width": 180})
    new.save_pretrained(tmp_path / "new")
    again = CLIPImageProcessor.from_pretrained(tmp_path / "new")
    assert again.size == {"height": 200, "width": 300}
    image = Image.open(PHOTOS[3])
    assert again(image).pixel_values.shape == (1, 3, 180, 180)
    assert_pixels_equal(pixels_ours(image, old), pixels_ref(ref, image), "legacy config")
    import transformers

    theirs = transformers.CLIPImageProcessor.from_pretrained(str(tmp_path / "new"))
    assert np.abs(pixels_ours(image, again) - theirs(image, return_tensors="np")["pixel_values"]).max() <= 1e-5


# --- bad input ---------------------------------------------------------------------------------------------------


def test_batch_error_names_the_item(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageError, match=r"Image 1 \(.*broken\.jpg\): not a readable image") as e:
        CLIPImageProcessor()([PHOTOS[0], bad, PHOTOS[1]])
    assert e.value.index == 1 and e.value.reason.startswith("not a readable image")


def test_truncated_file(tmp_path):
    data = PHOTOS[0].read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"Image 0 \(.*truncated\.jpg\): .*(truncated|could not)"):
        CLIPImageProcessor()(path)


@pytest.mark.parametrize(
    "value, message",
    [
        (b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
        (b"", "not a readable image"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((10, 10, 5), np.uint8), "is not an image"),
        (np.full((10, 10), 300.0), r"values in \[300.0, 300.0\]"),
        (np.full((10, 10), np.nan), "NaN"),
        ("/no/such/file.jpg", "no such file"),
        (12345, "unsupported input type int"),
    ],
)
def test_bad_inputs(value, message):
    with pytest.raises(ImageError, match=message):
        CLIPImageProcessor()(value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        CLIPImageProcessor()(tmp_path)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(path)
    processor = CLIPImageProcessor(max_pixels=5_000_000)
    with pytest.raises(ImageError, match=r"3000x2000 is 6,000,000 pixels, over the limit of 5,000,000"):
        processor(path)
    assert CLIPImageProcessor()(path).pixel_values.shape == (1, 3, 224, 224)


def test_absurd_aspect_ratio_is_refused_quickly(tmp_path):
    path = tmp_path / "line.png"
    Image.new("RGB", (1, 20000), "white").save(path)
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"aspect ratio of 1x20000 is over the limit of 50:1"):
        CLIPImageProcessor()(path)
    assert time.perf_counter() - start < 1.0  # the reference spends tens of seconds and GBs on this image
    assert CLIPImageProcessor(max_aspect_ratio=30)(Image.new("RGB", (25, 500))).pixel_values.shape == (1, 3, 224, 224)


def test_pillow_bomb_guard_stays_on():
    import altclip  # noqa: F401  (importing must not switch the guard off)

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > 0


def test_urls_can_be_refused():
    with pytest.raises(ImageError, match="URLs are not accepted"):
        CLIPImageProcessor(allow_urls=False)("http://127.0.0.1:1/x.jpg")


@pytest.mark.parametrize("name", sorted(crafted()))
def test_malformed_files_of_any_format_are_image_errors(tmp_path, name):
    """Pillow answers some malformed files with ValueError, KeyError, NotImplementedError or its own error types,
    from opening or from decoding; each is that image's ImageError, whatever the file is called."""
    data = crafted()[name]
    with pytest.raises(ImageError, match="not a readable image|could not be decoded"):
        CLIPImageProcessor()(data)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"Image 0 \(.*photo\.jpg\)"):
        CLIPImageProcessor().prepare(path)


def test_eps_content_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    with pytest.raises(ImageError, match=r"not a readable image \(unknown or unsupported format: altclip reads JPEG"):
        CLIPImageProcessor()(path)
    assert calls == []


def test_error_text_shows_no_memory_address():
    with pytest.raises(ImageError) as e:
        CLIPImageProcessor()(b"not an image at all")
    assert e.value.reason.startswith("not a readable image (unknown or unsupported format: altclip reads JPEG, PNG")
    assert "0x" not in str(e.value)


def test_symbolic_link_problems_are_named(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match="symbolic link loop"):
        CLIPImageProcessor()(loop)
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="broken symbolic link"):
        CLIPImageProcessor()(broken)
