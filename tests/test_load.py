"""The bounded load test of the service, short: below capacity zero errors, above it only 200s and 429s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "load_test.py"


@pytest.mark.slow
def test_bounded_load(tmp_path):
    out = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--seconds", "3", "--clients", "4", "--overload-clients", "40",
               "--max-queue", "16", "--json", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["below_capacity"]["statuses"] == {"200": data["below_capacity"]["requests"]}
    assert data["below_capacity"]["requests"] > 10
    above = data["above_capacity"]["statuses"]
    assert set(above) <= {"200", "429"} and above.get("429", 0) > 0 and above.get("200", 0) > 0
    assert data["server_alive_after"]
