"""The service's image endpoints against mutated image files of many formats (issue 12): seeded, bounded in time, and
every answer a 200 or a 4xx with a JSON reason, never a 5xx. The files are small images of each format Pillow writes,
mutated as fuzzers do (flipped bytes, overwritten size fields, truncation, splices, repeats), sent as base64 and as
multipart uploads to /v1/embed/image, /v1/classify and /v1/similarity."""

from __future__ import annotations

import base64
import io
import random
import struct
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from PIL import Image, features

from altclip.server import ServerSettings
from serving import running_server

SEED = 12
SECONDS = 20  # the time the test may fuzz for
FILES = 3000  # at most
# Formats Pillow writes, in several modes; those the service does not read (SGI, IM, DDS, ...) must be refused cleanly.
WRITERS = [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"),
           ("WEBP", "RGB"), ("WEBP", "RGBA"), ("GIF", "P"), ("BMP", "RGB"), ("BMP", "1"), ("TIFF", "RGB"),
           ("TIFF", "CMYK"), ("TIFF", "F"), ("PPM", "RGB"), ("SGI", "RGB"), ("IM", "RGB"), ("DDS", "RGBA"),
           ("ICO", "RGBA"), ("TGA", "RGB"), ("PCX", "RGB"), ("QOI", "RGBA"), ("JPEG2000", "RGB"), ("AVIF", "RGB")]  # fmt: skip


def seed_corpus() -> list[bytes]:
    rng = np.random.default_rng(SEED)
    corpus = []
    for fmt, mode in WRITERS:
        if fmt in ("WEBP", "AVIF", "JPEG2000") and not features.check({"JPEG2000": "jpg_2000"}.get(fmt, fmt.lower())):
            continue
        size = (int(rng.integers(8, 80)), int(rng.integers(8, 80)))
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        out = io.BytesIO()
        try:
            image.save(out, fmt)
        except (OSError, ValueError, KeyError):
            continue  # a mode this Pillow does not write in that format
        corpus.append(out.getvalue())
    return corpus


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out)) if out else 0
        if kind == 0:  # flip bits
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a size or offset field made huge, zero or negative
            value = rng.choice([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
            out[at : at + 4] = struct.pack(rng.choice([">I", "<I"]), value)
        elif kind == 2:  # truncated
            del out[max(8, at) :]
        elif kind == 3:  # a header byte changed (sizes, modes, counts live there)
            if out:
                out[rng.randrange(min(64, len(out)))] = rng.getrandbits(8)
        elif kind == 4:  # a slice repeated
            end = min(len(out), at + rng.randint(1, 64))
            out[at:at] = out[at:end] * rng.randint(1, 8)
        elif kind == 5:  # spliced with another file
            other = rng.choice(corpus)
            out = out[:at] + other[rng.randrange(len(other)) :]
        else:  # random bytes inserted
            out[at:at] = rng.randbytes(rng.randint(1, 32))
    return bytes(out)


def send(client: httpx.Client, data: bytes, rng: random.Random) -> httpx.Response:
    encoded = base64.b64encode(data).decode()
    way = rng.randrange(4)
    if way == 0:
        return client.post("/v1/embed/image", json={"images": [encoded]})
    if way == 1:
        return client.post("/v1/embed/image", files={"images": ("f", data, "application/octet-stream")})
    if way == 2:
        return client.post(
            "/v1/classify", files={"image": ("f", data)}, data={"labels": "cat, dog", "templates": "none"}
        )
    return client.post("/v1/similarity", json={"texts": ["a cat"], "images": [encoded]})


@pytest.mark.slow  # end to end: a running server, fuzzed for a while
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # Pillow's, on corrupt files
def test_mutated_image_files_never_make_the_service_fail(embedder):
    corpus = seed_corpus()
    assert len(corpus) >= 18  # most of the formats above
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    # Small limits keep each decode cheap, so that many files fit in the time.
    settings = ServerSettings(max_pixels=2_000_000, max_request_pixels=2_000_000, request_timeout_s=30)
    with running_server(settings, embedder) as url, httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + SECONDS
        for sent in range(FILES):
            if time.monotonic() > deadline:
                break
            original = rng.choice(corpus)
            data = original if rng.random() < 0.05 else mutate(original, rng, corpus)
            r = send(client, data, rng)
            statuses[r.status_code] += 1
            assert r.status_code < 500, (sent, r.status_code, r.text, base64.b64encode(data[:200]))
            if r.status_code != 200:
                assert r.status_code in (400, 413, 422) and r.json()["detail"], r.text
        assert client.get("/readyz").json()["ready"] is True
    print(f"{sent} mutated files: {dict(statuses)}")
    assert sent >= 500 and statuses[200] > 0 and statuses[422] > 0
