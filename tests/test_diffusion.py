"""AltDiffusion's text encoder against diffusers' own (``RobertaSeriesModelWithTransformation``, the reference) on the
same weights, alone and inside diffusers' pipelines, on a tiny random pipeline; its checkpoints both ways; and the
real weights where BAAI/AltDiffusion-m9 is in the Hugging Face cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AltDiffusionPipeline,
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (  # noqa: E402
    RobertaSeriesConfig,
    RobertaSeriesModelWithTransformation,
)

from altclip.diffusion import AltDiffusionTextEncoder, AltDiffusionTextModel, load_pipeline  # noqa: E402
from altclip.diffusion.shapes import DIFFUSION_SHAPES  # noqa: E402
from altclip.loading.checkpoint import CheckpointError  # noqa: E402
from conftest import perturb_  # noqa: E402

TINY = DIFFUSION_SHAPES["altdiffusion-tiny"]
TEXT = dict(
    vocab_size=1000, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, project_dim=32,
)  # fmt: skip
PROMPTS = ["一只戴着红色帽子的猫坐在窗台上", "a dog", "une voiture rouge dans la rue"]


def reference_encoder(pre: bool, seed: int = 0) -> RobertaSeriesModelWithTransformation:
    torch.manual_seed(seed)
    model = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(**TEXT, has_pre_transformation=pre)).eval()
    perturb_(model, seed)
    return model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from altclip.loading.random_checkpoints import random_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer = random_tokenizer(TEXT["vocab_size"])
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session", params=[False, True], ids=["m9-head", "m18-head"])
def encoders(request, tmp_path_factory) -> tuple[RobertaSeriesModelWithTransformation, AltDiffusionTextEncoder, Path]:
    """diffusers' encoder, ours loaded from the folder diffusers saved it to, and that folder."""
    reference = reference_encoder(request.param)
    path = tmp_path_factory.mktemp("text_encoder")
    reference.save_pretrained(str(path))
    return reference, AltDiffusionTextEncoder.from_pretrained(path), path


@pytest.fixture(scope="session")
def parts() -> dict:
    """UNet, VAE and scheduler of the tiny shape (random, fixed seed), shared by the pipelines compared."""
    torch.manual_seed(1)
    return dict(
        unet=UNet2DConditionModel(**TINY.unet).eval(),
        vae=AutoencoderKL(**TINY.vae).eval(),
        scheduler=PNDMScheduler(**TINY.scheduler),
    )


def make_pipeline(cls, text_encoder, tokenizer, parts):
    options = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls(text_encoder=text_encoder, tokenizer=tokenizer, **parts, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, **kwargs) -> np.ndarray:
    settings = dict(prompt=PROMPTS, negative_prompt=["blurry"] * len(PROMPTS), num_inference_steps=2,
                    guidance_scale=7.5, output_type="np")  # fmt: skip
    settings.update(kwargs)
    count = len(settings["prompt"]) if settings["prompt"] is not None else len(settings["prompt_embeds"])
    generators = [torch.Generator().manual_seed(i) for i in range(count)]
    return pipe(**settings, generator=generators).images


def padded(tokenizer, texts):
    batch = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return batch.input_ids, batch.attention_mask


# ---------------------------------------------------------------------------------------------------------------
# The encoder alone


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no-mask"])
def test_outputs_match_diffusers(encoders, tokenizer, masked):
    reference, ours, _ = encoders
    ids, mask = padded(tokenizer, [*PROMPTS, ""])
    mask = mask if masked else None
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, attention_mask=mask, output_hidden_states=True)
    assert list(got.keys()) == list(expected.keys()) == ["projection_state", "last_hidden_state", "hidden_states"]
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == TEXT["num_hidden_layers"] + 1
    for a, b in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert got[-1] is got.hidden_states  # what the pipelines' clip skip reads


def test_what_the_packed_path_does_not_take(encoders, tokenizer):
    """token_type_ids, position_ids, attention maps: the padded batch, as given; the same states as diffusers'."""
    reference, ours, _ = encoders
    ids, mask = padded(tokenizer, PROMPTS)
    types = torch.zeros_like(ids)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, token_type_ids=types)[0]
        got = ours(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)
    assert len(got.attentions) == TEXT["num_hidden_layers"] and got.attentions[0].shape == (3, 4, 77, 77)
    assert torch.all(got.attentions[0][mask[:, None, None, :].expand(-1, 4, 77, -1) == 0] == 0)  # padding unread
    assert isinstance(ours(ids, mask, return_dict=False), tuple)


def test_prompts_run_on_their_own_tokens(encoders, tokenizer, monkeypatch):
    """A prompt padded to 77 tokens costs its tokens plus one: the rows the layers compute."""
    import altclip.modeling.text

    _, ours, _ = encoders
    rows = []

    class Spy(altclip.modeling.text.Packing):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            rows.append(len(self.index))

    monkeypatch.setattr(altclip.modeling.text, "Packing", Spy)
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        ours(ids, attention_mask=mask)
    assert rows == [int(mask.sum()) + len(PROMPTS)]


def test_config_and_members_pipelines_read(encoders):
    reference, ours, _ = encoders
    assert ours.config.use_attention_mask is True
    assert ours.config.project_dim == reference.config.project_dim
    assert ours.config.has_pre_transformation == reference.config.has_pre_transformation
    assert ours.dtype == torch.float32 and ours.device == torch.device("cpu")
    half = AltDiffusionTextEncoder.from_pretrained(encoders[2], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_missing_config_keys_mean_what_they_mean_to_diffusers(tmp_path, tokenizer):
    """A config.json without layer_norm_eps, use_attention_mask or has_pre_transformation: XLM-R's defaults
    (eps 1e-12), as RobertaSeriesConfig reads it, not AltCLIP's."""
    reference_encoder(False).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("layer_norm_eps", "use_attention_mask", "has_pre_transformation", "type_vocab_size"):
        config.pop(key, None)
    config["vocab_size"], config["type_vocab_size"] = 1000, 1  # the weights' sizes
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = RobertaSeriesModelWithTransformation.from_pretrained(str(tmp_path)).eval()
    ours = AltDiffusionTextModel.from_pretrained(tmp_path)
    assert ours.config.layer_norm_eps == reference.config.layer_norm_eps == 1e-12
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask)[0], reference(ids, attention_mask=mask)[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Inside diffusers' pipelines


@pytest.mark.parametrize("pipeline_class", [AltDiffusionPipeline, StableDiffusionPipeline])
def test_images_match_diffusers_encoder(encoders, tokenizer, parts, pipeline_class):
    reference, ours, _ = encoders
    expected = images(make_pipeline(pipeline_class, reference, tokenizer, parts))
    got = images(make_pipeline(pipeline_class, ours, tokenizer, parts))
    assert expected.shape == (3, 32, 32, 3) and expected.std() > 0.01
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_clip_skip_conditions_on_an_earlier_layer(encoders, tokenizer, parts):
    """diffusers' own encoder fails with clip_skip (it has no text_model.final_layer_norm); ours applies its head to
    the hidden state clip_skip layers before the last: the same images as diffusers' encoder's states of that layer
    through that head, given as prompt embeddings."""
    reference, ours, _ = encoders
    ids, mask = padded(tokenizer, PROMPTS)
    negative_ids, negative_mask = padded(tokenizer, ["blurry"] * len(PROMPTS))
    with torch.no_grad():
        hidden = reference(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        if reference.config.has_pre_transformation:
            embeds = reference.transformation_pre(reference.pre_LN(hidden))
        else:
            embeds = reference.transformation(hidden)
        negative = reference(negative_ids, attention_mask=negative_mask)[0]
    pipe = make_pipeline(StableDiffusionPipeline, ours, tokenizer, parts)
    expected = images(pipe, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    got = images(make_pipeline(StableDiffusionPipeline, ours, tokenizer, parts), clip_skip=1)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(AttributeError):
        images(make_pipeline(StableDiffusionPipeline, reference, tokenizer, parts), clip_skip=1)


def test_a_saved_pipeline_loads_back(encoders, tokenizer, parts, tmp_path):
    reference, ours, _ = encoders
    pipe = make_pipeline(StableDiffusionPipeline, ours, tokenizer, parts)
    pipe.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder"] == ["altclip.diffusion.component", "AltDiffusionTextEncoder"]
    loaded = StableDiffusionPipeline.from_pretrained(str(tmp_path))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder) is AltDiffusionTextEncoder
    np.testing.assert_allclose(images(loaded), images(pipe), atol=1e-6, rtol=0)
    # diffusers' own class reads the saved text encoder, to the same states as the one it was made from
    theirs = RobertaSeriesModelWithTransformation.from_pretrained(str(tmp_path / "text_encoder")).eval()
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids, attention_mask=mask)[0], reference(ids, attention_mask=mask)[0])
    assert type(load_pipeline(tmp_path).text_encoder) is AltDiffusionTextEncoder


def test_load_pipeline_reads_baais_layout(tmp_path, tokenizer):
    """A pipeline folder as BAAI publishes it (model_index.json naming the `alt_diffusion` library, which diffusers
    0.42 cannot resolve): load_pipeline makes the images diffusers makes from the same folder's parts with its own
    text encoder."""
    from altclip.diffusion import write_random_pipeline

    write_random_pipeline("altdiffusion-tiny", tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["text_encoder"][0] == "alt_diffusion"
    with pytest.raises(ValueError, match="alt_diffusion"):
        StableDiffusionPipeline.from_pretrained(str(tmp_path))
    pipe = load_pipeline(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.text_encoder) is AltDiffusionTextEncoder
    reference = RobertaSeriesModelWithTransformation.from_pretrained(str(tmp_path / "text_encoder")).eval()
    theirs = make_pipeline(
        AltDiffusionPipeline, reference, pipe.tokenizer,
        dict(unet=pipe.unet, vae=pipe.vae, scheduler=PNDMScheduler.from_pretrained(str(tmp_path / "scheduler"))),
    )  # fmt: skip
    np.testing.assert_allclose(images(pipe), images(theirs), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_weight_layouts(tmp_path, tokenizer):
    """transformers' tensor names (`encoder.layer.N`), `encoder.layers.N`, and a legacy pickle carrying buffers, the
    pooler and a logit scale, as diffusers' class skips them: the same model from each."""
    from safetensors.torch import load_file

    reference = reference_encoder(False)
    reference.save_pretrained(str(tmp_path / "a"))
    assert any(".encoder.layer.0." in k for k in _keys(tmp_path / "a"))
    state = load_file(str(tmp_path / "a" / "model.safetensors"))
    layers = {k.replace(".encoder.layer.", ".encoder.layers."): v for k, v in state.items()}
    extra = {"roberta.embeddings.position_ids": torch.arange(514)[None], "logit_scale": torch.tensor(4.6),
             "roberta.pooler.dense.weight": torch.zeros(32, 32), "roberta.pooler.dense.bias": torch.zeros(32)}  # fmt: skip
    for name, tensors, file in (("b", layers, "model.safetensors"), ("c", {**state, **extra}, "pytorch_model.bin")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
        if file.endswith(".bin"):
            torch.save(tensors, tmp_path / name / file)
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp_path / name / file))
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask)[0]
        for name in "abc":
            got = AltDiffusionTextModel.from_pretrained(tmp_path / name)(ids, mask)[0]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)


def test_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    reference_encoder(True).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["has_pre_transformation"] = False  # -m18 weights, read as -m9's: transformation_pre is left over
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="transformation_pre"):
        AltDiffusionTextModel.from_pretrained(tmp_path)
    config["has_pre_transformation"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["transformation_pre.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: transformation_pre\.bias"):
        AltDiffusionTextModel.from_pretrained(tmp_path)


def test_our_save_is_read_by_diffusers_class(encoders, tokenizer, tmp_path):
    reference, ours, _ = encoders
    AltDiffusionTextModel.from_pretrained(encoders[2]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["RobertaSeriesModelWithTransformation"]
    assert config["model_type"] == "xlm-roberta"
    theirs = RobertaSeriesModelWithTransformation.from_pretrained(str(tmp_path)).eval()
    assert theirs.config.has_pre_transformation == reference.config.has_pre_transformation
    ids, mask = padded(tokenizer, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids, attention_mask=mask)[0], reference(ids, attention_mask=mask)[0])


def test_the_model_needs_neither_diffusers_nor_transformers(tmp_path):
    reference_encoder(True).save_pretrained(str(tmp_path))
    code = (
        "import sys, torch\n"
        "from altclip.diffusion import AltDiffusionTextModel\n"
        f"m = AltDiffusionTextModel.from_pretrained({str(tmp_path)!r})\n"
        "ids = torch.tensor([[0, 5, 9, 2, 1, 1]])\n"
        "assert m(ids, ids.ne(1).long())[0].shape == (1, 6, 32)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('diffusers', 'transformers')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent / "src"), *sys.path])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# The GPU's packed path (varlen attention with query-only rows) and real weights


def test_query_only_rows_as_varlen_attention_reads_them():
    """What the GPU's varlen kernel is given for packed rows with query-only padding rows (``Packing.keys`` and
    ``key_cu_seqlens``), run here segment by segment as the kernel defines it: the attention of the padded batch
    under its mask, at every kept row."""
    from altclip.modeling.layers import Packing

    lengths = torch.tensor([3, 6, 1, 4])
    T, heads, size = 6, 2, 4
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    packing = Packing(mask, rows=torch.arange(T)[None] <= lengths[:, None])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(len(packing.index), heads, size, generator=g) for _ in range(3))
    keys, values = k[packing.keys], v[packing.keys]
    segments = []
    for i in range(len(lengths)):  # varlen: query segment i attends to key segment i
        rows = slice(packing.cu_seqlens[i], packing.cu_seqlens[i + 1])
        cols = slice(packing.key_cu_seqlens[i], packing.key_cu_seqlens[i + 1])
        attended = torch.nn.functional.scaled_dot_product_attention(
            q[rows].transpose(0, 1), keys[cols].transpose(0, 1), values[cols].transpose(0, 1)
        )
        segments.append(attended.transpose(0, 1))
    padded = [packing.unpack(x.reshape(len(x), -1)).view(len(lengths), T, heads, size).transpose(1, 2)
              for x in (q, k, v)]  # fmt: skip
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    expected = torch.nn.functional.scaled_dot_product_attention(*padded, attn_mask=additive)
    expected = packing.pack(expected.transpose(1, 2).reshape(len(lengths), T, -1))
    torch.testing.assert_close(torch.cat(segments).reshape(len(expected), -1), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_diffusers(encoders, tokenizer, dtype):
    reference, _, path = encoders
    ours = AltDiffusionTextEncoder.from_pretrained(path, dtype=dtype, device="cuda")
    reference = reference.to("cuda", dtype)
    ids, mask = (t.cuda() for t in padded(tokenizer, [*PROMPTS, ""]))
    with torch.no_grad():
        expected, got = reference(ids, attention_mask=mask)[0].float(), ours(ids, mask)[0].float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=0)


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


@pytest.mark.slow
@pytest.mark.skipif(not _cached("BAAI/AltDiffusion-m9"), reason="BAAI/AltDiffusion-m9 is not in the Hugging Face cache")
def test_real_weights_match_diffusers():
    from transformers import XLMRobertaTokenizer

    name = "BAAI/AltDiffusion-m9"
    reference = RobertaSeriesModelWithTransformation.from_pretrained(name, subfolder="text_encoder").eval()
    ours = AltDiffusionTextEncoder.from_pretrained(name, subfolder="text_encoder")
    tokenizer = XLMRobertaTokenizer.from_pretrained(name, subfolder="tokenizer")
    ids, mask = padded(tokenizer, [*PROMPTS, "Ein Hund spielt im Schnee", ""])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask)[0], reference(ids, attention_mask=mask)[0], atol=1e-4, rtol=0)
    pipe = load_pipeline(name, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = make_pipeline(StableDiffusionPipeline, reference, pipe.tokenizer,
                           dict(unet=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler))  # fmt: skip
    settings = dict(prompt=PROMPTS[:1], negative_prompt=None, num_inference_steps=2, width=64, height=64)
    np.testing.assert_allclose(images(pipe, **settings), images(theirs, **settings), atol=1e-4, rtol=0)
