"""How ``Embedder`` picks and protects its engine, checked on CPU: the compiled image path (chosen on CUDA in half
precision, padded to few shapes, falling back to eager when compiling fails) and the split of a batch that runs out
of GPU memory (simulated here; tests/test_cuda.py compiles for real on a GPU)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from altclip.inference import Embedder
from altclip.modeling import compiled
from altclip.modeling.compiled import CompiledImageFeatures, should_compile

PHOTOS = sorted((Path(__file__).parent.parent / "examples" / "photos").glob("*.jpg"))


def test_the_compiled_path_is_chosen_for_half_precision_on_cuda_only(monkeypatch):
    monkeypatch.setattr(compiled.importlib.util, "find_spec", lambda name: object())  # as if Triton were there
    for device, dtype, expected in [
        ("cuda", torch.bfloat16, True),
        ("cuda", torch.float16, True),
        ("cuda", torch.float32, False),  # the exact path stays eager
        ("cpu", torch.bfloat16, False),
    ]:
        model = SimpleNamespace(device=torch.device(device), dtype=dtype)
        assert should_compile(model) is expected, (device, dtype)
    monkeypatch.setattr(compiled.importlib.util, "find_spec", lambda name: None)
    assert not should_compile(SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16))


def test_an_embedder_on_cpu_runs_the_model_itself(embedder):
    assert embedder.features is embedder.model


def test_compiled_batches_are_padded_to_powers_of_two_and_give_the_eager_features(embedder, monkeypatch):
    seen = []

    def fake_compile(fn, **kwargs):  # records the shapes the compiled function would be compiled for
        def run(pixels):
            seen.append(len(pixels))
            return fn(pixels)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = embedder.model
    fast = CompiledImageFeatures(model, min_batch=4)
    size = model.config.vision_config.image_size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = model.get_image_features(pixel_values=pixels)
        torch.testing.assert_close(fast.get_image_features(pixel_values=pixels), eager, rtol=1e-5, atol=1e-5)
        fast.get_image_features(pixel_values=pixels[:3])  # under min_batch: eager
    assert seen == [8]
    assert fast.config is model.config  # everything else is the model's


def test_a_failed_compilation_warns_once_and_runs_eagerly(embedder, monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(pixels):
            calls.append(len(pixels))
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = embedder.model
    fast = CompiledImageFeatures(model, min_batch=2)
    size = model.config.vision_config.image_size
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), pytest.warns(UserWarning, match="no compiler here"):
        got = fast.get_image_features(pixel_values=pixels)
    with torch.inference_mode():
        torch.testing.assert_close(got, model.get_image_features(pixel_values=pixels), rtol=0, atol=0)
        fast.get_image_features(pixel_values=pixels)  # no second attempt, no second warning
    assert calls == [4] and "no compiler here" in fast.failed


class RunsOutOfMemory:
    """A model's features that raise CUDA's out-of-memory error for batches larger than ``fits``."""

    def __init__(self, model, fits: int):
        self.model, self.fits, self.batches = model, fits, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def get_image_features(self, pixel_values, **kwargs):
        return self._check(len(pixel_values), lambda: self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        run = lambda: self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)  # noqa: E731
        return self._check(len(input_ids), run)

    def _check(self, rows: int, run):
        self.batches.append(rows)
        if rows > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run()


def test_a_batch_that_runs_out_of_gpu_memory_is_split_and_nothing_is_lost(embedder, caplog):
    reference = Embedder(embedder.model, embedder.processor, "ref", batch_size=8)
    expected_images, kept, failed = reference.embed_readable(PHOTOS)
    expected_texts = reference.embed_texts([f"text {i}" for i in range(7)])

    small = Embedder(embedder.model, embedder.processor, "small", batch_size=8)
    small.features = RunsOutOfMemory(embedder.model, fits=3)
    with caplog.at_level(logging.WARNING, logger="altclip.inference"):
        images, kept_small, failed_small = small.embed_readable(PHOTOS)
    assert (kept_small, failed_small) == (kept, failed) and len(kept) == len(PHOTOS)
    np.testing.assert_allclose(images, expected_images, rtol=1e-5, atol=1e-6)
    assert small.batch_size == 2  # halved from 8 until a batch fitted: 4 did not, 2 did
    assert "Out of GPU memory at a batch of 8; continuing with batches of 4" in caplog.text

    texts = small.embed_texts([f"text {i}" for i in range(7)])
    np.testing.assert_allclose(texts, expected_texts, rtol=1e-5, atol=1e-6)


def test_one_item_that_does_not_fit_is_an_error(embedder):
    tight = Embedder(embedder.model, embedder.processor, "tight", batch_size=4)
    tight.features = RunsOutOfMemory(embedder.model, fits=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        tight.embed_readable(PHOTOS[:2])
