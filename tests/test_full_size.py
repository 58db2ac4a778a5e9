"""Parity at the full BAAI/AltCLIP shape (864M parameters), on a random checkpoint of that shape."""

from __future__ import annotations

import gc

import pytest
import torch

from altclip import AltCLIPModel
from altclip.loading.random_checkpoints import write_random_checkpoint
from conftest import load_reference
from test_parity import assert_close


@pytest.mark.slow
def test_full_size_parity(tmp_path):
    write_random_checkpoint("BAAI/AltCLIP", tmp_path, seed=0)
    gc.collect()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250_000, (2, 12), generator=g)
    ids[:, 0], ids[0, -1] = 0, 2
    ids[1, 7], ids[1, 8:] = 2, 1  # the second text is padded
    mask = ids.ne(1).long()
    pixels = torch.randn(2, 3, 224, 224, generator=g)
    one = torch.randint(5, 250_000, (1, 20), generator=g)  # one 20-token query: the small-batch CPU path
    one[0, 0], one[0, -1] = 0, 2

    with torch.no_grad():
        ours = AltCLIPModel.from_pretrained(tmp_path)
        assert ours.num_parameters() > 860e6
        a_text = ours.get_text_features(input_ids=ids, attention_mask=mask)
        a_image = ours.get_image_features(pixel_values=pixels)
        with torch.inference_mode():
            a_one = ours.get_text_features(input_ids=one)
        del ours
        gc.collect()
        ref = load_reference(tmp_path, attn="sdpa")
        b_text = ref.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        b_image = ref.get_image_features(pixel_values=pixels).pooler_output
        b_one = ref.get_text_features(input_ids=one).pooler_output
    assert_close(a_text, b_text, "full-size text features", atol=1e-4)
    assert_close(a_image, b_image, "full-size image features", atol=1e-4)
    assert_close(a_one, b_one, "full-size features of one 20-token text", atol=1e-5)
