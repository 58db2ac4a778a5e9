"""``altclip quantize`` and ``altclip export onnx``: smaller and PyTorch-free deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from altclip.cli.common import (
    EXIT_ERROR,
    EXIT_MODEL,
    EXIT_USAGE,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    emit_json,
    err,
    fail,
    note,
)
from altclip.loading.registry import DEFAULT_MODEL

app = typer.Typer()
export_app = typer.Typer(help="Export a model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@app.command()
def quantize(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the quantized checkpoint")],
    method: Annotated[
        str, typer.Option(help="int8_dynamic (CPU, fastest there), int8_weight_only, int4_weight_only (CUDA)")
    ] = "int8_dynamic",
    group_size: Annotated[int, typer.Option(help="int4: weights per scale")] = 128,
    include_embeddings: Annotated[bool, typer.Option(help="Also store the word-embedding table in int8")] = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a quantized checkpoint that loads again (from_pretrained, altclip.load) without re-quantizing."""
    import torch

    from altclip.modeling.model import AltCLIPModel
    from altclip.modeling.quantize import QuantizationConfig, QuantizationError
    from altclip.processing.processor import AltCLIPProcessor
    from altclip.utils.devices import DeviceError

    model = model or DEFAULT_MODEL
    try:
        config = QuantizationConfig(method, group_size=group_size, include_embeddings=include_embeddings)
        dtype = torch.bfloat16 if method == "int4_weight_only" else None
        quantized = AltCLIPModel.from_pretrained(model, dtype=dtype, device=device, quantization_config=config)
    except (QuantizationError, DeviceError) as e:
        fail(str(e), EXIT_USAGE)
    except (OSError, ValueError) as e:
        fail(f"Could not load {model}: {e}", EXIT_MODEL)
    quantized.save_pretrained(output)
    try:
        AltCLIPProcessor.from_pretrained(model).save_pretrained(output)
    except OSError:
        note("No tokenizer or preprocessor found to copy beside the quantized weights")
    source = Path(model)
    before = (
        sum(p.stat().st_size for p in source.iterdir() if p.suffix in (".safetensors", ".bin"))
        if source.is_dir()
        else None
    )
    report: dict[str, Any] = {
        "output": str(output),
        "method": method,
        "include_embeddings": include_embeddings,
        "bytes": _size(output),
        "source_weight_bytes": before,
    }
    if as_json:
        emit_json(report)
    else:
        err.print(
            f"Wrote {method} weights to {output} ({report['bytes'] / 2**20:.1f} MiB"
            + (f", from {before / 2**20:.1f} MiB)" if before else ")"),
            highlight=False,
        )


@export_app.command("onnx")
def export_onnx_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the graphs, tokenizer and manifest")],
    fp16: Annotated[bool, typer.Option(help="Also a float16 variant")] = True,
    int8: Annotated[bool, typer.Option(help="Also an int8 variant (onnxruntime dynamic quantization)")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    check: Annotated[bool, typer.Option(help="Compare every graph with PyTorch in onnxruntime")] = True,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Separate text and image ONNX graphs with dynamic batch and sequence axes, checked in onnxruntime."""
    model = model or DEFAULT_MODEL
    try:
        from altclip.export import export_onnx
    except ImportError as e:
        fail(f"{e}. Export needs: pip install 'altclip[onnx]'", EXIT_USAGE)
    try:
        manifest = export_onnx(
            model, output, fp16=fp16, int8=int8, opset=opset, check=check, log=lambda m: err.print(m, highlight=False)
        )
    except ImportError as e:
        fail(f"{e}. Export needs: pip install 'altclip[onnx]'", EXIT_USAGE)
    except RuntimeError as e:
        fail(str(e), EXIT_ERROR)
    if as_json:
        emit_json(manifest)
        return
    for name, parity in manifest["parity"].items():
        err.print(f"{name}: text max |diff| {parity['text_max_abs']:.2e} (cosine {parity['text_cosine_min']:.6f}), image max |diff| "
                  f"{parity['image_max_abs']:.2e} (cosine {parity['image_cosine_min']:.6f})", highlight=False)  # fmt: skip
    err.print(
        f"Wrote {', '.join(sorted(f for v in manifest['variants'].values() for f in v.values()))} and manifest.json to {output}",
        highlight=False,
    )
