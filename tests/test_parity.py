"""Parity with transformers' AltCLIP (the reference) on identical random weights, float32, eval mode."""

from __future__ import annotations

import pytest
import torch

from altclip import AltCLIPModel, AltCLIPTextModel, AltCLIPVisionModel
from conftest import TINY_TEXT, load_reference, reference_model

ATOL = 1e-5


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, atol: float = ATOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"


def assert_all_close(ours, ref, what: str) -> None:
    assert len(ours) == len(ref), f"{what}: {len(ours)} tensors vs reference {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert_close(a, b, f"{what}[{i}]")


@pytest.fixture(scope="module")
def models(ref_checkpoint):
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    return ours, load_reference(ref_checkpoint, attn="eager"), load_reference(ref_checkpoint, attn="sdpa")


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_forward_matches_reference(models, text_ids, pixels, padded, attn):
    ours, ref_eager, ref_sdpa = models
    ref = ref_eager if attn == "eager" else ref_sdpa
    ids, mask = text_ids
    if not padded:
        ids, mask = ids[:1], mask[:1]
        pixels = pixels[:1]
    else:
        pixels = torch.cat([pixels, pixels[:1].flip(-1)])  # three images for three texts
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True, output_hidden_states=True)
        b = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True, output_hidden_states=True)
    for name in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert_close(a[name], b[name], name)
    for tower in ("text_model_output", "vision_model_output"):
        for name in ("last_hidden_state", "pooler_output"):
            assert_close(a[tower][name], b[tower][name], f"{tower}.{name}")
        assert_all_close(a[tower].hidden_states, b[tower].hidden_states, f"{tower}.hidden_states")


def test_attentions_match_reference(models, text_ids, pixels):
    ours, ref, _ = models
    ids, mask = text_ids
    pixels = torch.cat([pixels, pixels[:1]])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True)
        b = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True)
    assert_all_close(a.text_model_output.attentions, b.text_model_output.attentions, "text attentions")
    assert_all_close(a.vision_model_output.attentions, b.vision_model_output.attentions, "vision attentions")
    # Padded keys get no attention at all.
    assert a.text_model_output.attentions[0][1, :, :, 3:].abs().max() == 0


def test_features_are_tensors_matching_reference(models, text_ids, pixels):
    ours, ref, _ = models
    ids, mask = text_ids
    with torch.no_grad():
        text = ours.get_text_features(input_ids=ids, attention_mask=mask)
        image = ours.get_image_features(pixel_values=pixels)
        ref_text = ref.get_text_features(input_ids=ids, attention_mask=mask)
        ref_image = ref.get_image_features(pixel_values=pixels)
    # transformers 5 returns an output object here; the documented API (and ours) returns the tensor.
    assert isinstance(text, torch.Tensor) and isinstance(image, torch.Tensor)
    ref_text = getattr(ref_text, "pooler_output", ref_text)
    ref_image = getattr(ref_image, "pooler_output", ref_image)
    assert_close(text, ref_text, "text features")
    assert_close(image, ref_image, "image features")


@pytest.mark.parametrize("size", [(42, 42), (36, 48), (30, 30)])
def test_interpolate_pos_encoding(models, size):
    ours, ref, _ = models
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = ours.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
        b = ref.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
    assert_close(a, b, f"image features at {size}")


def test_towers_loaded_from_full_checkpoint(ref_checkpoint, models, text_ids, pixels):
    ours, ref, _ = models
    text = AltCLIPTextModel.from_pretrained(ref_checkpoint)
    vision = AltCLIPVisionModel.from_pretrained(ref_checkpoint)
    ids, mask = text_ids
    with torch.no_grad():
        assert_close(text(ids, mask).pooler_output, ref.text_model(ids, mask).pooler_output, "text tower")
        assert_close(vision(pixels).pooler_output, ref.vision_model(pixels).pooler_output, "vision tower")


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_towers_saved_by_transformers(tmp_path, models, text_ids, pixels, tower):
    """transformers saves a tower on its own (its own key layout); ours loads it."""
    _, ref, _ = models
    ids, mask = text_ids
    ref_tower = ref.text_model if tower == "text" else ref.vision_model
    ref_tower.save_pretrained(str(tmp_path))
    cls = AltCLIPTextModel if tower == "text" else AltCLIPVisionModel
    ours = cls.from_pretrained(tmp_path)
    with torch.no_grad():
        a = ours(ids, mask) if tower == "text" else ours(pixels)
        b = ref_tower(ids, mask) if tower == "text" else ref_tower(pixels)
    assert_close(a.last_hidden_state, b.last_hidden_state, f"{tower} tower")


def test_inputs_embeds_position_and_token_type_ids(models, text_ids):
    ours, ref, _ = models
    ids, mask = text_ids
    token_types = torch.zeros_like(ids)
    token_types[:, 3:] = 1
    positions = torch.arange(ids.shape[1]).expand_as(ids) + 2
    with torch.no_grad():
        embeds = ref.text_model.get_input_embeddings()(ids)
        pairs = [
            (
                ours.text_model(inputs_embeds=embeds, attention_mask=mask),
                ref.text_model(inputs_embeds=embeds, attention_mask=mask),
            ),
            (
                ours.text_model(ids, mask, token_type_ids=token_types),
                ref.text_model(ids, mask, token_type_ids=token_types),
            ),
            (ours.text_model(ids, mask, position_ids=positions), ref.text_model(ids, mask, position_ids=positions)),
        ]
    for i, (a, b) in enumerate(pairs):
        assert_close(a.last_hidden_state, b.last_hidden_state, f"case {i}")


def test_head_mask_equals_zeroed_head(models, text_ids):
    """Masking head h of layer l equals zeroing the columns of h in that layer's attention output projection:
    checked against the reference with those columns zeroed (transformers 5 dropped head_mask itself)."""
    ours, ref, _ = models
    ids, mask = text_ids
    layers, heads = TINY_TEXT["num_hidden_layers"], TINY_TEXT["num_attention_heads"]
    head_dim = TINY_TEXT["hidden_size"] // heads
    head_mask = torch.ones(layers, heads)
    head_mask[1, 2] = 0
    head_mask[0, 0] = 0
    zeroed = reference_model()
    zeroed.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for layer, head in ((1, 2), (0, 0)):
            zeroed.text_model.roberta.encoder.layers[layer].attention.output.dense.weight[
                :, head * head_dim : (head + 1) * head_dim
            ] = 0
        expected = zeroed.text_model(ids, mask).last_hidden_state
        got = ours.text_model(ids, mask, head_mask=head_mask).last_hidden_state
        got_eager = ours.text_model(ids, mask, head_mask=head_mask, output_attentions=True)
        unmasked = ours.text_model(ids, mask).last_hidden_state
    assert_close(got, expected, "head-masked output")
    assert_close(got_eager.last_hidden_state, expected, "head-masked output, eager path")
    assert got_eager.attentions[1][:, 2].abs().max() == 0
    assert (unmasked - expected).abs().max() > 1e-3  # the mask did change something


def test_return_dict_false_matches_reference_tuple(models, text_ids, pixels):
    ours, ref, _ = models
    ids, mask = text_ids
    pixels = torch.cat([pixels, pixels[:1]])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_dict=False)
        b = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_dict=False)
    assert isinstance(a, tuple)
    for i in range(4):  # logits_per_image, logits_per_text, text_embeds, image_embeds
        assert_close(a[i], b[i], f"tuple[{i}]")
    logits_per_image, logits_per_text, *_ = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels).to_tuple()
    assert_close(logits_per_image, b[0], "unpacked logits_per_image")


def test_projection_state_and_conditioning_states(models, text_ids):
    ours, ref, _ = models
    ids, mask = text_ids
    with torch.no_grad():
        out = ours.text_model(ids, mask)
        states = ours.text_model.conditioning_states(ids, mask)
        hidden = ref.text_model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = ref.text_model.transformation(hidden)  # AltDiffusion: transformation without pre_LN
    assert out.projection_state is not None
    assert_close(out.projection_state, out.last_hidden_state[:, 0], "projection_state")
    assert_close(states, expected, "conditioning states")


def test_dropout_only_in_training(ref_checkpoint, text_ids):
    model = AltCLIPTextModel.from_pretrained(ref_checkpoint)
    ids, mask = text_ids
    with torch.no_grad():
        a, b = model(ids, mask).pooler_output, model(ids, mask).pooler_output
        model.train()
        c, d = model(ids, mask).pooler_output, model(ids, mask).pooler_output
    assert torch.equal(a, b)
    assert not torch.equal(c, d)


def test_gradient_checkpointing_gives_same_gradients(ref_checkpoint, text_ids, pixels):
    ids, mask = text_ids
    pixels = torch.cat([pixels, pixels[:1]])
    grads = []
    for checkpointing in (False, True):
        model = AltCLIPModel.from_pretrained(ref_checkpoint)
        model.config.text_config.hidden_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], f"grad {name}", atol=1e-6)


def test_training_loss_gradients_match_reference(ref_checkpoint, models, text_ids, pixels):
    """Backward through ours equals backward through the reference (dropout off)."""
    ours = AltCLIPModel.from_pretrained(ref_checkpoint)
    ref = load_reference(ref_checkpoint, attn="sdpa")
    ids, mask = text_ids
    pixels = torch.cat([pixels, pixels[:1]])
    for model in (ours, ref):
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    ref.config.text_config.attention_probs_dropout_prob = 0.0
    for layer in ref.text_model.roberta.encoder.layers:
        layer.attention.self.attention_dropout = 0.0
    ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
    ref(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
    assert_close(ours.logit_scale.grad, ref.logit_scale.grad, "logit_scale grad")
    assert_close(ours.text_projection.weight.grad, ref.text_projection.weight.grad, "text_projection grad")
    assert_close(
        ours.vision_model.embeddings.patch.weight.grad,
        ref.vision_model.embeddings.patch_embedding.weight.grad,
        "patch embedding grad",
    )
    assert_close(
        ours.text_model.embeddings.token.weight.grad,
        ref.text_model.roberta.embeddings.word_embeddings.weight.grad,
        "word embedding grad",
    )


def test_text_features_skip_padding(models, text_ids, monkeypatch):
    """get_text_features packs the real tokens of right-padded batches (no work on padding) and still equals the
    reference; other masks (left padding, holes) take the plain path, also equal to the reference."""
    import altclip.modeling.layers

    ours, ref, _ = models
    ids, mask = text_ids
    packed_calls = []
    original = altclip.modeling.layers.Packing.pack

    def spy(self, x):
        out = original(self, x)
        packed_calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(altclip.modeling.layers.Packing, "pack", spy)
    with torch.no_grad():
        got = ours.get_text_features(input_ids=ids, attention_mask=mask)
        expected = ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        assert_close(got, expected, "packed text features")
        real_tokens = int(mask.sum())
        assert packed_calls and packed_calls[0][0] == real_tokens  # the layers saw only the real tokens
        packed_calls.clear()
        holes = mask.clone()
        holes[0, 3] = 0  # not right-padded
        assert_close(
            ours.get_text_features(input_ids=ids, attention_mask=holes),
            ref.get_text_features(input_ids=ids, attention_mask=holes).pooler_output,
            "features with a hole in the mask",
        )
        assert packed_calls == []


@pytest.mark.parametrize("head", ["XLMRobertaModel", "XLMRobertaForMaskedLM"])
def test_student_from_xlm_roberta(tmp_path, head):
    """Teacher learning starts from a pretrained XLM-R: its encoder loads into our text tower unchanged."""
    import transformers

    config = transformers.XLMRobertaConfig(**{k: v for k, v in TINY_TEXT.items() if k != "project_dim"})
    torch.manual_seed(0)
    ref = getattr(transformers, head)(config).eval()
    ref.save_pretrained(str(tmp_path))
    ours = AltCLIPTextModel.from_xlm_roberta(tmp_path, project_dim=20)
    ids = torch.tensor([[0, 5, 17, 42, 2, 1], [0, 9, 2, 1, 1, 1]])
    with torch.no_grad():
        hidden, _, _ = ours.encode(ids, ids.ne(1).long())
        encoder = ref if head == "XLMRobertaModel" else ref.roberta
        expected = encoder(input_ids=ids, attention_mask=ids.ne(1).long()).last_hidden_state
    assert_close(hidden, expected, "XLM-R encoder")
    assert ours.transformation.out_features == 20 and not ours.transformation.weight.is_meta
