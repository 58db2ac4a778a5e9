"""ONNX export (`altclip export onnx`): separate text and image graphs, for deployments without PyTorch.

Writes ``text.onnx`` (``input_ids``, ``attention_mask`` -> ``text_embeds``) and ``vision.onnx`` (``pixel_values`` ->
``image_embeds``) with dynamic batch and sequence axes, in float32 and optionally float16 and int8 (onnxruntime's
dynamic quantization), the tokenizer and preprocessing files, and ``manifest.json``: inputs, outputs, shapes,
dtypes, preprocessing settings, ``logit_scale``, and the parity measured in onnxruntime against our PyTorch model
on padded batches of several sizes. The embeddings are not normalised, as ``get_text_features`` /
``get_image_features`` return them; normalise both before taking dot products.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from altclip.modeling.model import AltCLIPModel
from altclip.processing.processor import AltCLIPProcessor

FP32_TOLERANCE = 1e-4


class TextGraph(nn.Module):
    """input_ids, attention_mask (B, T) -> text_embeds (B, projection_dim). While it is traced, get_text_features
    takes the padded path, whose shapes do not depend on the mask's values."""

    def __init__(self, model: AltCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


class VisionGraph(nn.Module):
    """pixel_values (B, 3, H, W) -> image_embeds (B, projection_dim)."""

    def __init__(self, model: AltCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values)


def _probe_texts(vocab: int, max_positions: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches of several sizes and lengths, with <s> first and </s> at each row's end."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for batch, length in ((1, 4), (3, 17), (8, min(64, max_positions - 2))):
        lengths = torch.randint(2, length + 1, (batch,), generator=g)
        lengths[0] = length
        ids = torch.full((batch, length), 1)
        for i, n in enumerate(lengths.tolist()):
            ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
            ids[i, 0], ids[i, n - 1] = 0, 2
        batches.append((ids, ids.ne(1).long()))
    return batches


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


def export_onnx(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fp16: bool = True,
    int8: bool = False,
    opset: int = 18,
    check: bool = True,
    log=print,
) -> dict[str, Any]:
    """Exports the text and image graphs of a checkpoint; returns the manifest (also written to manifest.json)."""
    import onnxruntime as ort

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model = AltCLIPModel.from_pretrained(model_path)
    processor = AltCLIPProcessor.from_pretrained(model_path)
    config = model.config
    size = config.vision_config.image_size
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", min=2, max=config.text_config.max_position_embeddings - 2)
    texts = _probe_texts(min(config.text_config.vocab_size, 250_000), config.text_config.max_position_embeddings)
    images = [torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)) for n in (1, 3)]
    with torch.inference_mode():
        expected_text = [model.get_text_features(input_ids=i, attention_mask=m).numpy() for i, m in texts]
        expected_image = [model.get_image_features(pixel_values=p).numpy() for p in images]

    variants = [("fp32", model, torch.float32)] + (
        [("fp16", copy.deepcopy(model).half(), torch.float16)] if fp16 else []
    )
    files: dict[str, dict[str, str]] = {}
    for name, variant, dtype in variants:
        suffix = "" if name == "fp32" else f"_{name}"
        log(f"Exporting {name} graphs...")
        # torch's exporter warns, for each of torchvision's ops, that torchvision is missing: these graphs use none.
        with warnings.catch_warnings(), torch.no_grad(), _only_errors("torch.onnx._internal.exporter._registration"):
            warnings.simplefilter("ignore")
            for graph, args, names, shapes, file in (
                (TextGraph(variant), texts[1], (["input_ids", "attention_mask"], ["text_embeds"]),
                 {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}, f"text{suffix}.onnx"),
                (VisionGraph(variant), (images[1].to(dtype),), (["pixel_values"], ["image_embeds"]),
                 {"pixel_values": {0: batch}}, f"vision{suffix}.onnx"),
            ):  # fmt: skip
                torch.onnx.export(graph.eval(), args, str(out / file), input_names=names[0], output_names=names[1],
                                  dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False)  # fmt: skip
        files[name] = {"text": f"text{suffix}.onnx", "vision": f"vision{suffix}.onnx"}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log("Quantizing to int8...")
        files["int8"] = {}
        with _only_errors(None):  # onnxruntime's quantizer advises pre-processing through the root logger
            for tower in ("text", "vision"):
                target = f"{tower}_int8.onnx"
                quantize_dynamic(str(out / files["fp32"][tower]), str(out / target), weight_type=QuantType.QInt8)
                files["int8"][tower] = target

    parity: dict[str, dict[str, float]] = {}
    if check:
        log("Checking the graphs in onnxruntime against PyTorch...")
        for name, pair in files.items():
            text = ort.InferenceSession(str(out / pair["text"]), providers=["CPUExecutionProvider"])
            vision = ort.InferenceSession(str(out / pair["vision"]), providers=["CPUExecutionProvider"])
            pixel_dtype = np.float16 if name == "fp16" else np.float32
            got_text = [
                text.run(None, {"input_ids": i.numpy(), "attention_mask": m.numpy()})[0].astype(np.float32)
                for i, m in texts
            ]
            got_image = [
                vision.run(None, {"pixel_values": p.numpy().astype(pixel_dtype)})[0].astype(np.float32) for p in images
            ]
            parity[name] = {
                "text_max_abs": max(float(np.abs(a - b).max()) for a, b in zip(got_text, expected_text)),
                "image_max_abs": max(float(np.abs(a - b).max()) for a, b in zip(got_image, expected_image)),
                "text_cosine_min": min(_cosine_min(a, b) for a, b in zip(got_text, expected_text)),
                "image_cosine_min": min(_cosine_min(a, b) for a, b in zip(got_image, expected_image)),
            }
        fp32 = parity["fp32"]
        if fp32["text_max_abs"] > FP32_TOLERANCE or fp32["image_max_abs"] > FP32_TOLERANCE:
            raise RuntimeError(f"The float32 ONNX graphs differ from PyTorch by more than {FP32_TOLERANCE}: {fp32}")

    processor.save_pretrained(out)  # tokenizer.json and preprocessor_config.json beside the graphs
    manifest = {
        "model": str(model_path),
        "opset": opset,
        "variants": files,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()) + ["manifest.json"],
        "inputs": {
            "text": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
            ],
            "vision": [
                {
                    "name": "pixel_values",
                    "dtype": "float32 (float16 for the fp16 graph)",
                    "shape": ["batch", 3, size, size],
                }
            ],
        },
        "outputs": {
            "text": [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", config.projection_dim]}],
            "vision": [{"name": "image_embeds", "dtype": "float32", "shape": ["batch", config.projection_dim]}],
        },
        "normalize_embeddings": True,
        "logit_scale": model.logit_scale.detach().exp().item(),
        "preprocessing": {
            "image": processor.image_processor.to_dict(),
            "text": {
                "tokenizer_file": "tokenizer.json",
                "max_length": min(processor.tokenizer.model_max_length, config.text_config.max_position_embeddings - 2),
                "pad_token_id": processor.tokenizer.pad_token_id,
                "padding_side": "right",
            },
        },
        "parity": parity,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


@contextlib.contextmanager
def _only_errors(logger_name: str | None):
    """Within the block, the named logger (the root logger for None) lets through errors only."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
