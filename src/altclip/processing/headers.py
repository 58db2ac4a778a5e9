"""What opening an image file will cost, bounded before Pillow parses it.

Pillow parses a header one piece at a time in Python and keeps what it reads: a JPEG's segments, a PNG's chunks, a
GIF's blocks, a TIFF's strips. A file can be nothing but such pieces (19 MB of empty JPEG comments are 5 million
segments: seconds and hundreds of MB to open, then an 8x8 image), so the pixel limits, which come from the header,
come too late. ``excess`` walks the same structure without keeping or decoding anything, stops as soon as a count
is over its bound, and says what was over; a file it does not recognise is left to ``Image.open``, which refuses
formats outside the allow-list unread.

The bounds are far above what an encoder writes and far below what costs:

- JPEG: ``MAX_PIECES`` markers, fill and stray bytes before the first scan (Pillow steps through each in Python);
  ``MAX_SCANS`` scans (a progressive decoder passes over every block of the image once per scan);
- PNG and WebP: ``MAX_PIECES`` chunks under ``SMALL_CHUNK`` bytes (larger ones are bounded by the file's size);
- GIF: ``MAX_PIECES`` blocks, sub-blocks and stray bytes before the first image;
- TIFF: ``MAX_PIECES`` entries in the first directory (the one Pillow reads), ``MAX_TIFF_VALUES`` numbers in any
  one entry (strip and tile offsets are read into a tuple and then into a list of tiles: 2.5 million of them cost 5 s
  and 1 GB), and no more entry data than the file holds.

Each walk takes at most about ``MAX_PIECES`` steps of Python and a few searches in C, whatever the file.
"""

from __future__ import annotations

import struct

MAX_PIECES = 4096
MAX_SCANS = 500
SMALL_CHUNK = 1024
MAX_TIFF_VALUES = 2**17  # 131,072: one strip per row of the tallest image the pixel limits allow

# Pillow's JPEG parser: the markers whose segment starts with a 2-byte length (every other marker stands alone).
# Markers outside 0xFFC0-0xFFFE stop Pillow ("no marker found") and stop the walk.
_STANDALONE = {0xC8, 0xD8, 0xD9, *range(0xD0, 0xD8), *range(0xF0, 0xFE)}
_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_BYTES = {1, 2, 7}  # BYTE, ASCII, UNDEFINED: kept as bytes; every other type becomes a tuple of numbers
_TIFF_NAMES = {273: "strip offsets", 279: "strip byte counts", 324: "tile offsets", 325: "tile byte counts"}


def excess(data: bytes) -> str | None:
    """Why opening ``data`` would cost more than any image needs, or None when it would not (or when the format
    is not one walked here)."""
    view = memoryview(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data, view)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(view)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(view)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(view)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(view)
    return None


def _jpeg(data: bytes, view: memoryview) -> str | None:
    """Pillow's walk from the start-of-image marker to the first scan, counted."""
    pos, pieces, size = 2, 0, len(data)
    while pos + 1 < size:
        pieces += 1
        if pieces > MAX_PIECES:
            return f"more than {MAX_PIECES:,} segments before the image data"
        if view[pos] != 0xFF:  # stray bytes, stepped over one by one
            following = data.find(b"\xff", pos)
            following = size if following < 0 else following
            pieces += following - pos - 1
            pos = following
            continue
        marker = view[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
        elif marker == 0x00:
            pos += 2
        elif marker < 0xC0:
            return None  # not a marker: Pillow stops
        elif marker in _STANDALONE:
            pos += 2
        else:
            pos += 2 + max(int.from_bytes(view[pos + 2 : pos + 4], "big"), 2)
            if marker == 0xDA:  # the first scan: the header ends, the decoder reads the rest
                scans = 1 + data.count(b"\xff\xda", pos)
                return f"{scans:,} scans, over the limit of {MAX_SCANS:,}" if scans > MAX_SCANS else None
    return None


def _png(view: memoryview) -> str | None:
    """Chunks (length, type, data, CRC) to IEND, or to the second frame of an animation (Pillow stops there)."""
    pos, small, animated, image_data = 8, 0, False, False
    while pos + 8 <= len(view):
        (length,) = struct.unpack_from(">I", view, pos)
        kind = bytes(view[pos + 4 : pos + 8])
        if kind == b"IEND" or (kind == b"fcTL" and animated and image_data):
            return None
        if kind == b"acTL" and length >= 4 and pos + 12 <= len(view):
            animated = struct.unpack_from(">I", view, pos + 8)[0] > 1
        image_data = image_data or kind == b"IDAT"
        if length < SMALL_CHUNK:
            small += 1
            if small > MAX_PIECES:
                return f"more than {MAX_PIECES:,} chunks of under {SMALL_CHUNK:,} bytes"
        pos += 12 + length
    return None


def _webp(view: memoryview) -> str | None:
    """RIFF chunks (type, length, data padded to an even size); libwebp reads them all."""
    pos, small = 12, 0
    while pos + 8 <= len(view):
        (length,) = struct.unpack_from("<I", view, pos + 4)
        if length < SMALL_CHUNK:
            small += 1
            if small > MAX_PIECES:
                return f"more than {MAX_PIECES:,} chunks of under {SMALL_CHUNK:,} bytes"
        pos += 8 + length + (length & 1)
    return None


def _gif(data: memoryview) -> str | None:
    flags, size = data[10] if len(data) > 10 else 0, len(data)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    pieces = 0
    while pos < size:
        pieces += 1
        if pieces > MAX_PIECES:
            return f"more than {MAX_PIECES:,} blocks before the first image"
        byte = data[pos]
        if byte in (0x2C, 0x3B):  # an image descriptor, or the end of the file
            return None
        if byte != 0x21:  # a stray byte
            pos += 1
            continue
        pos += 2  # introducer and label, then sub-blocks until an empty one
        while pos < size and data[pos]:
            pieces += 1
            if pieces > MAX_PIECES:
                return f"more than {MAX_PIECES:,} blocks before the first image"
            pos += 1 + data[pos]
        pos += 1
    return None


def _tiff(data: memoryview) -> str | None:
    order = "<" if data[0] == 0x49 else ">"
    big = data[2] == 43 or data[3] == 43
    try:
        if big:
            (offset,) = struct.unpack_from(order + "Q", data, 8)
            (entries,) = struct.unpack_from(order + "Q", data, offset)
            first, width, count_format = offset + 8, 20, order + "HHQ"
        else:
            (offset,) = struct.unpack_from(order + "I", data, 4)
            (entries,) = struct.unpack_from(order + "H", data, offset)
            first, width, count_format = offset + 2, 12, order + "HHI"
    except struct.error:
        return None  # truncated: Pillow refuses it
    if entries > MAX_PIECES:
        return f"{entries:,} entries in the image's directory, over the limit of {MAX_PIECES:,}"
    inline, total = (8 if big else 4), 0
    for i in range(entries):
        try:
            tag, kind, count = struct.unpack_from(count_format, data, first + i * width)
        except struct.error:
            return None
        unit = _TIFF_UNIT.get(kind)
        if unit is None:
            continue  # Pillow skips types it does not know
        if kind not in _TIFF_BYTES and count > MAX_TIFF_VALUES:
            name = f" ({_TIFF_NAMES[tag]})" if tag in _TIFF_NAMES else ""
            return f"TIFF tag {tag}{name} has {count:,} values, over the limit of {MAX_TIFF_VALUES:,}"
        if count * unit > inline:
            total += count * unit
            if total > len(data):
                return "its directory's entries claim more data than the file holds"
    return None
