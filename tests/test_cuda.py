"""The GPU paths (CI has no GPU: every test here skips without CUDA; `benchmarks/gpu_suite.sh` runs them).

Float32 on CUDA is the exact path and must match transformers as on the CPU; the fast paths (bfloat16 with
variable-length attention, CUDA graphs, torchao quantization) must stay within their stated tolerances.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from altclip import AltCLIPModel
from altclip.modeling.layers import recording
from conftest import load_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = dict(
    text_config=dict(
        vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        project_dim=192,
    ),
    vision_config=dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, image_size=64,
        patch_size=8,
    ),
    projection_dim=128,
)  # fmt: skip


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 means float32: TF32 matrix products (cuDNN's default for convolutions) round to 10 bits."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def small_inputs(batch: int = 12, length: int = 20, image: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 1000, (batch, length), generator=g).masked_fill(mask == 0, 1)
    ids[:, 0] = 0
    return ids.cuda(), mask.cuda(), torch.randn(batch // 2, 3, image, image, generator=g).cuda()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from altclip import AltCLIPConfig
    from altclip.loading.random_checkpoints import random_model

    path = tmp_path_factory.mktemp("small")
    random_model(AltCLIPConfig(**SMALL), seed=0).save_pretrained(path)
    return path


def features(model, ids, mask, pixels):
    with torch.inference_mode():
        text = model.get_text_features(input_ids=ids, attention_mask=mask).float()
        image = model.get_image_features(pixel_values=pixels.to(model.dtype)).float()
    return text, image


def min_cosine(a, b) -> float:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).min().item()


def test_float32_on_cuda_matches_transformers(ref_checkpoint, text_ids, pixels):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint, device="cuda")
    ids, mask = (t.cuda() for t in text_ids)
    pixels = torch.cat([pixels, pixels[:1].flip(-1)]).cuda()
    for attn in ("eager", "sdpa"):
        ref = load_reference(ref_checkpoint, attn=attn).cuda()
        with torch.no_grad():
            a = ours(
                input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True, output_hidden_states=True
            )
            b = ref(
                input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True, output_hidden_states=True
            )
            features_a = ours.get_text_features(input_ids=ids, attention_mask=mask), ours.get_image_features(pixels)
            features_b = ref.get_text_features(input_ids=ids, attention_mask=mask), ref.get_image_features(pixels)
        for name in ("loss", "logits_per_image", "text_embeds", "image_embeds"):
            assert (a[name] - b[name]).abs().max().item() <= 1e-5, (attn, name)
        for x, y in zip(a.text_model_output.hidden_states, b.text_model_output.hidden_states):
            assert (x - y).abs().max().item() <= 1e-5, attn
        for x, y in zip(features_a, features_b):
            y = getattr(y, "pooler_output", y)  # transformers 5 returns an output object
            assert (x - y).abs().max().item() <= 1e-5, attn


def test_bfloat16_stays_close_to_float32(small_checkpoint):
    exact = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda")
    fast = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda", dtype=torch.bfloat16)
    ids, mask, pixels = small_inputs()
    text_exact, image_exact = features(exact, ids, mask, pixels)
    text_fast, image_fast = features(fast, ids, mask, pixels)
    assert min_cosine(text_fast, text_exact) >= 0.999
    assert min_cosine(image_fast, image_exact) >= 0.999


def test_variable_length_attention_equals_padded_attention(small_checkpoint):
    """Packed texts through the variable-length kernel against the padded path (the one graphs record)."""
    from altclip.modeling import layers

    if layers.varlen_kernel() is None:
        pytest.skip("this PyTorch has no torch.nn.attention.varlen")
    model = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda", dtype=torch.bfloat16)
    ids, mask, _ = small_inputs()
    with torch.inference_mode():
        packed = model.get_text_features(input_ids=ids, attention_mask=mask).float()
        with recording():
            padded = model.get_text_features(input_ids=ids, attention_mask=mask).float()
    assert min_cosine(packed, padded) >= 0.9999


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_equals_eager(small_checkpoint, dtype):
    from altclip.modeling.cuda_graphs import GraphedFeatures

    model = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda", dtype=dtype)
    graphed = GraphedFeatures(model)
    ids, mask, pixels = small_inputs(batch=6, length=13)
    with torch.inference_mode():
        for rows in (1, 3, 6):
            # The same padded input eagerly: identical kernels, identical result.
            width = 16
            padded_ids = torch.nn.functional.pad(ids[:rows], (0, width - 13), value=1)
            padded_mask = torch.nn.functional.pad(mask[:rows], (0, width - 13))
            filler = (8 if rows > 4 else 4 if rows > 2 else rows) - rows
            padded_ids = torch.cat([padded_ids, torch.full((filler, width), 1, device="cuda")])
            padded_mask = torch.cat([padded_mask, torch.zeros((filler, width), dtype=torch.long, device="cuda")])
            padded_mask[rows:, 0] = 1
            with recording():
                eager = model.get_text_features(input_ids=padded_ids, attention_mask=padded_mask)[:rows]
            for _ in range(2):  # the first call records, the second replays
                replayed = graphed.get_text_features(input_ids=ids[:rows], attention_mask=mask[:rows])
                assert torch.equal(replayed, eager)
            unpadded = model.get_text_features(input_ids=ids[:rows], attention_mask=mask[:rows])
            tolerance = 1e-5 if dtype == torch.float32 else 0.9999
            if dtype == torch.float32:
                assert (replayed - unpadded).abs().max().item() <= tolerance
            else:
                assert min_cosine(replayed, unpadded) >= tolerance
            image_eager = model.get_image_features(pixel_values=pixels[:rows].to(dtype))
            for _ in range(2):
                image_replayed = graphed.get_image_features(pixel_values=pixels[:rows].to(dtype))
            if dtype == torch.float32:
                assert (image_replayed - image_eager).abs().max().item() <= 1e-5
            else:
                assert min_cosine(image_replayed, image_eager) >= 0.9999
    assert graphed.graphs == 5  # texts at batch 1, 4 and 8; images (3 of them) at batch 1 and 4
    big = graphed.get_text_features(input_ids=ids.repeat(2, 1), attention_mask=mask.repeat(2, 1))
    assert big.shape == (12, 128) and graphed.graphs == 5  # over max_batch: eager


def test_embedder_uses_graphs_on_cuda(checkpoint):
    import altclip
    from altclip.inference import Embedder
    from altclip.modeling.cuda_graphs import GraphedFeatures

    model, processor = altclip.load(checkpoint, device="cuda")
    fast, plain = Embedder(model, processor, "tiny"), Embedder(model, processor, "tiny", cuda_graphs=False)
    assert isinstance(fast.features, GraphedFeatures)
    texts = ["一张猫的照片", "a photo of a dog", "x"]
    assert abs(fast.embed_texts(texts) - plain.embed_texts(texts)).max() <= 1e-5
    assert fast.features.graphs > 0


def test_embedder_compiles_the_image_tower_in_half_precision(small_checkpoint):
    """bfloat16 on CUDA: large image batches run compiled (within bf16's tolerance of eager bf16 and of float32);
    float32 stays the exact eager path."""
    import numpy as np

    from altclip.inference import Embedder
    from altclip.modeling.compiled import CompiledImageFeatures

    processor = None  # the pixels go in directly (the small checkpoint has no tokenizer)
    exact = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda")
    half = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda", dtype=torch.bfloat16)
    assert not isinstance(Embedder(exact, processor, "exact").features.model, CompiledImageFeatures)
    fast = Embedder(half, processor, "fast")
    compiled_features = fast.features.model  # graphs over the compiled image tower
    assert isinstance(compiled_features, CompiledImageFeatures)
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(40, 3, 64, 64, generator=g).cuda()
    with torch.inference_mode():
        got = compiled_features.get_image_features(pixel_values=pixels.bfloat16()).float()
        eager = half.get_image_features(pixel_values=pixels.bfloat16()).float()
        reference = exact.get_image_features(pixel_values=pixels).float()
    assert compiled_features.failed is None, compiled_features.failed
    assert min_cosine(got, eager) >= 0.9999 and min_cosine(got, reference) >= 0.999
    assert np.isfinite(got.cpu().numpy()).all()


@pytest.mark.parametrize("method", ["int8_dynamic", "int8_weight_only", "int4_weight_only"])
def test_torchao_quantization_on_cuda(small_checkpoint, method):
    pytest.importorskip("torchao")
    exact = AltCLIPModel.from_pretrained(small_checkpoint, device="cuda")
    quantized = AltCLIPModel.from_pretrained(
        small_checkpoint, device="cuda", dtype=torch.bfloat16, quantization_config=method
    )
    ids, mask, pixels = small_inputs()
    text_exact, image_exact = features(exact, ids, mask, pixels)
    text_q, image_q = features(quantized, ids, mask, pixels)
    assert min_cosine(text_q, text_exact) >= 0.99 and min_cosine(image_q, image_exact) >= 0.99
