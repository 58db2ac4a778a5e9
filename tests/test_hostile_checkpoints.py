"""Damaged and hostile checkpoints: every one is refused quickly, with an error naming the file or the config value,
and a model whose weights hold NaN never gives NaN scores."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import altclip
from altclip import AltCLIPModel, CheckpointError
from altclip.inference import Embedder, NonFiniteError
from altclip.modeling.config import ConfigError

PHOTO = Path(__file__).parent.parent / "examples" / "photos" / "cat.jpg"


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _safetensors_header(folder: Path, edit) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _lying_offsets(header: dict) -> None:
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 10**9  # the tensor claims a gigabyte the file does not have


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _pickle_that_runs_code(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"text_model.x": _RunsCode()}))


def _zero_byte_pickle(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"")


def _integer_weights(state: dict) -> None:
    for key, value in state.items():
        state[key] = (value * 100).long()


DAMAGED_WEIGHTS = {
    # name: (how to damage a checkpoint folder, what the error says)
    "zero-byte safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b""),
        "model.safetensors is not a readable",
    ),
    "truncated safetensors": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
        "model.safetensors is not a readable",
    ),
    "lying header": (lambda f: _safetensors_header(f, _lying_offsets), "model.safetensors is not a readable"),
    "header length 2**62": (
        lambda f: (f / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}"),
        "model.safetensors is not a readable",
    ),
    "pickle that runs code": (_pickle_that_runs_code, r"pytorch_model\.bin could not be read.*refused"),
    "zero-byte pickle": (_zero_byte_pickle, r"pytorch_model\.bin could not be read.*empty or truncated"),
    "int64 weights": (
        lambda f: _edit_weights(f, _integer_weights),
        r"expected floating-point values, found I64",
    ),
}

BAD_CONFIGS = {
    # name: (edit of config.json, the ConfigError's message)
    "heads 0": (lambda c: c["vision_config"].update(num_attention_heads=0), "num_attention_heads must be a positive"),
    "patch_size 0": (lambda c: c["vision_config"].update(patch_size=0), "patch_size must be a positive integer"),
    "projection_dim -1": (lambda c: c.update(projection_dim=-1), "projection_dim must be a positive integer, got -1"),
    "string hidden size": (lambda c: c["text_config"].update(hidden_size="32"), "hidden_size must be a positive"),
    "heads not dividing": (lambda c: c["text_config"].update(num_attention_heads=5), "must be a multiple of"),
    "NaN eps": (lambda c: c["text_config"].update(layer_norm_eps=float("nan")), "layer_norm_eps must be a finite"),
    "dropout 2": (lambda c: c["text_config"].update(hidden_dropout_prob=2), "must be a probability"),
    "pad id past vocab": (lambda c: c["text_config"].update(pad_token_id=10**6), "pad_token_id must be a token id"),
    "text_config a list": (lambda c: c.update(text_config=[1, 2]), "is not a valid AltCLIPConfig"),
    # Layer counts match the weights, but a tensor of these sizes has more bytes than PyTorch can address.
    "hidden_size 2**31": (lambda c: c["text_config"].update(hidden_size=2**31), "describes a model no tensor can hold"),
}


NESTED_FILES = {
    # name: (the file made 100,000 levels deep, what the error says)
    "nested config.json": ("config.json", r"config\.json: JSON nested more than 64 levels deep"),
    "nested tokenizer.json": ("tokenizer.json", r"tokenizer\.json is not a tokenizers JSON file: .*nested"),
}


def damaged(checkpoint: Path, folder: Path, kind: str) -> Path:
    """A copy of ``checkpoint`` with one of the damages above (weights, config, or "nan weights")."""
    shutil.copytree(checkpoint, folder)
    if kind in DAMAGED_WEIGHTS:
        DAMAGED_WEIGHTS[kind][0](folder)
    elif kind in BAD_CONFIGS:
        _edit_config(folder, BAD_CONFIGS[kind][0])
    elif kind in NESTED_FILES:
        (folder / NESTED_FILES[kind][0]).write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif kind == "nan weights":
        _edit_weights(folder, lambda s: s["vision_model.post_layernorm.weight"].fill_(float("nan")))
    elif kind == "nan temperature":
        _edit_weights(folder, lambda s: s["logit_scale"].fill_(float("nan")))
    elif kind == "10**9 layers":
        _edit_config(folder, lambda c: c["text_config"].update(num_hidden_layers=10**9))
    else:
        raise KeyError(kind)
    return folder


@pytest.mark.parametrize("kind", sorted(DAMAGED_WEIGHTS))
def test_damaged_weight_files_are_checkpoint_errors_naming_the_file(tmp_path, checkpoint, kind):
    folder = damaged(checkpoint, tmp_path / "ckpt", kind)
    with pytest.raises(CheckpointError, match=DAMAGED_WEIGHTS[kind][1]):
        AltCLIPModel.from_pretrained(folder)


@pytest.mark.parametrize("kind", sorted(NESTED_FILES))
def test_files_nested_too_deeply_are_errors_naming_the_file(tmp_path, checkpoint, kind):
    folder = damaged(checkpoint, tmp_path / "ckpt", kind)
    with pytest.raises(ValueError, match=NESTED_FILES[kind][1]):
        altclip.load(folder)


def test_float64_weights_still_load(tmp_path, checkpoint):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    _edit_weights(folder, lambda s: s.update({k: v.double() for k, v in s.items()}))
    assert AltCLIPModel.from_pretrained(folder).dtype == torch.float32


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_config_values_no_model_can_have_are_refused(tmp_path, checkpoint, kind):
    folder = damaged(checkpoint, tmp_path / "ckpt", kind)
    with pytest.raises(ConfigError, match=BAD_CONFIGS[kind][1]) as e:
        AltCLIPModel.from_pretrained(folder)
    assert "config.json" in str(e.value)  # names the file


def test_values_set_after_construction_are_checked_when_a_model_is_built():
    config = altclip.KNOWN_MODELS["tiny"].config()
    config.vision_config.patch_size = 0
    with pytest.raises(ConfigError, match="patch_size must be a positive integer"):
        AltCLIPModel(config)


def test_configs_still_take_what_transformers_configs_take():
    """Validation checks values a model needs; every keyword, and unknown keys, are still taken and kept."""
    config = altclip.AltCLIPTextConfig(projection_dim=32, direct_kd=False, torch_dtype="float16", num_labels=3)
    assert config.direct_kd is False and config.dtype == "float16" and config.num_labels == 3
    assert altclip.AltCLIPVisionConfig(dropout=0.1, image_size=30, patch_size=2).dropout == 0.1


def test_a_config_far_deeper_than_its_weights_fails_fast(tmp_path, checkpoint):
    """num_hidden_layers = 10**9 used to build layers until memory ran out; now the layer count is compared with the
    weights before anything is built. In a subprocess, so that the old behaviour fails the test instead of hanging
    the suite."""
    folder = damaged(checkpoint, tmp_path / "ckpt", "10**9 layers")
    code = (
        "import sys, altclip\n"
        "try:\n"
        f"    altclip.AltCLIPModel.from_pretrained({str(folder)!r})\n"
        "except altclip.CheckpointError as e:\n"
        "    print(e)\n"
    )
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "text_config.num_hidden_layers = 1000000000, but the weights hold 2 layers" in result.stdout, result.stderr
    assert time.monotonic() - start < 30


def test_nan_weights_never_become_scores(tmp_path, checkpoint):
    model, processor = altclip.load(damaged(checkpoint, tmp_path / "nan", "nan weights"))
    embedder = Embedder(model, processor, "nan")
    with pytest.raises(NonFiniteError, match="NaN or infinite image embeddings"):
        embedder.embed_images([PHOTO])
    with pytest.raises(NonFiniteError):
        altclip.ZeroShotImageClassificationPipeline(model, processor)(str(PHOTO), candidate_labels=["cat", "dog"])
    assert embedder.embed_texts(["a cat"]).shape == (1, 16)  # the text tower is intact
    model, processor = altclip.load(damaged(checkpoint, tmp_path / "temperature", "nan temperature"))
    with pytest.raises(NonFiniteError, match="temperature"):
        altclip.ZeroShotImageClassificationPipeline(model, processor)(str(PHOTO), candidate_labels=["cat", "dog"])
