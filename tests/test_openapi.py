"""The service against its own /openapi.json: Schemathesis sends several hundred requests, valid and invalid by the
schema, JSON and multipart, to a live server with an index and a token. Every answer must be documented (status,
content type and body schema), none may be a 5xx, every request valid by the schema must be accepted, and the
token must be required where the document says so.

Not checked: that every request *invalid* by the schema is refused (negative_data_rejection). On multipart bodies
Schemathesis' mutations are not violations once on the wire: a field turned into null or a number arrives as the
text "null" or "5", which is a valid label, and removing one branch's required field of an either-or
(query or image) leaves a body that satisfies the other branch. Invalid requests still must get a documented 4xx.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from altclip.index import ImageIndex
from altclip.server import ServerSettings
from serving import running_server
from test_index import make_images

TESTS = Path(__file__).parent
TOKEN = "fuzz-token"
pytestmark = pytest.mark.slow  # end to end: Schemathesis against a running server


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("fuzzed")
    make_images(root / "photos", 6)
    with ImageIndex(root / "index") as index:
        index.update([root / "photos"], embedder)
    return root / "index"


def test_the_service_keeps_to_its_openapi_document(embedder, index_dir, tmp_path):
    settings = ServerSettings(index=str(index_dir), max_items=8, max_text_chars=200, token=TOKEN)
    with running_server(settings, embedder) as url:
        command = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
                   "--max-examples", "50", "--workers", "1", "--seed", "1", "--generation-database", "none",
                   "-H", f"Authorization: Bearer {TOKEN}",
                   "--checks", "all", "--exclude-checks", "negative_data_rejection"]  # fmt: skip
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    generated = int(re.search(r"(\d+) generated", report).group(1))
    print(f"Schemathesis: {generated} requests")
    assert generated >= 300
