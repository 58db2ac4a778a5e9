"""The transformers API that user code and tools touch, each behaviour checked against transformers itself (the
oracle) on the same configs, files and random weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from altclip import (
    AltCLIPConfig,
    AltCLIPModel,
    AltCLIPTextConfig,
    AltCLIPTextModel,
    AltCLIPVisionModel,
    AutoConfig,
    AutoModel,
)
from conftest import TINY_PROJECTION, TINY_TEXT, TINY_VISION, load_reference

# Keywords transformers' own AltCLIP tests pass to the configs, which are not fields of them.
TEXT_EXTRAS = dict(projection_dim=32, dropout=0.1, attention_dropout=0.1)
VISION_EXTRAS = dict(projection_dim=32, dropout=0.1)


def both(name: str):
    import transformers

    import altclip

    return getattr(altclip, name), getattr(transformers, name)


# ---------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("AltCLIPTextConfig", {**TINY_TEXT, **TEXT_EXTRAS}),
        ("AltCLIPVisionConfig", {**TINY_VISION, **VISION_EXTRAS}),
        ("AltCLIPConfig", dict(projection_dim=TINY_PROJECTION, text_config=TINY_TEXT, vision_config=TINY_VISION)),
    ],
)
def test_configs_take_transformers_keywords(name, kwargs):
    ours_cls, ref_cls = both(name)
    shared = dict(
        id2label={0: "a", 1: "b", 2: "c"}, return_dict=False, output_hidden_states=True, problem_type="regression"
    )
    ours, ref = ours_cls(**kwargs, **shared), ref_cls(**kwargs, **shared)
    for key in (*kwargs, *shared, "num_labels", "label2id", "use_return_dict", "is_encoder_decoder"):
        if isinstance(getattr(ref, key), (dict, int, float, str, bool, list)) and not key.endswith("_config"):
            assert getattr(ours, key) == getattr(ref, key), key
    assert ours.get_text_config() is (ours.text_config if name == "AltCLIPConfig" else ours)
    assert set(ours_cls.sub_configs) == set(ref_cls.sub_configs)
    assert ours_cls(num_labels=5).num_labels == ref_cls(num_labels=5).num_labels == 5
    assert ours_cls().num_labels == ref_cls().num_labels == 2
    assert ours_cls(torch_dtype="float16").dtype == "float16"


def test_config_num_labels_setter_and_iteration():
    ours, ref = AltCLIPConfig(), both("AltCLIPConfig")[1]()
    ours.num_labels, ref.num_labels = 3, 3
    assert ours.id2label == ref.id2label and ours.label2id == ref.label2id
    assert [k for k in ours if getattr(ours, k) is ours.text_config] == ["text_config"]
    assert {"text_config", "vision_config", "projection_dim"} <= set(ours) and "text_config" in set(ref)


def test_config_files_round_trip_both_ways(tmp_path):
    """Extra keys survive load -> save; each side reads what the other writes."""
    ours_cls, ref_cls = both("AltCLIPConfig")
    config = ours_cls(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=TINY_PROJECTION)
    data = config.to_dict()
    data["direct_kd"] = False  # a leftover key of BAAI/AltCLIP's config
    data["text_config"]["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = ours_cls.from_pretrained(tmp_path)
    assert loaded.direct_kd is False and loaded.text_config.num_layers == 3
    loaded.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["direct_kd"] is False and saved["text_config"]["num_layers"] == 3
    assert ours_cls.from_pretrained(tmp_path / "again") == loaded
    # transformers reads ours, we read transformers'.
    ref = ref_cls.from_pretrained(str(tmp_path / "again"))
    assert ref.text_config.hidden_size == loaded.text_config.hidden_size and ref.projection_dim == TINY_PROJECTION
    ref.save_pretrained(str(tmp_path / "theirs"))
    theirs = ours_cls.from_pretrained(tmp_path / "theirs")
    assert theirs.text_config.project_dim == TINY_TEXT["project_dim"] and theirs.vision_config.patch_size == 6


def test_config_json_helpers(tmp_path):
    config = AltCLIPTextConfig(**TINY_TEXT, dropout=0.2)
    config.to_json_file(tmp_path / "c.json")
    assert AltCLIPTextConfig.from_json_file(tmp_path / "c.json") == config
    diff = config.to_diff_dict()
    assert diff["dropout"] == 0.2 and "output_attentions" not in diff and diff["model_type"] == "altclip_text_model"
    assert config.to_dict()["output_attentions"] is False
    assert json.loads(config.to_json_string(use_diff=False)) == json.loads(json.dumps(config.to_dict()))


def test_config_from_pretrained_overrides_and_subfolder(tmp_path):
    AltCLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION).save_pretrained(tmp_path / "sub")
    config = AltCLIPConfig.from_pretrained(tmp_path, subfolder="sub", text_config={"vocab_size": 20}, projection_dim=8)
    assert config.text_config.vocab_size == 20 and config.text_config.hidden_size == TINY_TEXT["hidden_size"]
    assert config.projection_dim == 8
    text = AltCLIPTextConfig.from_pretrained(tmp_path / "sub")  # a tower's config out of the full one
    assert isinstance(text, AltCLIPTextConfig) and text.hidden_size == TINY_TEXT["hidden_size"]
    assert type(AutoConfig.from_pretrained(tmp_path, subfolder="sub")) is AltCLIPConfig
    with pytest.raises(OSError):
        AltCLIPConfig.from_pretrained(f".{tmp_path}")


# ---------------------------------------------------------------------------------------------------------------
# from_pretrained and save_pretrained


def test_from_pretrained_keywords(ref_checkpoint, text_ids):
    ids, mask = text_ids
    model, info = AltCLIPModel.from_pretrained(
        pretrained_model_name_or_path=ref_checkpoint,
        torch_dtype=torch.bfloat16,
        attn_implementation="eager",
        output_loading_info=True,
        low_cpu_mem_usage=True,
        local_files_only=True,
        revision=None,
        cache_dir=None,
    )
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert model.text_model.config._attn_implementation == "eager"
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    _, ref_info = type(load_reference(ref_checkpoint)).from_pretrained(str(ref_checkpoint), output_loading_info=True)
    assert set(ref_info) >= set(info)  # transformers reports the same keys (and maybe more)
    config = AltCLIPConfig.from_pretrained(ref_checkpoint)
    config.output_hidden_states = True
    model = AltCLIPModel.from_pretrained(ref_checkpoint, config=config)
    with torch.no_grad():
        out = model(ids, torch.zeros(3, 3, 30, 30), mask)
    assert out.text_model_output.hidden_states is not None and out.vision_model_output.hidden_states is not None
    assert AltCLIPModel.from_pretrained(ref_checkpoint, output_attentions=True).config.output_attentions
    with pytest.raises(ValueError, match='attn_implementation="foo"'):
        AltCLIPModel.from_pretrained(ref_checkpoint, attn_implementation="foo")
    with pytest.raises(TypeError, match="not_a_setting"):
        AltCLIPModel.from_pretrained(ref_checkpoint, not_a_setting=1)


def test_from_pretrained_subfolder_and_state_dict(tmp_path, ref_checkpoint):
    model = AltCLIPModel.from_pretrained(ref_checkpoint)
    model.save_pretrained(tmp_path / "sub")
    again = AltCLIPModel.from_pretrained(tmp_path, subfolder="sub")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    rebuilt = AltCLIPModel.from_pretrained(None, config=model.config, state_dict=model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
    saved = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert saved["architectures"] == ["AltCLIPModel"] and saved["dtype"] == "float32"


def test_meta_device_context_refuses_to_load(ref_checkpoint):
    import transformers

    with torch.device("meta"):
        with pytest.raises(RuntimeError, match="meta device context manager"):
            AltCLIPModel.from_pretrained(ref_checkpoint)
        with pytest.raises(RuntimeError, match="meta device context manager"):
            transformers.AltCLIPModel.from_pretrained(str(ref_checkpoint))
        model = AltCLIPModel(AltCLIPConfig.from_pretrained(ref_checkpoint))  # building without weights is fine
    assert model.logit_scale.device.type == "meta"


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def test_outputs_behave_as_model_output(ref_checkpoint, text_ids):
    ids, mask = text_ids
    ours = AltCLIPTextModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint).text_model  # transformers 5 reads no tower out of a full checkpoint
    with torch.no_grad():
        a, b = ours(ids, mask, output_hidden_states=True), ref(ids, mask, output_hidden_states=True)
    assert [k for k in a if k in b] == list(b)  # keys, in transformers' order; None fields are not keys
    assert "attentions" not in a and "attentions" not in b and a.attentions is None
    for key in b:
        assert type(a[key]) is type(b[key]), key
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a["pooler_output"], b["pooler_output"], atol=1e-5)
    assert len(a[1:]) == len(a) - 1 and isinstance(a.to_tuple(), tuple) and len(a.to_tuple()) == len(a)
    assert dict(a.items()).keys() == set(a.keys())
    a.attentions = (torch.zeros(1),)
    assert "attentions" in a and a["attentions"] is a.attentions
    a["pooler_output"] = torch.ones(1)
    assert torch.equal(a.pooler_output, torch.ones(1))
    copied = copy.deepcopy(a)
    assert set(copied) == set(a) and all(copied[k] is not None for k in a)


def test_return_dict_false_and_torchscript_give_tuples(ref_checkpoint, text_ids, pixels):
    ids, mask = text_ids
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint)
    px = torch.cat([pixels, pixels[:1]])
    with torch.no_grad():
        a = ours(ids, px, mask, return_dict=False)
        b = ref(input_ids=ids, pixel_values=px, attention_mask=mask, return_dict=False)
        c = AltCLIPModel.from_pretrained(ref_checkpoint, torchscript=True)(ids, px, mask)
    assert isinstance(a, tuple) and isinstance(c, tuple) and len(a) == len(c)
    for i in range(4):
        assert torch.allclose(a[i], b[i], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Members tools read


def test_members_match_transformers():
    import transformers

    for name in ("AltCLIPModel", "AltCLIPTextModel", "AltCLIPVisionModel"):
        ours, ref = both(name)
        assert ours.main_input_name == ref.main_input_name, name
        assert ours.supports_gradient_checkpointing == ref.supports_gradient_checkpointing
        assert ours.can_generate() is ref.can_generate() is False
        assert ours.config_class.__name__ == ref.config_class.__name__
        assert isinstance(ours._no_split_modules, list) and ours._no_split_modules
        assert not ours.is_encoder_decoder
    assert AltCLIPModel.base_model_prefix == transformers.AltCLIPModel.base_model_prefix


def test_embeddings_and_resizing(ref_checkpoint):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint).text_model
    text = ours.text_model
    assert text.get_input_embeddings() is ours.get_input_embeddings() is text.embeddings.token
    assert isinstance(ours.vision_model.get_input_embeddings(), nn.Conv2d)
    assert ours.get_output_embeddings() is None
    old = text.get_input_embeddings().weight.detach().clone()
    new = ours.resize_token_embeddings(120, pad_to_multiple_of=16)
    ref_new = ref.resize_token_embeddings(120, pad_to_multiple_of=16)
    assert new.num_embeddings == ref_new.num_embeddings == 128 == ours.config.text_config.vocab_size
    assert torch.equal(new.weight[: old.shape[0]], old)
    assert torch.allclose(new.weight[-1], old.mean(0))  # mean resizing, as transformers
    replacement = nn.Embedding(128, old.shape[1], padding_idx=1)
    ours.set_input_embeddings(replacement)
    assert text.embeddings.token is replacement
    ids = torch.tensor([[0, 125, 2]])
    with torch.no_grad():
        assert ours.text_model(ids).pooler_output.shape == (1, TINY_TEXT["project_dim"])


def test_attention_gradient_checkpointing_and_require_grads(ref_checkpoint, text_ids):
    ids, mask = text_ids
    model = AltCLIPModel.from_pretrained(ref_checkpoint)
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    assert {m.config._attn_implementation for m in (model, model.text_model, model.vision_model)} == {"eager"}
    with pytest.raises(ValueError, match='Specified `attn_implementation="flash"` is not supported'):
        model.set_attn_implementation("flash")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing and model.text_model.gradient_checkpointing
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    # A frozen model with adapters: gradients must reach the input embeddings' outputs.
    model.requires_grad_(False)
    model.enable_input_require_grads()
    out = model.text_model(ids, mask)
    assert out.last_hidden_state.requires_grad
    model.disable_input_require_grads()
    assert not model.text_model(ids, mask).last_hidden_state.requires_grad


@pytest.mark.parametrize("name", ["AltCLIPModel", "AltCLIPTextModel", "AltCLIPVisionModel"])
def test_legacy_gradient_checkpointing_key_turns_it_on(name, tmp_path):
    """transformers 4 configs could say gradient_checkpointing: true; transformers still honours it (and drops it)."""
    ours_cls, ref_cls = both(name)
    configs = {"AltCLIPModel": dict(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=TINY_PROJECTION)}
    kwargs = configs.get(name, TINY_TEXT if "Text" in name else TINY_VISION)
    ours_config, ref_config = ours_cls.config_class(**kwargs), ref_cls.config_class(**kwargs)
    ours_config.gradient_checkpointing = ref_config.gradient_checkpointing = True
    ours, ref = ours_cls(ours_config), ref_cls(ref_config)
    assert ours.is_gradient_checkpointing and ref.is_gradient_checkpointing
    assert all(m.gradient_checkpointing for m in ours.modules() if hasattr(m, "gradient_checkpointing"))
    ours.save_pretrained(tmp_path)
    assert "gradient_checkpointing" not in json.loads((tmp_path / "config.json").read_text())


def test_num_parameters_and_from_config(ref_checkpoint):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint)
    assert ours.num_parameters() == ref.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) < ours.num_parameters()
    ours.vision_model.requires_grad_(False)
    assert ours.num_parameters(only_trainable=True) == ours.num_parameters() - ours.vision_model.num_parameters()
    fresh = AltCLIPModel._from_config(ours.config, dtype=torch.bfloat16, attn_implementation="eager")
    assert fresh.dtype == torch.bfloat16 and fresh.config._attn_implementation == "eager"
    assert type(AutoModel.from_config(ours.config.vision_config)) is AltCLIPVisionModel


# ---------------------------------------------------------------------------------------------------------------
# Features, tracing


def test_features_take_output_flags_and_return_tensors(ref_checkpoint, text_ids, pixels):
    """As transformers 4.56 (the seed documents): the flags are accepted and the features are a tensor; hidden
    states and attentions come from the towers (``model.text_model(...)``) or the full forward."""
    ids, mask = text_ids
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint)
    with torch.no_grad():
        a = ours.get_text_features(ids, mask, output_hidden_states=True, output_attentions=True)
        b = ref.get_text_features(input_ids=ids, attention_mask=mask)
        b = b if isinstance(b, torch.Tensor) else b.pooler_output  # transformers 5 returns an output object
        c = ours.get_image_features(pixels, output_hidden_states=True, output_attentions=True)
        d = ref.get_image_features(pixel_values=pixels)
        d = d if isinstance(d, torch.Tensor) else d.pooler_output
        hidden = ours.text_model(ids, mask, output_hidden_states=True).hidden_states
    assert isinstance(a, torch.Tensor) and torch.allclose(a, b, atol=1e-5)
    assert isinstance(c, torch.Tensor) and torch.allclose(c, d, atol=1e-5)
    assert len(hidden) == TINY_TEXT["num_hidden_layers"] + 1


def test_jit_trace_and_export_both_towers(ref_checkpoint, text_ids, pixels):
    ids, mask = text_ids
    text = AltCLIPTextModel.from_pretrained(ref_checkpoint, torchscript=True)
    vision = AltCLIPVisionModel.from_pretrained(ref_checkpoint)
    with torch.no_grad():
        traced = torch.jit.trace(text, (ids, mask), strict=False)
        assert torch.allclose(traced(ids, mask)[1], text(ids, mask)[1], atol=1e-6)
        vision.config.return_dict = False
        traced = torch.jit.trace(vision, (pixels,), strict=False)
        assert torch.allclose(traced(pixels)[1], vision(pixels)[1], atol=1e-6)
        vision.config.return_dict = True
        text.config.torchscript = False
        for model, args in ((text, (ids, mask)), (vision, (pixels,))):
            exported = torch.export.export(model, args)
            a, b = exported.module()(*args), model(*args)
            assert type(a) is type(b) and torch.allclose(a.pooler_output, b.pooler_output, atol=1e-6)


def test_feature_methods_take_the_transformers_4_signature(ref_checkpoint, text_ids, pixels):
    """Code written for transformers 4.x passes return_dict to the feature methods; the seeds say they return
    tensors, and so they do, whatever return_dict says."""
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ids, mask = text_ids
    with torch.no_grad():
        plain = ours.get_text_features(input_ids=ids, attention_mask=mask)
        for flag in (True, False):
            text = ours.get_text_features(input_ids=ids, attention_mask=mask, return_dict=flag)
            image = ours.get_image_features(pixel_values=pixels, return_dict=flag)
            assert torch.is_tensor(text) and torch.is_tensor(image) and torch.equal(text, plain)
