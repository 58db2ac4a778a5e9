"""The XLM-RoBERTa tokenizer, on the ``tokenizers`` library.

XLM-R tokenizes with a sentencepiece unigram model laid out as fairseq does: <s>=0, <pad>=1, </s>=2, <unk>=3, the
sentencepiece pieces after its own three control pieces shifted by one, <mask> last. We build that pipeline from
the vocabulary and the normalisation table, read from a checkpoint's ``tokenizer.json`` or, when it has only
``sentencepiece.bpe.model`` (BAAI/AltCLIP-m9), from the sentencepiece model itself, parsed here without protobuf.
Both give the same tokenizer as transformers' ``XLMRobertaTokenizer``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import Unigram

from altclip.processing.batch import BatchFeature, as_tensors
from altclip.utils.jsonsafe import read_json

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "sentencepiece.bpe.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
DEFAULT_MAX_LENGTH = 512  # the position table of XLM-R: 514 rows, minus the padding offset of 2


class XLMRobertaTokenizer:
    """Tokenizer for the AltCLIP text tower, compatible with transformers' ``XLMRobertaTokenizer``.

    ``tokenizer(texts, padding=True, return_tensors="pt")`` gives ``input_ids`` and ``attention_mask``, padded on
    the right with <pad>. Texts longer than ``model_max_length`` are truncated (with a warning) unless
    ``truncation=False`` is passed, so they never overflow the model's position table.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"  # where padding goes; a call's padding_side= overrides it, as in transformers
    # Each of SPECIAL_TOKENS and its id, set in __init__.
    bos_token: str
    pad_token: str
    eos_token: str
    unk_token: str
    mask_token: str
    bos_token_id: int
    pad_token_id: int
    eos_token_id: int
    unk_token_id: int
    mask_token_id: int

    def __init__(
        self, vocab: list[tuple[str, float]], charsmap: bytes | None = None, model_max_length: int = DEFAULT_MAX_LENGTH
    ):
        specials = list(SPECIAL_TOKENS.values())
        index = {piece: i for i, (piece, _) in enumerate(vocab)}
        missing = [t for t in specials if t not in index]
        if missing:
            raise ValueError(f"The vocabulary lacks the special tokens {missing}")
        self.model_max_length = model_max_length
        for name, token in SPECIAL_TOKENS.items():
            setattr(self, name, token)
            setattr(self, f"{name}_id", index[token])
        self._tokenizer = _build(vocab, charsmap, index)

    # -----------------------------------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **hub: Any) -> XLMRobertaTokenizer:
        """Reads ``tokenizer.json``, or else ``sentencepiece.bpe.model``, from a folder or a Hub model id. ``hub``:
        revision, subfolder, cache_dir, local_files_only, token (see ``altclip.loading.hub.resolve_file``)."""
        from altclip.loading.hub import resolve_file, resolve_first

        name_or_path = pretrained_model_name_or_path
        found = resolve_first(name_or_path, [TOKENIZER_FILE, SENTENCEPIECE_FILE], what="a tokenizer", **hub)
        if found.name == TOKENIZER_FILE:
            vocab, charsmap = read_tokenizer_json(found)
        else:
            vocab, charsmap = read_sentencepiece(found)
        max_length = DEFAULT_MAX_LENGTH
        config_path = resolve_file(name_or_path, TOKENIZER_CONFIG_FILE, required=False, **hub)
        if config_path is not None:
            config = read_json(config_path)
            # transformers writes a huge sentinel (1e30) when no length was set.
            if isinstance(config.get("model_max_length"), int) and config["model_max_length"] < 1_000_000:
                max_length = config["model_max_length"]
        return cls(vocab, charsmap, model_max_length=max_length)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path / TOKENIZER_FILE))
        config = {
            **SPECIAL_TOKENS,
            "cls_token": self.bos_token,
            "sep_token": self.eos_token,
            "model_max_length": self.model_max_length,
            "tokenizer_class": "XLMRobertaTokenizer",
        }
        (path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        specials = {**SPECIAL_TOKENS, "cls_token": self.bos_token, "sep_token": self.eos_token}
        (path / SPECIAL_TOKENS_FILE).write_text(json.dumps(specials, indent=2) + "\n")
        return path

    # -----------------------------------------------------------------------------------------------------------
    # Encoding

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(SPECIAL_TOKENS.values())

    @property
    def all_special_ids(self) -> list[int]:
        return [getattr(self, f"{name}_id") for name in SPECIAL_TOKENS]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        tokens = self._tokenizer.encode(_check_text(text, 0), add_special_tokens=False).tokens
        return [self.bos_token, *tokens, self.eos_token] if add_special_tokens else tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        return self.unk_token_id if found is None else found

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | None | list[str | None]:
        """The token of each id; None for an id outside the vocabulary."""
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        add_special_tokens: bool = True,
    ) -> BatchFeature:
        """Tokenizes one text or a batch (or pairs of them, with ``text_pair``).

        padding: False, True / "longest" (to the longest in the batch), or "max_length"; rounded up to a multiple of
            ``pad_to_multiple_of``; on ``padding_side`` ("right", the default, or "left").
        truncation: None (truncate what exceeds ``model_max_length``, with a warning), True (truncate to
            ``max_length``, default ``model_max_length``), or False (never; an over-long text then fails in the
            model with a clear error).
        return_overflowing_tokens: instead of dropping what truncation cuts off, return it as further rows, each
            window overlapping the previous one by ``stride`` tokens; ``overflow_to_sample_mapping`` says which text
            each row came from (single texts only, not pairs).
        return_special_tokens_mask / return_offsets_mapping / return_length: 1 for <s> </s> and padding; each
            token's (start, end) characters in its text, (0, 0) for special tokens; each row's unpadded length.
        return_tensors: "pt", "np", or None for Python lists (flat for a single text, as in transformers).
        """
        single = isinstance(text, (str, bytes))
        texts = [text] if single else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, (str, bytes)) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"Got {len(texts)} texts but {len(pairs)} text pairs")
        texts = [_check_text(t, i) for i, t in enumerate(texts)]
        pairs = None if pairs is None else [_check_text(t, i) for i, t in enumerate(pairs)]
        if return_overflowing_tokens and pairs is not None:
            raise NotImplementedError("return_overflowing_tokens is offered for single texts, not pairs")

        first = [_pieces(e) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]
        second = None
        if pairs is not None:
            second = [_pieces(e) for e in self._tokenizer.encode_batch(pairs, add_special_tokens=False)]
        limit = self._length_limit(
            [[i for i, _ in a] for a in first],
            None if second is None else [[i for i, _ in b] for b in second],
            truncation,
            max_length,
            add_special_tokens,
            padding,
        )
        rows: list[tuple[int, list[tuple[int, tuple[int, int], int]]]] = []  # (text index, [(id, offsets, special)])
        for i, a in enumerate(first):
            if return_overflowing_tokens and limit is not None:
                budget = limit - (2 if add_special_tokens else 0)
                rows += [(i, self._with_specials(w, None, add_special_tokens)) for w in _windows(a, budget, stride)]
            else:
                a, b = self._truncate(a, None if second is None else second[i], limit, add_special_tokens)
                rows.append((i, self._with_specials(a, b, add_special_tokens)))

        width = self._padded_width([len(r) for _, r in rows], padding, max_length, pad_to_multiple_of)
        if width is None and return_tensors is not None and len({len(r) for _, r in rows}) > 1:
            raise ValueError(
                "Texts of different lengths cannot form one tensor: pass padding=True (or padding='max_length')"
            )
        side = padding_side or self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        pad = (self.pad_token_id, (0, 0), 1)
        columns: dict[str, list] = {
            "input_ids": [],
            "attention_mask": [],
            "special_tokens_mask": [],
            "offset_mapping": [],
        }
        for _, row in rows:
            fill = [pad] * (0 if width is None else width - len(row))
            mask = [1] * len(row)
            if side == "right":
                row, mask = row + fill, mask + [0] * len(fill)
            else:
                row, mask = fill + row, [0] * len(fill) + mask
            columns["input_ids"].append([t for t, _, _ in row])
            columns["attention_mask"].append(mask)
            columns["special_tokens_mask"].append([s for _, _, s in row])
            columns["offset_mapping"].append([o for _, o, _ in row])

        wanted = {
            "input_ids": True,
            "attention_mask": return_attention_mask,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
        }
        out = BatchFeature({k: v for k, v in columns.items() if wanted[k]})
        if return_length:
            out["length"] = [sum(m) for m in columns["attention_mask"]]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = [i for i, _ in rows]
        flat = single and return_tensors is None and not return_overflowing_tokens
        for key in list(out):
            values = out[key][0] if flat else out[key]
            out[key] = as_tensors(values, return_tensors, "int64")
        return out

    def _padded_width(
        self, lengths: list[int], padding: bool | str, max_length: int | None, multiple: int | None
    ) -> int | None:
        if padding is True or padding == "longest":
            width = max(lengths)
        elif padding == "max_length":
            width = max_length or self.model_max_length
        elif padding in (False, None, "do_not_pad"):
            return None
        else:
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if multiple:
            width = -(-width // multiple) * multiple
        return width

    def _length_limit(
        self,
        first: list[list[int]],
        second: list[list[int]] | None,
        truncation: bool | str | None,
        max_length: int | None,
        add_special_tokens: bool,
        padding: bool | str = False,
    ) -> int | None:
        """The total length (special tokens included) to truncate to, or None."""
        if truncation is False or truncation == "do_not_truncate":
            return None
        extra = (4 if second is not None else 2) if add_special_tokens else 0
        if truncation is None:
            # As in transformers, max_length truncates when it does not say how far to pad; beyond that, only what
            # exceeds model_max_length (the position table) is cut.
            padding_to_max = padding not in (False, None, "do_not_pad")
            limit = (max_length if not padding_to_max else None) or self.model_max_length
            lengths = [len(a) + (0 if second is None else len(second[i])) + extra for i, a in enumerate(first)]
            too_long = [i for i, n in enumerate(lengths) if n > limit]
            if not too_long:
                return None
            logger.warning(
                "Truncating %d text(s) (e.g. item %d, %d tokens) to the limit of %d tokens; pass truncation=False "
                "to keep them whole",
                len(too_long),
                too_long[0],
                lengths[too_long[0]],
                limit,
            )
            return limit
        if truncation not in (True, "longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation must be True, False or None, got {truncation!r}")
        return max_length or self.model_max_length

    def _truncate(
        self, a: list, b: list | None, limit: int | None, add_special_tokens: bool
    ) -> tuple[list, list | None]:
        """Cuts token lists to ``limit`` tokens in all (special tokens included); pairs lose from the longer first."""
        if limit is None:
            return a, b
        budget = limit - ((4 if b is not None else 2) if add_special_tokens else 0)
        if budget < 0:
            raise ValueError(f"max_length={limit} leaves no room for the special tokens")
        if b is None:
            return a[:budget], None
        while len(a) + len(b) > budget:  # longest first: drop tokens from the longer of the two until both fit
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        return a, b

    def _with_specials(
        self, a: list, b: list | None, add_special_tokens: bool
    ) -> list[tuple[int, tuple[int, int], int]]:
        """(id, offsets, is-special) rows: <s> a </s>, or <s> a </s></s> b </s> for a pair."""
        a = [(i, o, 0) for i, o in a]
        b = None if b is None else [(i, o, 0) for i, o in b]
        if not add_special_tokens:
            return a + (b or [])
        bos, eos = (self.bos_token_id, (0, 0), 1), (self.eos_token_id, (0, 0), 1)
        return [bos, *a, eos] if b is None else [bos, *a, eos, eos, *b, eos]

    # -----------------------------------------------------------------------------------------------------------
    # Decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """Text of ``token_ids``; ``clean_up_tokenization_spaces`` is accepted and, as for XLM-R in transformers,
        changes nothing."""
        return self._tokenizer.decode(_id_list(token_ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]


def _pieces(encoding: Any) -> list[tuple[int, tuple[int, int]]]:
    """(id, (start, end)) of each token of a ``tokenizers`` encoding."""
    return list(zip(encoding.ids, encoding.offsets))


def _windows(tokens: list, size: int, stride: int) -> list[list]:
    """``tokens`` cut into windows of ``size``, each starting ``stride`` tokens before the previous one ended."""
    if size <= 0:
        raise ValueError("max_length leaves no room for the special tokens")
    if stride >= size:
        raise ValueError(f"stride ({stride}) must be smaller than the tokens per row ({size})")
    windows, start = [], 0
    while True:
        windows.append(tokens[start : start + size])
        if start + size >= len(tokens):
            return windows
        start += size - stride


def _id_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _check_text(text: Any, index: int) -> str:
    """Texts must be str (or UTF-8 bytes) and valid Unicode; the error names the item."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"Text {index} is not valid UTF-8: bad byte at offset {e.start}") from None
    if not isinstance(text, str):
        raise TypeError(f"Text {index} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"Text {index} is not valid Unicode: lone surrogate U+{ord(text[e.start]):04X} at position {e.start}"
        ) from None
    return text


def _build(vocab: list[tuple[str, float]], charsmap: bytes | None, index: dict[str, int]) -> Tokenizer:
    """The XLM-R pipeline: sentencepiece normalisation, whitespace split, "▁" word prefix, unigram model."""
    tokenizer = Tokenizer(Unigram(vocab, unk_id=index["<unk>"], byte_fallback=False))
    if charsmap:
        tokenizer.normalizer = normalizers.Precompiled(charsmap)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()])
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Reading vocabularies


def read_tokenizer_json(path: Path) -> tuple[list[tuple[str, float]], bytes | None]:
    """The unigram vocabulary and the sentencepiece normalisation table of a ``tokenizer.json``."""
    try:
        data = read_json(path)
        model = data["model"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a tokenizers JSON file: {e}") from None
    if model.get("type", "Unigram") != "Unigram" or not isinstance(model.get("vocab"), list):
        raise ValueError(f"{path} holds a {model.get('type')} model; the XLM-R tokenizer is a Unigram model")
    vocab = [(str(piece), float(score)) for piece, score in model["vocab"]]
    charsmap = None
    normalizer = data.get("normalizer") or {}
    for item in normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]:
        if item and item.get("type") == "Precompiled" and item.get("precompiled_charsmap"):
            charsmap = base64.b64decode(item["precompiled_charsmap"])
    return vocab, charsmap


def read_sentencepiece(path: Path) -> tuple[list[tuple[str, float]], bytes | None]:
    """The XLM-R vocabulary (fairseq layout) and normalisation table of a sentencepiece unigram model file."""
    pieces: list[tuple[str, float]] = []
    charsmap = None
    model_type = 1  # UNIGRAM
    try:
        for number, _, value in _protobuf_fields(path.read_bytes()):
            if number == 1:  # ModelProto.pieces
                piece, score = "", 0.0
                for n, _, v in _protobuf_fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                pieces.append((piece, score))
            elif number == 2:  # ModelProto.trainer_spec
                model_type = next((v for n, _, v in _protobuf_fields(value) if n == 3), 1)
            elif number == 3:  # ModelProto.normalizer_spec
                charsmap = next((v for n, _, v in _protobuf_fields(value) if n == 2), None)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a sentencepiece model: {e}") from None
    if model_type != 1:
        raise ValueError(f"{path} is not a unigram sentencepiece model (the kind XLM-R uses)")
    if len(pieces) < 4:
        raise ValueError(f"{path} holds only {len(pieces)} pieces")
    # fairseq's dictionary puts <s> <pad> </s> <unk> first and drops sentencepiece's own <unk> <s> </s>.
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return specials + pieces[3:] + [("<mask>", 0.0)], charsmap


def _protobuf_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes for everything else."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


# ---------------------------------------------------------------------------------------------------------------
# Training (for random-weight checkpoints)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> XLMRobertaTokenizer:
    """A small XLM-R-style unigram tokenizer trained on ``texts``: for random checkpoints, which have no real
    vocabulary but should still tokenize every script sensibly."""
    from tokenizers import trainers

    tokenizer = Tokenizer(Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1,  # room for <mask>
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,  # its progress bar leaves blank lines on the terminal
    )
    tokenizer.train_from_iterator(texts, trainer)
    vocab = [(p, float(s)) for p, s in json.loads(tokenizer.to_str())["model"]["vocab"]] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab)


def caption_corpus() -> list[tuple[str, str]]:
    """(language, caption) pairs shipped with the package (data/captions.txt)."""
    text = (Path(__file__).parent.parent / "data" / "captions.txt").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return [(lang, caption) for lang, caption in rows]
