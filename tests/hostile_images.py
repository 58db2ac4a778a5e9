"""Malformed image files: a few crafted ones that once escaped the decoder's error handling, and seeded mutations
of valid files in many formats, for fuzzing everything that decodes images."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgb(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def crafted() -> dict[str, bytes]:
    """Files Pillow answers with exceptions other than OSError (when opened, or when decoded)."""
    sgi = struct.pack(">hbbHHHH", 474, 0, 1, 3, 10, 10, 5) + b"\0" * 600  # SGI with 5 channels: ValueError
    ppm = b"P6\n3\x00\x00 4\n255\n" + b"\0" * 64  # a NUL inside the width: ValueError
    im = _saved(_rgb(), "IM").replace(b"Image type: RGB image", b"Image type: RGB imaZe", 1)  # KeyError
    dds = bytearray(_saved(_rgb().convert("RGBA"), "DDS"))
    dds[80:84] = struct.pack("<I", 0x200000)  # unknown pixel-format flags: NotImplementedError
    blp = bytearray(_saved(_rgb().convert("P"), "BLP"))
    blp[8] = 111  # unknown compression, found when the pixels are decoded: BLPFormatError
    xbm = b"#define im_width 8\n#define im_height 4x\nstatic char im_bits[] = {0};\n"  # ValueError
    return {"sgi": sgi, "ppm": ppm, "im": im, "dds": bytes(dds), "blp": bytes(blp), "xbm": xbm}


SEED_FORMATS = [
    ("JPEG", "RGB", {}),
    ("JPEG", "L", {"progressive": True}),
    ("PNG", "RGB", {}),
    ("PNG", "P", {}),
    ("PNG", "LA", {}),
    ("GIF", "P", {}),
    ("BMP", "RGB", {}),
    ("TIFF", "RGB", {}),
    ("TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("TIFF", "I;16", {}),
    ("WEBP", "RGB", {}),
    ("ICO", "RGB", {}),
    ("PPM", "RGB", {}),
    ("SGI", "RGB", {}),
    ("IM", "RGB", {}),
    ("DDS", "RGBA", {}),
    ("TGA", "RGB", {}),
    ("PCX", "RGB", {}),
    ("JPEG2000", "RGB", {}),
    ("QOI", "RGB", {}),
    ("MSP", "1", {}),
    ("XBM", "1", {}),
    ("BLP", "P", {}),
    ("SPIDER", "F", {}),
    ("AVIF", "RGB", {}),
]


def seeds() -> dict[str, bytes]:
    """Small valid files, one per format and mode this Pillow can write."""
    out = {}
    for fmt, mode, options in SEED_FORMATS:
        try:
            out[f"{fmt}-{mode}-{len(out)}"] = _saved(_rgb().convert(mode), fmt, **options)
        except (OSError, KeyError, ValueError):  # a codec this Pillow was built without
            continue
    return out


_INTERESTING = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x01\x00"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits, most of them near the start, where the headers are."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and data:  # overwrite bytes
            for _ in range(rng.randint(1, 8)):
                near_start = rng.random() < 0.7
                i = min(len(data) - 1, int(rng.expovariate(1 / 64))) if near_start else rng.randrange(len(data))
                data[i] = rng.randrange(256)
        elif op == 1:  # truncate
            data = data[: rng.randrange(len(data) + 1)]
        elif op == 2 and len(data) > 8:  # an extreme integer in the header
            i = rng.randrange(min(len(data) - 4, 128))
            data[i : i + 4] = rng.choice(_INTERESTING)
        elif op == 3:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:  # cut a slice out
            i, j = sorted((rng.randrange(len(data) + 1), rng.randrange(len(data) + 1)))
            del data[i:j]
    return bytes(data)


def mutated(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (seed format, mutated bytes), reproducibly from ``seed``."""
    valid = seeds()
    names = sorted(valid)
    rng = random.Random(seed)
    return [(name, mutate(valid[name], rng)) for name in (rng.choice(names) for _ in range(count))]


def padded(kind: str, pieces: int) -> bytes:
    """A valid small image whose header holds ``pieces`` empty pieces of structure that Pillow parses one at a time
    before any pixel is decoded (issue 21's files, at any scale):

    - ``tiff``: a 6000x6000 header (under the pixel limits) whose strip offsets and byte counts have ``pieces``
      entries (6000, one per row, is the honest count; the pixels are not there);
    - ``jpeg``: an 8x8 JPEG with ``pieces`` empty comment segments before its frame header;
    - ``png``: an 8x8 PNG with ``pieces`` empty private ancillary chunks before its image data;
    - ``gif``: an 8x8 GIF with ``pieces`` empty comment extensions before its image.
    """
    if kind == "tiff":
        entries = [  # (tag, type, count, value or offset); SHORT = 3, LONG = 4; 8-bit grey, uncompressed
            (256, 4, 1, 6000), (257, 4, 1, 6000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, pieces, 200), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, pieces, 200 + 4 * pieces),
        ]  # fmt: skip
        ifd = struct.pack("<H", len(entries))
        for tag, typ, n, value in entries:
            ifd += struct.pack("<HHII", tag, typ, n, value)
        head = b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"
        return head.ljust(200, b"\0") + struct.pack("<I", 4096) * pieces + struct.pack("<I", 6000) * pieces
    if kind == "jpeg":
        small = _saved(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG")
        return small[:2] + b"\xff\xfe\x00\x02" * pieces + small[2:]
    if kind == "png":
        small = _saved(Image.new("RGB", (8, 8), (10, 200, 10)), "PNG")
        empty = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
        return small[:33] + empty * pieces + small[33:]  # after the signature and IHDR
    if kind == "gif":
        small = _saved(Image.new("P", (8, 8), 1), "GIF")
        start = 13 + (3 * 2 ** ((small[10] & 7) + 1) if small[10] & 0x80 else 0)  # after the global colour table
        return small[:start] + b"\x21\xfe\x00" * pieces + small[start:]
    raise ValueError(kind)


PIECE_BYTES = {"tiff": 8, "jpeg": 4, "png": 12, "gif": 3}


def costly_headers(size: int = 19 * 2**20) -> dict[str, bytes]:
    """Issue 21's files: ``padded`` files of about ``size`` bytes (19 MB: 2.5 million strips, 5 million JPEG
    segments, 1.6 million PNG chunks, 6.6 million GIF blocks)."""
    return {kind: padded(kind, size // piece) for kind, piece in PIECE_BYTES.items()}
