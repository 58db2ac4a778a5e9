"""Deploying smaller: quantized checkpoints that reload without re-quantizing, and ONNX graphs checked in
onnxruntime against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import altclip
from altclip import AltCLIPModel
from altclip.cli import build
from altclip.export import export_onnx
from altclip.modeling.quantize import QuantizationError
from synthetic import write_toy_checkpoint
from test_fast_paths import SMALL, embeddings, min_cosine


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small checkpoint (realistic widths for quantization error) with a tokenizer and preprocessor."""
    path = tmp_path_factory.mktemp("small")
    return write_toy_checkpoint(path, config=SMALL)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (6, 15), generator=g)
    mask = (torch.arange(15)[None] < torch.tensor([15, 9, 4, 12, 15, 7])[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)
    ids[:, 0] = 0
    return ids, mask, torch.randn(5, 3, 64, 64, generator=g)


VARIANTS = [
    ("int8_dynamic", 0.995),
    ({"method": "int8_dynamic", "include_embeddings": True}, 0.995),
    ("int8_weight_only", 0.999),
    ({"method": "int8_weight_only", "include_embeddings": True}, 0.999),
]


@pytest.mark.parametrize(
    "config, tolerance", VARIANTS, ids=["int8_dynamic", "int8_dynamic+emb", "int8_weight_only", "int8_weight_only+emb"]
)
def test_quantized_variants_reload_without_requantizing(small, inputs, tmp_path, monkeypatch, config, tolerance):
    exact = embeddings(AltCLIPModel.from_pretrained(small), inputs)
    quantized = AltCLIPModel.from_pretrained(small, quantization_config=config)
    got = embeddings(quantized, inputs)
    assert min_cosine(got[0], exact[0]) >= tolerance and min_cosine(got[1], exact[1]) >= tolerance
    quantized.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["method"] == (config if isinstance(config, str) else config["method"])
    import altclip.modeling.quantize

    def no_requantizing(*args, **kwargs):
        raise AssertionError("reloading must not quantize again")

    monkeypatch.setattr(altclip.modeling.quantize, "quantize", no_requantizing)
    again = embeddings(AltCLIPModel.from_pretrained(tmp_path), inputs)
    assert torch.equal(again[0], got[0]) and torch.equal(again[1], got[1])
    assert (tmp_path / "quantized_model.pt").stat().st_size < (small / "model.safetensors").stat().st_size


def test_embeddings_quantization_shrinks_the_file(small, tmp_path):
    AltCLIPModel.from_pretrained(small, quantization_config="int8_dynamic").save_pretrained(tmp_path / "a")
    AltCLIPModel.from_pretrained(
        small, quantization_config={"method": "int8_dynamic", "include_embeddings": True}
    ).save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "quantized_model.pt").stat().st_size < (
        tmp_path / "a" / "quantized_model.pt"
    ).stat().st_size


def test_missing_torchao_scheme_is_a_clear_error(small, monkeypatch):
    import torchao.quantization

    monkeypatch.delattr(torchao.quantization, "Int8WeightOnlyConfig")
    with pytest.raises(
        QuantizationError, match=r"has no Int8WeightOnlyConfig \(needed for int8_weight_only\); this torchao supports"
    ):
        AltCLIPModel.from_pretrained(small, quantization_config="int8_weight_only")


@pytest.mark.slow
def test_onnx_export_matches_pytorch(small, tmp_path):
    manifest = export_onnx(small, tmp_path, fp16=True, int8=True, log=lambda m: None)
    assert manifest["parity"]["fp32"]["text_max_abs"] <= 1e-4 and manifest["parity"]["fp32"]["image_max_abs"] <= 1e-4
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8"}
    assert [i["name"] for i in manifest["inputs"]["text"]] == ["input_ids", "attention_mask"]
    assert manifest["preprocessing"]["image"]["crop_size"] == {"height": 64, "width": 64}
    assert manifest["logit_scale"] == pytest.approx(float(np.exp(2.6592)), rel=1e-4)
    assert all((tmp_path / f).exists() for f in manifest["files"])
    # An independent check at other shapes: padded batches of 2 and 5 texts, 1 and 4 images.
    model = AltCLIPModel.from_pretrained(small)
    tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(tmp_path)  # the exported tokenizer
    texts = ["a red circle", "一个蓝色的正方形 on a grey background, drawn twice", "x", "Фото", "日本語のテキスト"]
    sessions = {name: (ort.InferenceSession(str(tmp_path / files["text"])), ort.InferenceSession(str(tmp_path / files["vision"])))
                for name, files in manifest["variants"].items()}  # fmt: skip
    for batch in (texts[:2], texts):
        tokens = tokenizer(batch, padding=True, return_tensors="np")
        with torch.no_grad():
            expected = model.get_text_features(
                input_ids=torch.from_numpy(tokens["input_ids"]),
                attention_mask=torch.from_numpy(tokens["attention_mask"]),
            ).numpy()
        for name, (text, _) in sessions.items():
            got = text.run(None, {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})[
                0
            ].astype(np.float32)
            if name == "fp32":
                assert np.abs(got - expected).max() <= 1e-4
            else:
                assert min_cosine(torch.from_numpy(got), torch.from_numpy(expected)) >= (
                    0.999 if name == "fp16" else 0.98
                )
    for n in (1, 4):
        pixels = torch.randn(n, 3, 64, 64)
        with torch.no_grad():
            expected = model.get_image_features(pixel_values=pixels).numpy()
        got = sessions["fp32"][1].run(None, {"pixel_values": pixels.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_quantize_and_export_commands(small, tmp_path, capfd):
    runner = CliRunner()
    result = runner.invoke(build(), ["quantize", "--model", str(small), "--output", str(tmp_path / "q"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "int8_dynamic"
    model, processor = altclip.load(tmp_path / "q")  # a quantized folder is a complete checkpoint
    assert model.quantization_config.method == "int8_dynamic" and processor(text="a")["input_ids"][0] == 0
    result = runner.invoke(
        build(), ["quantize", "--model", str(small), "--output", str(tmp_path / "q4"), "--method", "int4_weight_only"]
    )
    assert result.exit_code == 2 and "int4_weight_only needs a CUDA GPU" in result.stderr
    result = runner.invoke(
        build(), ["export", "onnx", "--model", str(small), "--output", str(tmp_path / "onnx"), "--no-fp16"]
    )
    assert result.exit_code == 0, result.output
    assert "fp32: text max |diff|" in result.stderr and (tmp_path / "onnx" / "manifest.json").exists()
    logged = capfd.readouterr().err  # what torch's own logging wrote to the process's stderr
    assert "torchvision is not installed" not in logged + result.stderr


@pytest.mark.slow
def test_torchao_checkpoint_loads_in_a_fresh_process(small, tmp_path):
    """torchao's tensor types are registered as loadable only once torchao is imported: loading must do that."""
    import subprocess
    import sys

    AltCLIPModel.from_pretrained(small, quantization_config="int8_weight_only").save_pretrained(tmp_path)
    code = f"import altclip; m = altclip.AltCLIPModel.from_pretrained({str(tmp_path)!r}); print(m.quantization_config.method)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("int8_weight_only"), result.stderr[-2000:]
