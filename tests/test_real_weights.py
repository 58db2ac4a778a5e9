"""The released checkpoints, where they can be had: in the Hugging Face cache, or downloaded when the Hub is
reachable and the run allows it (the test suite runs offline by default; ``HF_HUB_OFFLINE=0`` lets it download).
Without them these tests skip, in seconds.

Each checkpoint loads strictly, its features match transformers' on the same weights, and BAAI/AltCLIP gives
transformers' published integration value for COCO val2017 image 39769 ("一张猫的照片" / "一张狗的照片").
"""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import pytest
import torch

from altclip import AltCLIPModel, AltCLIPProcessor, CheckpointNotFoundError
from altclip.loading.pretrained import checkpoint_files

CHECKPOINTS = ["BAAI/AltCLIP", "BAAI/AltCLIP-m9", "BAAI/AltCLIP-m18"]
COCO_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
COCO_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "altclip" / "coco_val2017_000000039769.jpg"
)
TEXTS = ["一张猫的照片", "一张狗的照片", "a photo of two cats on a couch", "deux chats sur un canapé"]


def checkpoint_or_skip(name: str) -> str:
    try:
        checkpoint_files(name)
    except CheckpointNotFoundError as e:
        pytest.skip(f"{name} is not in the Hugging Face cache and cannot be downloaded here: {str(e)[:120]}")
    return name


@pytest.fixture(scope="module")
def coco_image():
    """COCO val2017 image 39769 (two cats), from a local cache or downloaded once."""
    from PIL import Image

    if not COCO_CACHE.exists():
        from huggingface_hub import constants

        from altclip.loading.hub import hub_reachable

        if constants.HF_HUB_OFFLINE or not hub_reachable():
            pytest.skip(f"COCO image 39769 is not cached at {COCO_CACHE} and the network is off")
        import requests

        try:
            data = requests.get(COCO_URL, timeout=20).content
        except requests.RequestException as e:
            pytest.skip(f"Could not download {COCO_URL}: {e}")
        COCO_CACHE.parent.mkdir(parents=True, exist_ok=True)
        COCO_CACHE.write_bytes(data)
    return Image.open(io.BytesIO(COCO_CACHE.read_bytes())).convert("RGB")


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_real_checkpoint_matches_transformers(name, coco_image):
    import transformers

    checkpoint_or_skip(name)
    processor = AltCLIPProcessor.from_pretrained(name)
    inputs = processor(text=TEXTS, images=coco_image, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = AltCLIPModel.from_pretrained(name)  # strict: any missing or unexpected tensor is an error
        a_text = ours.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        a_image = ours.get_image_features(pixel_values=inputs.pixel_values)
        a_logits = ours(**inputs).logits_per_image
        del ours
        gc.collect()
        ref = transformers.AltCLIPModel.from_pretrained(name, attn_implementation="eager").eval()
        b_text = ref.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        b_image = ref.get_image_features(pixel_values=inputs.pixel_values)
        b_logits = ref(**inputs).logits_per_image
    b_text = b_text if isinstance(b_text, torch.Tensor) else b_text.pooler_output
    b_image = b_image if isinstance(b_image, torch.Tensor) else b_image.pooler_output
    assert (a_text - b_text).abs().max() <= 1e-4
    assert (a_image - b_image).abs().max() <= 1e-4
    assert (a_logits - b_logits).abs().max() <= 1e-3  # logits are scaled by 100


@pytest.mark.slow
def test_baai_altclip_published_integration_value(coco_image):
    """transformers' integration test: softmax(logits_per_image) = [0.99942, 0.00057805] (tolerance 5e-3)."""
    name = checkpoint_or_skip("BAAI/AltCLIP")
    model = AltCLIPModel.from_pretrained(name)
    processor = AltCLIPProcessor.from_pretrained(name)
    inputs = processor(text=["一张猫的照片", "一张狗的照片"], images=coco_image, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2) and out.logits_per_text.shape == (2, 1)
    probs = out.logits_per_image.softmax(dim=1)
    torch.testing.assert_close(probs, torch.tensor([[9.9942e-01, 5.7805e-04]]), rtol=5e-3, atol=5e-3)
