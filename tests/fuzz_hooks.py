"""Schemathesis hooks for fuzzing the service (loaded through SCHEMATHESIS_HOOKS): real image files for the
API's image fields, which JSON Schema can only name (format "base64-image", multipart parts of type image/*)."""

from __future__ import annotations

import base64
import io
import json

import schemathesis
from hypothesis import strategies as st
from PIL import Image


@st.composite
def image_files(draw, formats=("PNG", "JPEG")) -> bytes:
    """Small images of any size and aspect ratio within the service's limits, in several modes and formats."""
    width = draw(st.integers(1, 96))
    height = draw(st.integers(max(1, -(-width // 50)), min(96, width * 50)))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"]))
    fmt = draw(st.sampled_from(formats))
    image = Image.new(mode, (width, height), draw(st.integers(0, 255)) if mode in ("L", "P") else (1, 2, 3))
    if fmt == "JPEG" and mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


schemathesis.openapi.format("base64-image", image_files().map(as_base64))
schemathesis.openapi.media_type("image/png", image_files(("PNG",)))
schemathesis.openapi.media_type("image/jpeg", image_files(("JPEG",)))


# The multipart `labels` field (its part declared text/plain): labels separated by commas, or a JSON list. Its schema
# pattern says the same; this strategy stands in for it because Schemathesis' coverage phase fills required text
# parts of multipart bodies with "" when other parts have custom strategies.
WORDS = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=',[]"\\'),
    min_size=1,
    max_size=12,
)
LABELS = st.lists(WORDS, min_size=1, max_size=8)
schemathesis.openapi.media_type(
    "text/plain",
    st.one_of(LABELS.map(", ".join), LABELS.map(lambda labels: json.dumps(labels, ensure_ascii=False))).map(str.encode),
)
