"""The tokenizer's and the processor's transformers surface, each checked against transformers on the same files
(a sentencepiece model trained here, offline, as in test_tokenizer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from altclip import AltCLIPProcessor, CLIPImageProcessor, XLMRobertaTokenizer
from altclip.processing.tokenizer import caption_corpus

TEXTS = ["a photo of a cat sitting on the mat", "一只猫在沙发上", "short", "café au lait ☕"]


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sentencepiece_api")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(c for _, c in caption_corpus() for _ in range(3)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "sentencepiece.bpe"),
        vocab_size=1500,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    for leftover in ("sentencepiece.bpe.vocab", "corpus.txt"):
        (folder / leftover).unlink()
    return folder


@pytest.fixture(scope="module")
def tokenizers(sp_folder):
    import transformers

    return XLMRobertaTokenizer.from_pretrained(sp_folder), transformers.XLMRobertaTokenizer.from_pretrained(
        str(sp_folder)
    )


def as_lists(batch) -> dict:
    return {
        k: (v.tolist() if hasattr(v, "tolist") else [list(map(tuple, r)) if k == "offset_mapping" else r for r in v])
        for k, v in batch.items()
    }


def assert_same(a, b, keys):
    for key in keys:
        x, y = a[key], b[key]
        if key == "offset_mapping":
            x = [[tuple(o) for o in row] for row in x] if x and isinstance(x[0], list) else [tuple(o) for o in x]
            y = [[tuple(o) for o in row] for row in y] if y and isinstance(y[0], list) else [tuple(o) for o in y]
        assert (x.tolist() if hasattr(x, "tolist") else x) == (y.tolist() if hasattr(y, "tolist") else y), key


def test_tokenize_and_conversions(tokenizers):
    ours, ref = tokenizers
    for text in TEXTS:
        assert ours.tokenize(text) == ref.tokenize(text)
        assert ours.tokenize(text, add_special_tokens=True) == ref.tokenize(text, add_special_tokens=True)
        tokens = ref.tokenize(text)
        ids = ref.convert_tokens_to_ids(tokens)
        assert ours.convert_tokens_to_ids(tokens) == ids
        assert ours.convert_tokens_to_ids(tokens[0]) == ref.convert_tokens_to_ids(tokens[0])
        assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
        with_specials = ref(text)["input_ids"]
        assert ours.convert_ids_to_tokens(with_specials, skip_special_tokens=True) == ref.convert_ids_to_tokens(
            with_specials, skip_special_tokens=True
        )
    assert ours.convert_tokens_to_ids("not-a-piece-at-all") == ref.convert_tokens_to_ids("not-a-piece-at-all")
    assert set(ours.all_special_ids) == set(ref.all_special_ids)


def test_decode_skip_special_tokens(tokenizers):
    ours, ref = tokenizers
    batch = ref(TEXTS, padding=True)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(batch, skip_special_tokens=skip) == ref.batch_decode(batch, skip_special_tokens=skip)
        assert ours.decode(torch.tensor(batch[1]), skip_special_tokens=skip) == ref.decode(
            batch[1], skip_special_tokens=skip
        )


@pytest.mark.parametrize("pair", [False, True])
def test_offsets_and_special_tokens_mask(tokenizers, pair):
    ours, ref = tokenizers
    kwargs = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    if pair:
        a, b = ours(TEXTS[:2], TEXTS[2:], **kwargs), ref(TEXTS[:2], TEXTS[2:], **kwargs)
    else:
        a, b = ours(TEXTS, padding=True, **kwargs), ref(TEXTS, padding=True, **kwargs)
    assert_same(a, b, ["input_ids", "attention_mask", "special_tokens_mask", "offset_mapping"])
    single_a, single_b = ours(TEXTS[0], **kwargs), ref(TEXTS[0], **kwargs)
    assert_same(single_a, single_b, ["input_ids", "special_tokens_mask", "offset_mapping"])


@pytest.mark.parametrize("max_length, stride", [(6, 2), (8, 0), (10, 5)])
def test_overflowing_tokens_with_stride(tokenizers, max_length, stride):
    ours, ref = tokenizers
    kwargs = dict(truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
    a, b = ours(TEXTS, **kwargs), ref(TEXTS, **kwargs)
    assert_same(a, b, ["input_ids", "attention_mask", "overflow_to_sample_mapping"])
    a, b = (
        ours(TEXTS[0], padding=True, return_tensors="pt", **kwargs),
        ref(TEXTS[0], padding=True, return_tensors="pt", **kwargs),
    )
    assert_same(a, b, ["input_ids", "attention_mask", "overflow_to_sample_mapping"])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 8])
def test_padding_side_and_multiple(tokenizers, side, multiple):
    ours, ref = tokenizers
    kwargs = dict(padding=True, pad_to_multiple_of=multiple, padding_side=side, return_special_tokens_mask=True)
    a, b = ours(TEXTS, return_tensors="pt", **kwargs), ref(TEXTS, return_tensors="pt", **kwargs)
    assert_same(a, b, ["input_ids", "attention_mask", "special_tokens_mask"])
    a = ours(TEXTS, padding="max_length", max_length=13, pad_to_multiple_of=multiple, padding_side=side)
    b = ref(TEXTS, padding="max_length", max_length=13, pad_to_multiple_of=multiple, padding_side=side)
    assert_same(a, b, ["input_ids", "attention_mask"])


def test_padding_side_attribute(sp_folder):
    import transformers

    ours = XLMRobertaTokenizer.from_pretrained(sp_folder)
    ref = transformers.XLMRobertaTokenizer.from_pretrained(str(sp_folder))
    assert ours.padding_side == ref.padding_side == "right"
    ours.padding_side = ref.padding_side = "left"
    assert_same(ours(TEXTS, padding=True), ref(TEXTS, padding=True), ["input_ids", "attention_mask"])


def test_without_special_tokens_and_lengths(tokenizers):
    ours, ref = tokenizers
    for text in TEXTS:
        assert_same(ours(text, add_special_tokens=False), ref(text, add_special_tokens=False), ["input_ids"])
    a, b = (
        ours(TEXTS, add_special_tokens=False, truncation=True, max_length=3),
        ref(TEXTS, add_special_tokens=False, truncation=True, max_length=3),
    )
    assert_same(a, b, ["input_ids"])
    assert_same(ours(TEXTS, return_length=True), ref(TEXTS, return_length=True), ["length"])
    assert ours.model_input_names == ref.model_input_names


# ---------------------------------------------------------------------------------------------------------------
# Processor


@pytest.fixture(scope="module")
def processors(sp_folder, tmp_path_factory):
    import transformers

    ours = AltCLIPProcessor(CLIPImageProcessor(), XLMRobertaTokenizer.from_pretrained(sp_folder))
    ref = transformers.AltCLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(),
        tokenizer=transformers.XLMRobertaTokenizer.from_pretrained(str(sp_folder)),
    )
    return ours, ref


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((41, 57, 3)) * 255).astype("uint8"))


def test_processor_surface(processors):
    ours, ref = processors
    assert ours.attributes == ref.get_attributes() == ["image_processor", "tokenizer"]
    assert ours.model_input_names == ref.model_input_names
    assert isinstance(ours.tokenizer, XLMRobertaTokenizer) and isinstance(ours.image_processor, CLIPImageProcessor)
    ids = ref(text=TEXTS, padding=True)["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(ids[0]) == ref.decode(ids[0])


def test_processor_keyword_routing(processors, image):
    ours, ref = processors
    calls = [
        dict(
            text_kwargs={"padding": "max_length", "max_length": 12, "truncation": True},
            images_kwargs={"size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}},
            common_kwargs={"return_tensors": "pt"},
        ),  # fmt: skip
        dict(
            padding="max_length",
            max_length=12,
            truncation=True,
            size={"shortest_edge": 30},
            crop_size={"height": 30, "width": 30},
            return_tensors="pt",
        ),  # fmt: skip
        dict(padding=True, return_tensors="np", do_center_crop=False, size={"height": 20, "width": 25}),
    ]
    for kwargs in calls:
        a, b = ours(text=TEXTS, images=[image, image], **kwargs), ref(text=TEXTS, images=[image, image], **kwargs)
        assert set(a) == set(b)
        for key in a:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.shape == y.shape, key
            assert np.allclose(x, y, atol=1e-5), key
    # Images first, as transformers' signature has them.
    assert np.allclose(
        ours(image, return_tensors="np")["pixel_values"], ref(image, return_tensors="np")["pixel_values"], atol=1e-5
    )
    with pytest.raises(TypeError, match="no_such_setting"):
        ours(text="a", no_such_setting=1)


def test_processor_save_load_both_ways(processors, tmp_path, image):
    import transformers

    ours, ref = processors
    ours.image_processor.crop_size = {"height": 200, "width": 200}
    try:
        ours.save_pretrained(tmp_path / "ours")
        ref.save_pretrained(str(tmp_path / "theirs"))
        from_ours = transformers.AltCLIPProcessor.from_pretrained(str(tmp_path / "ours"))
        from_theirs = AltCLIPProcessor.from_pretrained(
            tmp_path / "theirs"
        )  # transformers 5 writes processor_config.json
        again = AltCLIPProcessor.from_pretrained(tmp_path / "ours")
    finally:
        ours.image_processor.crop_size = {"height": 224, "width": 224}
    assert again.image_processor.crop_size == {"height": 200, "width": 200} == from_ours.image_processor.crop_size
    assert from_theirs.image_processor.crop_size == {"height": 224, "width": 224}
    for processor in (again, from_theirs):
        assert processor(text=TEXTS, padding=True)["input_ids"] == ref(text=TEXTS, padding=True)["input_ids"]
    expected = ref(images=image, return_tensors="np")["pixel_values"]
    assert np.allclose(from_theirs(images=image, return_tensors="np")["pixel_values"], expected, atol=1e-5)
    overridden = AltCLIPProcessor.from_pretrained(
        tmp_path / "theirs", size={"shortest_edge": 180}, crop_size={"height": 180, "width": 180}
    )
    assert overridden(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 180, 180)
