"""``altclip bench``: throughput, latency, memory, load time and accuracy of the engines, on the same weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from altclip.cli.common import EXIT_USAGE, DeviceOpt, JsonOpt, emit_json, err, fail, print_table

app = typer.Typer()
COLUMNS = ["engine", "images/s", "texts/s", "image ms (B=1)", "text ms (B=1)", "peak MB", "load s", "cosine img/txt"]


@app.command()
def bench(
    engines: Annotated[
        str, typer.Option(help="Comma-separated: exact, int8, bf16, fp16, transformers, transformers-bf16")
    ] = "exact,int8",
    compare: Annotated[
        str | None,
        typer.Option(
            help="'transformers': also measure transformers.AltCLIPModel (needs it installed) [default: none]"
        ),
    ] = None,
    shape: Annotated[
        str, typer.Option(help="Shape of the random checkpoint: tiny, BAAI/AltCLIP, BAAI/AltCLIP-m18")
    ] = "tiny",
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Measure this checkpoint folder [default: a random checkpoint of --shape]"),
    ] = None,
    device: DeviceOpt = None,
    image_batch: Annotated[int, typer.Option(min=1, help="Images per batch, for images/s")] = 8,
    text_batch: Annotated[int, typer.Option(min=1, help="Texts per batch, for texts/s")] = 64,
    min_seconds: Annotated[float, typer.Option(help="Measure each throughput at least this long")] = 3.0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the results as JSON to this file [default: none]")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Images/s, texts/s, latency at batch 1, peak memory, load time and accuracy of each engine, on the same
    random weights, with ratios against transformers (--compare transformers) or our exact path."""
    from altclip.bench import Workload, benchmark
    from altclip.utils.devices import resolve_device

    names = [e.strip() for e in engines.split(",") if e.strip()]
    if compare == "transformers" and "transformers" not in names:
        names.append("transformers")
    elif compare not in (None, "transformers"):
        fail("--compare takes 'transformers'", EXIT_USAGE)
    workload = Workload(image_batch=image_batch, text_batch=text_batch, min_seconds=min_seconds)
    try:
        report = benchmark(
            names,
            shape=shape,
            checkpoint=model,
            device=resolve_device(device),
            workload=workload,
            log=lambda m: err.print(m, highlight=False),
        )
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        emit_json(report)
        return
    _print(report)


def _print(report: dict) -> None:
    rows = []
    for r in report["results"]:
        if "error" in r:
            rows.append([r["engine"], f"failed: {r['error']}", *[""] * (len(COLUMNS) - 2)])
            continue
        rows.append([
            r["engine"],
            f"{r['images_per_s']:.2f} ({r.get('images_per_s_ratio', 1):.2f}x)",
            f"{r['texts_per_s']:.1f} ({r.get('texts_per_s_ratio', 1):.2f}x)",
            f"{r['image_latency_ms']:.1f} ({r.get('image_latency_speedup', 1):.2f}x)",
            f"{r['text_latency_ms']:.1f} ({r.get('text_latency_speedup', 1):.2f}x)",
            f"{r.get('peak_gpu_mb', r['peak_rss_mb']):.0f}",
            f"{r['load_s']:.2f}",
            f"{r.get('cosine_image', 1):.4f} / {r.get('cosine_text', 1):.4f}",
        ])  # fmt: skip
    title = f"{report['checkpoint']} on {report['device']} (ratios against {report['reference']})"
    print_table(COLUMNS, rows, title=title, right=COLUMNS[1:])
