"""The XLM-R tokenizer against transformers.XLMRobertaTokenizer, from tokenizer.json and from a sentencepiece
model alone, on a multilingual corpus."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from altclip import AltCLIPTextModel, XLMRobertaTokenizer
from altclip.loading.random_checkpoints import random_model
from altclip.processing.tokenizer import caption_corpus

EDGE_CASES = [
    "",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "double  spaces  inside",
    "tabs\tand\nnewlines\r\n",
    "ＦＵＬＬ-width ＡＢＣ １２３",
    "ligature ﬁ and combining e\u0301",
    "zero\u200bwidth",
    "emoji only 🐱🐶🚗🌃",
    "<s> special </s> tokens <mask> in text",
    "UPPER lower MiXeD 3.14159",
    "a" * 40,
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [caption for _, caption in caption_corpus()] + EDGE_CASES


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A sentencepiece-only folder (trained here, offline) and a tokenizer.json folder made from it by
    transformers."""
    import sentencepiece as spm
    import transformers

    sp_dir = tmp_path_factory.mktemp("sentencepiece_only")
    text = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    text.write_text("\n".join(c for _, c in caption_corpus() for _ in range(3)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(sp_dir / "sentencepiece.bpe"),
        vocab_size=1500,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (sp_dir / "sentencepiece.bpe.vocab").unlink()
    json_dir = tmp_path_factory.mktemp("tokenizer_json")
    transformers.XLMRobertaTokenizer.from_pretrained(str(sp_dir)).save_pretrained(str(json_dir))
    (json_dir / "sentencepiece.bpe.model").unlink(missing_ok=True)
    assert (json_dir / "tokenizer.json").exists()
    return {"sentencepiece": sp_dir, "tokenizer.json": json_dir}


@pytest.fixture(scope="module", params=["sentencepiece", "tokenizer.json"])
def pair(request, folders):
    import transformers

    path = folders[request.param]
    return XLMRobertaTokenizer.from_pretrained(path), transformers.XLMRobertaTokenizer.from_pretrained(str(path))


def test_corpus_covers_many_languages():
    languages = {lang for lang, _ in caption_corpus() if lang != "mixed"}
    assert len(languages) >= 15, languages
    scripts = "".join(c for _, c in caption_corpus())
    for sample in ("猫", "ج", "ब", "แ", "Ч", "🐱", "ê"):  # CJK, Arabic, Devanagari, Thai, Cyrillic, emoji, Latin
        assert sample in scripts


def test_ids_match_reference_one_by_one(pair, corpus):
    ours, ref = pair
    for text in corpus:
        assert ours(text)["input_ids"] == ref(text)["input_ids"], repr(text)
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)


def test_padded_batches_match_reference(pair, corpus):
    ours, ref = pair
    a = ours(corpus, padding=True, return_tensors="pt")
    b = ref(corpus, padding=True, return_tensors="pt")
    assert torch.equal(a.input_ids, b["input_ids"])
    assert torch.equal(a.attention_mask, b["attention_mask"])
    assert a.input_ids[:, -1].eq(ours.pad_token_id).any()  # padding is on the right


@pytest.mark.parametrize("padding", ["max_length", "longest", False])
def test_truncation_and_padding_options_match_reference(pair, corpus, padding):
    ours, ref = pair
    kwargs = dict(padding=padding, truncation=True, max_length=9)
    tensors = "np" if padding else None
    a = ours(corpus, return_tensors=tensors, **kwargs)
    b = ref(corpus, return_tensors=tensors, **kwargs)
    for key in ("input_ids", "attention_mask"):
        assert np.array_equal(np.asarray(a[key], dtype=object), np.asarray(b[key], dtype=object)), key


def test_decode_matches_reference(pair, corpus):
    ours, ref = pair
    ids = ref(corpus[:20], padding=True)["input_ids"]
    assert ours.batch_decode(ids) == ref.batch_decode(ids)
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(torch.tensor(ids[3])) == ref.decode(ids[3])


def test_fairseq_id_layout(folders):
    import sentencepiece as spm

    ours = XLMRobertaTokenizer.from_pretrained(folders["sentencepiece"])
    sp = spm.SentencePieceProcessor(model_file=str(folders["sentencepiece"] / "sentencepiece.bpe.model"))
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    # XLM-R: 250,000 pieces -> 250,002 ids, <mask> = 250,001.
    assert ours.mask_token_id == len(ours) - 1 == sp.get_piece_size() + 1
    # Equal to sentencepiece itself under fairseq's shift (its <unk>=0 becomes 3, every other id + 1).
    for _, text in caption_corpus():
        expected = [0] + [3 if i == 0 else i + 1 for i in sp.encode(text)] + [2]
        assert ours(text)["input_ids"] == expected, text


def test_long_text_is_truncated_by_default_and_the_model_accepts_it(folders, caplog):
    ours = XLMRobertaTokenizer.from_pretrained(folders["sentencepiece"])
    long_text = "一只猫 a cat " * 400
    with caplog.at_level(logging.WARNING, logger="altclip.processing.tokenizer"):
        batch = ours([long_text, "short"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape[1] == 512
    assert batch.input_ids[0, -1] == ours.eos_token_id
    assert "Truncating 1 text" in caplog.text
    assert len(ours(long_text, truncation=False)["input_ids"]) > 512
    model = AltCLIPTextModel(random_model("tiny").config.text_config).eval()
    with torch.no_grad():
        assert model(**batch).pooler_output.shape == (2, 24)


def test_return_types(folders):
    ours = XLMRobertaTokenizer.from_pretrained(folders["sentencepiece"])
    single = ours("a cat")
    assert isinstance(single["input_ids"], list) and isinstance(single["input_ids"][0], int)
    assert ours("a cat", return_tensors="pt").input_ids.shape[0] == 1
    assert ours(["a cat", "two cats"], padding=True, return_tensors="np")["input_ids"].dtype == np.int64
    assert "attention_mask" not in ours("a cat", return_attention_mask=False)
    with pytest.raises(ValueError, match="pass padding=True"):
        ours(["a", "a much longer text"], return_tensors="pt")


def test_bad_text_is_named(folders):
    ours = XLMRobertaTokenizer.from_pretrained(folders["sentencepiece"])
    with pytest.raises(ValueError, match=r"Text 1 is not valid Unicode: lone surrogate U\+D800 at position 4"):
        ours(["fine", "bad \ud800 text"])
    with pytest.raises(ValueError, match="Text 0 is not valid UTF-8"):
        ours([b"\xff\xfe broken"])
    assert ours([b"caf\xc3\xa9"])["input_ids"] == ours(["café"])["input_ids"]
    with pytest.raises(TypeError, match="Text 2 must be a string, got int"):
        ours(["a", "b", 3])


def test_save_and_reload(tmp_path, folders, corpus):
    ours = XLMRobertaTokenizer.from_pretrained(folders["sentencepiece"])
    ours.save_pretrained(tmp_path)
    again = XLMRobertaTokenizer.from_pretrained(tmp_path)
    assert again(corpus, padding=True)["input_ids"] == ours(corpus, padding=True)["input_ids"]
    assert again.model_max_length == 512
