"""Every fast path stays within its stated tolerance of the exact float32 path (CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from altclip import AltCLIPConfig, AltCLIPModel
from altclip.loading.random_checkpoints import random_model
from altclip.modeling import layers
from altclip.modeling.quantize import QuantizationConfig, QuantizationError, quantize

# A small model with realistic activation statistics (quantization error depends on width, so not the tiny one).
SMALL = AltCLIPConfig(
    text_config=dict(
        vocab_size=1000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        project_dim=192,
    ),
    vision_config=dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, image_size=64, patch_size=8
    ),
    projection_dim=128,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("small")
    random_model(SMALL, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (12, 20), generator=g)
    lengths = torch.randint(4, 21, (12,), generator=g)
    mask = (torch.arange(20)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)
    ids[:, 0] = 0
    return ids, mask, torch.randn(6, 3, 64, 64, generator=g)


def embeddings(model, inputs):
    ids, mask, pixels = inputs
    with torch.inference_mode():
        return model.get_text_features(input_ids=ids, attention_mask=mask).float(), model.get_image_features(
            pixel_values=pixels.to(model.dtype)
        ).float()


def min_cosine(a, b) -> float:
    return F.cosine_similarity(a, b, dim=-1).min().item()


@pytest.fixture(scope="module")
def exact(checkpoint, inputs):
    return embeddings(AltCLIPModel.from_pretrained(checkpoint), inputs)


@pytest.mark.parametrize(
    "name, load, tolerance",
    [
        ("bf16", dict(dtype=torch.bfloat16), 0.999),
        ("fp16", dict(dtype=torch.float16), 0.999),
        ("int8 dynamic", dict(quantization_config="int8_dynamic"), 0.995),
        (
            "int8 dynamic + int8 embeddings",
            dict(quantization_config={"method": "int8_dynamic", "include_embeddings": True}),
            0.995,
        ),
    ],
)
def test_fast_path_within_tolerance(checkpoint, inputs, exact, name, load, tolerance):
    text, image = embeddings(AltCLIPModel.from_pretrained(checkpoint, **load), inputs)
    assert min_cosine(text, exact[0]) >= tolerance, name
    assert min_cosine(image, exact[1]) >= tolerance, name
    assert not torch.equal(text, exact[0])  # it really is a different computation


def test_int8_dynamic_quantizes_the_layers(checkpoint):
    model = AltCLIPModel.from_pretrained(checkpoint, quantization_config="int8_dynamic")
    quantized = [
        n for n, m in model.named_modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
    ]
    assert len(quantized) == 2 * 4 * 4  # 4 linear layers in each of 4 layers, in both towers
    assert isinstance(model.text_projection, torch.nn.Linear) and model.quantization_config.method == "int8_dynamic"


def test_packed_text_path_is_the_default_and_exact(checkpoint, inputs):
    model = AltCLIPModel.from_pretrained(checkpoint)
    ids, mask, _ = inputs
    with torch.inference_mode():
        fast = model.get_text_features(input_ids=ids, attention_mask=mask)
        plain = model.text_projection(model.text_model(ids, mask).pooler_output)
    assert (fast - plain).abs().max() <= 1e-5


def test_unsupported_combinations_say_what_is_supported(checkpoint):
    model = AltCLIPModel.from_pretrained(checkpoint)
    with pytest.raises(QuantizationError, match="int4_weight_only needs a CUDA GPU.*on CPU use int8_dynamic"):
        quantize(model, {"quant_type": "int4_weight_only", "group_size": 128})
    with pytest.raises(QuantizationError, match="Unknown quantization method 'int3'; supported: int8_dynamic"):
        QuantizationConfig("int3")
    with pytest.raises(QuantizationError, match="Unknown quantization settings"):
        QuantizationConfig.coerce({"method": "int8_dynamic", "bits": 8})
    with pytest.raises(QuantizationError, match="runs through torchao only"):
        QuantizationConfig("int8_weight_only", backend="torch")


def test_transformers_style_config_objects(checkpoint):
    class TorchAoConfig:  # the shape of transformers' TorchAoConfig, as the seed's snippet builds it
        quant_type = "int8_weight_only"
        quant_type_kwargs = {"group_size": 64}

    config = QuantizationConfig.coerce(TorchAoConfig())
    assert (config.method, config.group_size) == ("int8_weight_only", 64)


def test_variable_length_attention_plumbing(checkpoint, inputs, monkeypatch):
    """The packed rows and sequence offsets handed to the variable-length kernel (CUDA only) are right: with a
    reference kernel (attention within each sequence, one at a time) the packed path equals the padded one."""
    from altclip.modeling import layers

    def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and int(cu_q[-1]) == len(q)
        assert max_q >= int((cu_q[1:] - cu_q[:-1]).max())
        out = torch.empty_like(q)
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (nh, n, hs)
            out[start:end] = F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1)
        return out

    model = AltCLIPModel.from_pretrained(checkpoint)
    ids, mask, _ = inputs
    with torch.inference_mode():
        padded = model.get_text_features(input_ids=ids, attention_mask=mask)
        monkeypatch.setattr(layers, "varlen_kernel", lambda: reference_varlen)
        monkeypatch.setattr(layers, "varlen_supported", lambda x: True)
        packed = model.get_text_features(input_ids=ids, attention_mask=mask)
    assert (packed - padded).abs().max() <= 1e-5


def test_recorded_path_equals_eager(checkpoint, inputs):
    """What a CUDA graph records (the padded path, no value-dependent branches) equals the default path."""
    from altclip.modeling.layers import recording

    model = AltCLIPModel.from_pretrained(checkpoint)
    ids, mask, pixels = inputs
    with torch.inference_mode():
        eager = model.get_text_features(input_ids=ids, attention_mask=mask)
        with recording():
            recorded = model.get_text_features(input_ids=ids, attention_mask=mask)
    assert (recorded - eager).abs().max() <= 1e-5


def _linear_kernels(fn) -> set[str]:
    """The matrix-multiply kernels ``fn`` runs, as the profiler names them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return names & {"mkldnn::_linear_pointwise", "aten::addmm", "aten::linear", "quantized::linear_dynamic"}


@pytest.mark.skipif(layers.onednn_linear() is None, reason="oneDNN's small-batch path is for x86 CPUs")
def test_small_batches_multiply_through_onednn_within_round_off():
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(3, 20, 64)  # 60 rows
    with torch.inference_mode():
        assert _linear_kernels(lambda: layers.linear(layer, x)) == {"mkldnn::_linear_pointwise"}
        torch.testing.assert_close(layers.linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-6)
        big = torch.randn(layers.ONEDNN_MAX_ROWS + 1, 64)
        assert "mkldnn::_linear_pointwise" not in _linear_kernels(lambda: layers.linear(layer, big))
        half = torch.nn.Linear(64, 48).to(torch.bfloat16)
        assert "mkldnn::_linear_pointwise" not in _linear_kernels(lambda: layers.linear(half, x.bfloat16()))
        int8 = torch.ao.nn.quantized.dynamic.Linear(64, 48)
        assert _linear_kernels(lambda: layers.linear(int8, x)) == {"quantized::linear_dynamic"}


@pytest.mark.skipif(layers.onednn_linear() is None, reason="oneDNN's small-batch path is for x86 CPUs")
def test_small_batch_path_leaves_autograd_hooks_and_tracing_alone():
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(20, 64)
    out = layers.linear(layer, x)  # autograd on: the weights need gradients
    assert out.grad_fn is not None
    out.sum().backward()
    assert layer.weight.grad is not None
    seen = []
    layer.register_forward_hook(lambda *args: seen.append(1))
    with torch.inference_mode():
        layers.linear(layer, x)
    assert seen == [1]  # the hook ran: the module was called

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 48)

        def forward(self, t):
            return layers.linear(self.layer, t)

    with torch.no_grad():
        graph = str(torch.jit.trace(Wrapper(), (x,)).inlined_graph)
    assert "linear" in graph and "mkldnn" not in graph


def test_without_the_onednn_kernel_linear_layers_fall_back_to_the_module(monkeypatch):
    """The kernel is an operator, not a documented API: where it is missing (another PyTorch) or disagrees with
    F.linear on the check, every product goes through the module itself."""
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(20, 64)
    layers.onednn_linear.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None, raising=False)
    try:
        assert layers.onednn_linear() is None
        with torch.inference_mode():
            assert "mkldnn::_linear_pointwise" not in _linear_kernels(lambda: layers.linear(layer, x))
            torch.testing.assert_close(layers.linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    finally:
        monkeypatch.undo()
        layers.onednn_linear.cache_clear()


def test_one_query_matches_transformers(ref_checkpoint, text_ids):
    """Batch 1 on CPU (the small-batch path where oneDNN is there) within 1e-5 of transformers."""
    from conftest import load_reference

    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint)
    ids = text_ids[0][:1]
    with torch.inference_mode():
        a = ours.get_text_features(input_ids=ids)
        b = ref.get_text_features(input_ids=ids).pooler_output
        a_image = ours.get_image_features(pixel_values=torch.ones(1, 3, 30, 30))
        b_image = ref.get_image_features(pixel_values=torch.ones(1, 3, 30, 30)).pooler_output
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a_image, b_image, rtol=0, atol=1e-5)


def test_quick_gelu_in_one_buffer_is_the_same_function():
    x = torch.randn(7, 33, generator=torch.Generator().manual_seed(0)) * 4
    before = x.clone()
    expected = x * torch.sigmoid(1.702 * x)
    with torch.inference_mode():
        assert torch.equal(layers.quick_gelu(x), expected)  # bit for bit: the same three operations
    assert torch.equal(x, before)  # the input is never written
    leaf = x.clone().requires_grad_()
    layers.quick_gelu(leaf).sum().backward()  # with autograd: the out-of-place form, whose backward is sound
    leaf2 = x.clone().requires_grad_()
    (leaf2 * torch.sigmoid(1.702 * leaf2)).sum().backward()
    assert torch.equal(leaf.grad, leaf2.grad)
