"""The CLIP text tower and tokenizer (the teacher of teacher learning) against transformers' CLIP."""

from __future__ import annotations

import pytest
import torch

from altclip.clip_text import CLIPTextTower, CLIPTokenizer
from altclip.tokenizer import caption_corpus
from synthetic import write_clip_teacher

ENGLISH = [c for lang, c in caption_corpus() if lang in ("en", "mixed")] + [
    "",
    "A  B",
    "UPPER case, punctuation!?",
    "x" * 400,
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random transformers CLIPModel with a CLIP-style BPE tokenizer, saved by transformers."""
    vision = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=32, patch_size=8
    )
    return write_clip_teacher(
        tmp_path_factory.mktemp("clip"), [c for _, c in caption_corpus()] * 3, 600, 48, vision, 24
    )


def test_tokenizer_matches_transformers(clip_dir):
    import transformers

    ours = CLIPTokenizer.from_pretrained(clip_dir)
    ref = transformers.CLIPTokenizer.from_pretrained(str(clip_dir))
    ids, mask = ours(ENGLISH)
    expected = ref(ENGLISH, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert ids.shape[1] == 77  # the long text is truncated to CLIP's 77 tokens


def test_text_tower_matches_transformers(clip_dir):
    import transformers

    ours = CLIPTextTower.from_pretrained(clip_dir)
    ref = transformers.CLIPModel.from_pretrained(str(clip_dir)).eval()
    ids, mask = CLIPTokenizer.from_pretrained(clip_dir)(ENGLISH[:12])
    with torch.no_grad():
        hidden, pooled = ours(ids, mask)
        out = ref.text_model(input_ids=ids, attention_mask=mask)
        projected = ref.get_text_features(input_ids=ids, attention_mask=mask)
    projected = getattr(projected, "pooler_output", projected)
    real = mask.bool()
    assert (hidden[real] - out.last_hidden_state[real]).abs().max() < 1e-5
    assert (pooled - out.pooler_output).abs().max() < 1e-5
    assert (ours.projection(pooled) - projected).abs().max() < 1e-5


def test_standalone_text_tower_checkpoint(clip_dir, tmp_path):
    import transformers

    ref = transformers.CLIPTextModel.from_pretrained(str(clip_dir)).eval()
    ref.save_pretrained(str(tmp_path))
    ours = CLIPTextTower.from_pretrained(tmp_path)
    assert ours.projection is None
    ids, mask = CLIPTokenizer.from_pretrained(clip_dir)(ENGLISH[:4])
    with torch.no_grad():
        assert (ours(ids, mask)[1] - ref(input_ids=ids, attention_mask=mask).pooler_output).abs().max() < 1e-5
