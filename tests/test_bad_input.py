"""Bad input to the models gets a clear error naming the problem, not an IndexError from deep inside."""

from __future__ import annotations

import pytest
import torch

from altclip import AltCLIPModel
from conftest import TINY_TEXT


@pytest.fixture(scope="module")
def model(ref_checkpoint):
    return AltCLIPModel.from_pretrained(ref_checkpoint)


def test_token_id_outside_vocabulary(model):
    ids = torch.tensor([[0, 5, TINY_TEXT["vocab_size"], 2]])
    with pytest.raises(ValueError, match=r"token id 99, outside this model's vocabulary of 99 tokens"):
        model.get_text_features(input_ids=ids)
    with pytest.raises(ValueError, match=r"token id -1"):
        model.get_text_features(input_ids=torch.tensor([[0, -1, 2]]))


def test_sequence_longer_than_position_table(model):
    limit = TINY_TEXT["max_position_embeddings"] - 2
    ok = torch.full((1, limit), 5)
    model.get_text_features(input_ids=ok)  # exactly at the limit is fine
    with pytest.raises(
        ValueError, match=rf"Sequence of {limit + 1} tokens is longer than this model's limit of {limit}"
    ):
        model.get_text_features(input_ids=torch.full((1, limit + 1), 5))


def test_wrong_image_size(model):
    with pytest.raises(
        ValueError, match=r"Input image size \(32\*30\) doesn't match model \(30\*30\).*interpolate_pos_encoding"
    ):
        model.get_image_features(pixel_values=torch.zeros(1, 3, 32, 30))


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="has 4 channels, this model takes 3"):
        model.get_image_features(pixel_values=torch.zeros(1, 4, 30, 30))
    with pytest.raises(ValueError, match="has 30 channels.*channels-last"):
        model.get_image_features(pixel_values=torch.zeros(1, 30, 30, 3))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, height, width\)"):
        model.get_image_features(pixel_values=torch.zeros(3, 30, 30))


def test_empty_batches(model):
    with pytest.raises(ValueError, match="Empty batch"):
        model.get_text_features(input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="Empty batch"):
        model.get_text_features(input_ids=torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="Empty batch"):
        model.get_image_features(pixel_values=torch.zeros(0, 3, 30, 30))


def test_other_malformed_inputs(model):
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model.text_model()
    with pytest.raises(TypeError, match="integer token ids"):
        model.get_text_features(input_ids=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\)"):
        model.get_text_features(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="token_type_ids must lie in 0..1"):
        model.get_text_features(input_ids=torch.zeros(1, 3, dtype=torch.long), token_type_ids=torch.full((1, 3), 2))
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="return_loss needs matching image-text pairs"):
        model(input_ids=torch.zeros(2, 3, dtype=torch.long), pixel_values=torch.zeros(1, 3, 30, 30), return_loss=True)
    with pytest.raises(TypeError, match="float tensor"):
        model.get_image_features(pixel_values=torch.zeros(1, 3, 30, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"head_mask must have shape \(4,\) or \(3, 4\)"):
        model.text_model(input_ids=torch.zeros(1, 3, dtype=torch.long), head_mask=torch.ones(2, 4))
