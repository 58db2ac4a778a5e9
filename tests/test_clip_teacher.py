"""The CLIP text tower and tokenizer (the teacher of teacher learning) against transformers' CLIP."""

from __future__ import annotations

import pytest
import torch

from altclip.modeling.clip_text import CLIPTextTower, CLIPTokenizer
from altclip.processing.tokenizer import caption_corpus
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


def test_random_teacher_is_a_clip_checkpoint(tmp_path):
    """``write_random_checkpoint("clip-tiny")`` writes what transformers' CLIPModel and CLIPTokenizer load, key for
    key; our text tower, tokenizer and the image side distillation takes from it agree with transformers."""
    import transformers

    from altclip.loading.random_checkpoints import write_random_checkpoint
    from altclip.modeling.clip_text import assemble_altclip
    from altclip.train.distill import load_student

    path = write_random_checkpoint("clip-tiny", tmp_path / "teacher", seed=3)
    ref, info = transformers.CLIPModel.from_pretrained(str(path), output_loading_info=True)
    assert not any(info.values()), info
    ref.eval()
    ids, mask = CLIPTokenizer.from_pretrained(path)(ENGLISH[:8])
    expected = transformers.CLIPTokenizer.from_pretrained(str(path))(
        ENGLISH[:8], padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    assert torch.equal(ids, expected["input_ids"])
    with torch.no_grad():
        pooled = CLIPTextTower.from_pretrained(path)(ids, mask)[1]
        assert (pooled - ref.text_model(input_ids=ids, attention_mask=mask).pooler_output).abs().max() < 1e-5
        pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        altclip_model = assemble_altclip(load_student("tiny", 32), path).eval()
        ours = altclip_model.get_image_features(pixel_values=pixels)
        theirs = ref.get_image_features(pixel_values=pixels)
        assert (ours - getattr(theirs, "pooler_output", theirs)).abs().max() < 1e-5


@pytest.mark.slow
def test_distillation_offline_with_shapes(tmp_path):
    """The README's offline path: a random CLIP teacher and a student shape, which brings its own tokenizer."""
    import subprocess
    import sys

    import altclip

    (tmp_path / "en-zh.tsv").write_text("a photo of a cat\t一只猫的照片\na red car\t一辆红色的汽车\n", encoding="utf-8")
    run = [sys.executable, "-m", "altclip"]
    for args in (
        ["random-checkpoint", "teacher", "--shape", "clip-tiny"],
        ["train", "distill", "--teacher", "teacher", "--student", "tiny", "--corpus", "en-zh.tsv", "--output", "run",
         "--steps", "2", "--batch-size", "2"],
    ):  # fmt: skip
        result = subprocess.run([*run, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    model, processor = altclip.load(tmp_path / "run" / "final")
    inputs = processor(text=["一只猫"], return_tensors="pt")
    assert model.get_text_features(**inputs).shape == (1, 16)  # the teacher's projection
