"""Loading and saving checkpoint folders: formats, round trips with transformers, strictness, configs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from altclip import (
    AltCLIPConfig,
    AltCLIPModel,
    AltCLIPTextConfig,
    AltCLIPTextModel,
    AltCLIPVisionConfig,
    CheckpointError,
    CheckpointNotFoundError,
)
from altclip.loading.random_checkpoints import random_model, write_random_checkpoint
from altclip.loading.registry import KNOWN_MODELS
from conftest import TINY_PROJECTION, TINY_TEXT, TINY_VISION, load_reference
from test_parity import assert_close


def outputs(model, text_ids, pixels):
    ids, mask = text_ids
    pixels = torch.cat([pixels, pixels[:1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    return out.logits_per_image, out.text_embeds, out.image_embeds


def test_ours_saved_loads_in_transformers(tmp_path, ref_checkpoint, text_ids, pixels):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    ref = load_reference(tmp_path)
    for a, b in zip(outputs(ours, text_ids, pixels), outputs(ref, text_ids, pixels)):
        assert_close(a, b, "after save")
    # The file uses transformers 4's names, which every transformers version reads.
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "text_model.roberta.encoder.layer.0.attention.self.query.weight" in keys
    assert "vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "vision_model.pre_layrnorm.weight" in keys


def test_sharded_round_trip(tmp_path, ref_checkpoint, text_ids, pixels):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ours.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    again = AltCLIPModel.from_pretrained(tmp_path)
    ref = load_reference(tmp_path)
    for a, b, c in zip(
        outputs(again, text_ids, pixels), outputs(ours, text_ids, pixels), outputs(ref, text_ids, pixels)
    ):
        assert torch.equal(a, b)
        assert_close(a, c, "sharded, transformers")


def test_legacy_bin_with_buffers_and_pooler(tmp_path, ref_checkpoint, text_ids, pixels):
    """The layout BAAI/AltCLIP ships: pytorch_model.bin, transformers 4 names, position_ids buffers, a pooler."""
    state = load_file(ref_checkpoint / "model.safetensors")
    state = {re.sub(r"^vision_model\.encoder\.layer\.", "vision_model.encoder.layers.", k): v for k, v in state.items()}
    state["text_model.roberta.embeddings.position_ids"] = torch.arange(TINY_TEXT["max_position_embeddings"])[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    state["text_model.roberta.pooler.dense.weight"] = torch.randn(32, 32)
    state["text_model.roberta.pooler.dense.bias"] = torch.randn(32)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((ref_checkpoint / "config.json").read_text())
    ours = AltCLIPModel.from_pretrained(tmp_path)
    ref = load_reference(ref_checkpoint)
    for a, b in zip(outputs(ours, text_ids, pixels), outputs(ref, text_ids, pixels)):
        assert_close(a, b, "legacy bin")


def test_legacy_bin_refuses_code(tmp_path, ref_checkpoint):
    """Pickles are read with weights_only=True: a file that would run code on load is refused."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((ref_checkpoint / "config.json").read_text())
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        AltCLIPModel.from_pretrained(tmp_path)


def _copy_with(tmp_path, ref_checkpoint, edit):
    state = load_file(ref_checkpoint / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((ref_checkpoint / "config.json").read_text())
    return tmp_path


def test_missing_tensor_is_named(tmp_path, ref_checkpoint):
    key = "text_model.roberta.encoder.layer.1.attention.self.key.bias"
    path = _copy_with(tmp_path, ref_checkpoint, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=re.escape(f"missing: {key}")):
        AltCLIPModel.from_pretrained(path)


def test_wrong_shape_is_named(tmp_path, ref_checkpoint):
    key = "visual_projection.weight"

    def edit(s):
        s[key] = torch.zeros(TINY_PROJECTION + 1, 32)

    path = _copy_with(tmp_path, ref_checkpoint, edit)
    with pytest.raises(CheckpointError, match=re.escape(f"{key}: expected (16, 32), found (17, 32)")):
        AltCLIPModel.from_pretrained(path)


def test_unexpected_tensor_is_named(tmp_path, ref_checkpoint):
    path = _copy_with(tmp_path, ref_checkpoint, lambda s: s.update({"text_model.mystery.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected: text_model\.mystery\.weight"):
        AltCLIPModel.from_pretrained(path)


def test_config_deeper_than_checkpoint_is_an_error(tmp_path, ref_checkpoint):
    config = json.loads((ref_checkpoint / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((ref_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"vision_config\.num_hidden_layers = 4, but the weights hold 3 layers"):
        AltCLIPModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16", "auto"])
def test_dtype(tmp_path, ref_checkpoint, dtype):
    half = AltCLIPModel.from_pretrained(ref_checkpoint, dtype=torch.float16)
    half.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    model = AltCLIPModel.from_pretrained(tmp_path, dtype=dtype)
    expected = {"auto": torch.float16, "float16": torch.float16}.get(dtype, dtype)
    assert all(p.dtype == expected for p in model.parameters())
    assert AltCLIPModel.from_pretrained(tmp_path).dtype == torch.float32  # no dtype: the exact float32 path


def test_loaded_model_is_in_eval_mode_and_not_on_meta(ref_checkpoint):
    model = AltCLIPModel.from_pretrained(ref_checkpoint)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())


BAAI_STYLE_CONFIG = {
    "_name_or_path": "BAAI/AltCLIP",
    "architectures": ["AltCLIPModel"],
    "direct_kd": False,
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "altclip",
    "num_layers": 3,
    "projection_dim": 768,
    "text_config": {
        "attention_probs_dropout_prob": 0.1,
        "bad_words_ids": None,
        "hidden_size": 1024,
        "id2label": {"0": "LABEL_0"},
        "model_type": "altclip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "pooler_fn": "cls",
        "position_embedding_type": "absolute",
        "project_dim": 768,
        "vocab_size": 250002,
    },
    "text_config_dict": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
    },
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": {
        "hidden_size": 768,
        "model_type": "altclip_vision_model",
        "num_attention_heads": 16,
        "patch_size": 32,
    },
    "vision_config_dict": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
}


def test_baai_style_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BAAI_STYLE_CONFIG))
    config = AltCLIPConfig.from_pretrained(tmp_path)
    assert config.vision_config.hidden_size == 1024  # `vision_config_dict` overrides `vision_config`
    assert config.vision_config.patch_size == 14
    assert config.text_config.intermediate_size == 4096 and config.text_config.project_dim == 768
    assert config.dtype == "float32"
    assert config.text_config.attention_probs_dropout_prob == 0.1
    # The towers' configs pick their part out of the full config.
    assert AltCLIPTextConfig.from_pretrained(tmp_path) == config.text_config
    assert AltCLIPVisionConfig.from_pretrained(tmp_path) == config.vision_config
    # Our parse agrees with transformers' own reading of the same file.
    import transformers

    ref = transformers.AltCLIPConfig.from_pretrained(str(tmp_path))
    for ours, theirs in ((config.text_config, ref.text_config), (config.vision_config, ref.vision_config)):
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            assert getattr(ours, key) == getattr(theirs, key), key
    assert config == KNOWN_MODELS["BAAI/AltCLIP"].config().__class__.from_dict(config.to_dict())


def test_config_round_trip_and_defaults(tmp_path):
    config = AltCLIPConfig.from_text_vision_configs(AltCLIPTextConfig(**TINY_TEXT), AltCLIPVisionConfig(**TINY_VISION))
    config.save_pretrained(tmp_path)
    assert AltCLIPConfig.from_pretrained(tmp_path) == config
    assert AltCLIPConfig.from_dict(config.to_dict()) == config
    # The documented defaults.
    text, vision, full = AltCLIPTextConfig(), AltCLIPVisionConfig(), AltCLIPConfig()
    assert (text.vocab_size, text.hidden_size, text.max_position_embeddings, text.project_dim) == (
        250002,
        1024,
        514,
        768,
    )
    assert (vision.hidden_size, vision.patch_size, vision.projection_dim, vision.hidden_act) == (
        768,
        32,
        512,
        "quick_gelu",
    )
    assert (full.projection_dim, full.logit_scale_init_value) == (768, 2.6592)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        AltCLIPConfig.from_hf_dict({"model_type": "bert"})
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        AltCLIPTextConfig(hidden_size=30, num_attention_heads=4)


def test_relative_positions_are_rejected():
    config = AltCLIPTextConfig(**{**TINY_TEXT, "position_embedding_type": "relative_key"})
    with pytest.raises(NotImplementedError, match="relative_key"):
        AltCLIPTextModel(config)


def test_unknown_hub_model_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointNotFoundError) as e:
        AltCLIPModel.from_pretrained("BAAI/AltCLIP")
    message = str(e.value)
    assert "config.json" in message and "BAAI/AltCLIP" in message
    assert "--local-dir" in message and "from_pretrained('./AltCLIP')" in message
    with pytest.raises(CheckpointNotFoundError, match="neither an existing local path"):
        AltCLIPModel.from_pretrained("./no/such/folder")


def test_folder_without_weights(tmp_path, ref_checkpoint):
    (tmp_path / "config.json").write_text((ref_checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointNotFoundError, match="no model weights: looked for model.safetensors.index.json"):
        AltCLIPModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["BAAI/AltCLIP", "BAAI/AltCLIP-m9", "BAAI/AltCLIP-m18"])
def test_registered_shapes(name):
    """The registry's shapes build (on the meta device) with the documented parameter counts."""
    with torch.device("meta"):
        model = AltCLIPModel(KNOWN_MODELS[name].config())
    millions = model.num_parameters() / 1e6
    expected = {"BAAI/AltCLIP": 864, "BAAI/AltCLIP-m9": 864, "BAAI/AltCLIP-m18": 1193}[name]
    assert abs(millions - expected) < 2, millions


def test_random_checkpoint_is_reproducible_and_loads_in_transformers(tmp_path, text_ids):
    a, b = random_model("tiny", seed=3), random_model("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(random_model("tiny", seed=4).text_projection.weight, a.text_projection.weight)
    write_random_checkpoint("tiny", tmp_path, seed=3)
    ref = load_reference(tmp_path)
    ids, mask = text_ids
    with torch.no_grad():
        assert_close(
            a.get_text_features(ids, mask),
            ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
            "tiny",
        )


def test_unreachable_hub_answers_from_the_cache_at_once(monkeypatch, tmp_path):
    """Without network (simulated: every connection refused) a Hub id fails in seconds with the message, instead
    of retrying for minutes; the cache alone is asked."""
    import socket
    import time

    import huggingface_hub.constants

    from altclip.loading import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (simulated)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    hub.hub_reachable.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointNotFoundError, match="Hugging Face Hub is unreachable"):
            AltCLIPModel.from_pretrained("BAAI/AltCLIP")
    finally:
        hub.hub_reachable.cache_clear()
    assert time.perf_counter() - start < 5
