"""`altclip bench` at the tiny shape, as CI runs it: every engine measured, compared with transformers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from altclip.bench import Workload, benchmark
from altclip.cli import build


def test_benchmark_against_transformers():
    report = benchmark(
        ["exact", "int8", "transformers"],
        shape="tiny",
        workload=Workload(image_batch=2, text_batch=8, min_seconds=0.2, latency_runs=2),
        log=lambda m: None,
    )
    assert report["reference"] == "transformers" and "CPUs" in report["device"]
    results = {r["engine"]: r for r in report["results"]}
    assert set(results) == {"exact", "int8", "transformers"}
    for r in results.values():
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["texts_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["image_latency_ms"] > 0 and r["load_s"] > 0
    assert results["transformers"]["images_per_s_ratio"] == 1.0
    assert results["transformers"]["text_latency_speedup"] == 1.0
    for r in results.values():  # the speedup is the reference's latency over this engine's
        expected = results["transformers"]["text_latency_ms"] / r["text_latency_ms"]
        assert abs(r["text_latency_speedup"] - expected) <= 0.01 * expected + 0.005
    assert results["exact"]["cosine_image"] > 0.99999 and results["exact"]["cosine_text"] > 0.99999
    assert results["int8"]["cosine_image"] > 0.99


def test_bench_command(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        build(),
        [
            "bench",
            "--engines",
            "exact",
            "--image-batch",
            "1",
            "--text-batch",
            "4",
            "--min-seconds",
            "0.1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["checkpoint"] == "random tiny" and report["results"][0]["engine"] == "exact"
    bad = CliRunner().invoke(build(), ["bench", "--engines", "warp-drive"])
    assert bad.exit_code == 2 and "Unknown engines" in bad.stderr
