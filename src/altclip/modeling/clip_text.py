"""The text tower of CLIP and its byte-level BPE tokenizer: the teacher of AltCLIP's teacher learning.

Reads a Hugging Face ``CLIPModel``, ``CLIPTextModel`` or ``CLIPTextModelWithProjection`` checkpoint (for example
openai/clip-vit-large-patch14, whose text tower AltCLIP distils). Causal pre-norm transformer layers (the same
layers as the image tower), a final layer norm, and the end-of-text token's state as the pooled output. Also builds
a complete AltCLIP model out of a trained student text tower and the CLIP checkpoint's image tower and projections.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from torch import nn

from altclip.loading import checkpoint as ckpt
from altclip.loading.hub import resolve_file, resolve_first
from altclip.loading.pretrained import checkpoint_files, empty_weights
from altclip.modeling.config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig, ConfigError, read_config_file
from altclip.modeling.layers import PreNormLayer, run_layers

if TYPE_CHECKING:
    from altclip.modeling.model import AltCLIPModel
    from altclip.modeling.text import AltCLIPTextModel


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77  # CLIP reads at most 77 tokens, <|startoftext|> and <|endoftext|> included
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # 2 in configs older than transformers 4.31: then the highest id marks the end
    projection_dim: int = 512  # of text_projection, when the checkpoint has one

    @classmethod
    def from_hf(cls, data: dict[str, Any]) -> CLIPTextConfig:
        """From a ``clip`` or ``clip_text_model`` config.json."""
        model_type = data.get("model_type")
        if model_type == "clip":
            text = dict(data.get("text_config") or {})
            text["projection_dim"] = data.get("projection_dim", 512)  # the full model's projection is the one used
        elif model_type == "clip_text_model":
            text = data
        else:
            raise ConfigError(
                f"Expected a CLIP checkpoint (model_type 'clip' or 'clip_text_model'), got {model_type!r}"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in text.items() if k in known and v is not None})


_LAYERS = {k: v for k, v in ckpt.VISION_WEIGHTS.items() if k.startswith("encoder.layers.")}
CLIP_TEXT_WEIGHTS: ckpt.WeightMap = {
    "embeddings.token_embedding.weight": "embeddings.token.weight",
    "embeddings.position_embedding.weight": "embeddings.position.weight",
    **_LAYERS,
    "final_layer_norm.weight": "final_norm.weight",
    "final_layer_norm.bias": "final_norm.bias",
}


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token(input_ids) + self.position.weight[: input_ids.shape[1]]


class CLIPTextTower(nn.Module):
    """CLIP's text encoder. ``pooled`` is the final-normed state of each text's end-of-text token, the state
    AltCLIP's ``transformation`` learns to reproduce; ``projection`` (when loaded) is CLIP's ``text_projection``.
    It is a teacher, never trained here: it is built for ``from_pretrained`` to fill, with no random init step."""

    def __init__(self, config: CLIPTextConfig, with_projection: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.layers = nn.ModuleList(
            PreNormLayer(
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size,
                config.hidden_act,
                config.layer_norm_eps,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False) if with_projection else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state (B, T, C), pooled end-of-text state (B, C))."""
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"CLIP reads at most {self.config.max_position_embeddings} tokens, got {T}")
        x = self.embeddings(input_ids)
        mask = torch.full((T, T), torch.finfo(x.dtype).min, device=x.device, dtype=x.dtype).triu(1)  # causal
        mask = mask[None, None].expand(B, 1, T, T)
        if attention_mask is not None:  # padding keys too
            mask = mask + (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            mask = mask.clamp(min=torch.finfo(x.dtype).min)
        x, _, _ = run_layers(self.layers, x, mask, [None] * len(self.layers), output_hidden_states=False,
                             output_attentions=False, gradient_checkpointing=False)  # fmt: skip
        x = self.final_norm(x)
        if self.config.eos_token_id == 2:  # legacy configs: <|endoftext|> has the highest id
            end = input_ids.argmax(dim=-1)
        else:
            end = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        return x, x[torch.arange(B, device=x.device), end]

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None
    ) -> CLIPTextTower:
        raw = read_config_file(resolve_file(name_or_path, "config.json"))
        config = CLIPTextConfig.from_hf(raw)
        files = ckpt.TensorFiles(checkpoint_files(name_or_path))
        keys = files.keys()
        prefix = "text_model." if any(k.startswith("text_model.") for k in keys) else ""
        with_projection = "text_projection.weight" in keys
        weights = {prefix + k: v for k, v in CLIP_TEXT_WEIGHTS.items()}
        depth = {"layers": ("num_hidden_layers", config.num_hidden_layers)}
        ckpt.check_depth(ckpt.layer_counts(keys, weights), depth, f"CLIP checkpoint {name_or_path}")
        with empty_weights():
            model = cls(config, with_projection=with_projection)
        if with_projection:
            weights["text_projection.weight"] = "projection.weight"
        ckpt.load_weights(
            model, files, weights, dtype=torch.float32, device=device, source=f"CLIP checkpoint {name_or_path}",
            ignore=re.compile(r"^(vision_model\.|visual_projection\.|logit_scale$)"),
        )  # fmt: skip
        return model.eval()


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer (lower-cased, ``</w>``-suffixed words, <|startoftext|> ... <|endoftext|>),
    padded with <|endoftext|> and truncated to 77 tokens, as transformers' ``CLIPTokenizer``."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int = 77):
        self.bos_token_id = vocab["<|startoftext|>"]
        self.eos_token_id = vocab["<|endoftext|>"]
        self.pad_token_id = self.eos_token_id
        self.max_length = max_length
        tokenizer = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token="<|endoftext|>",
            )
        )
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
        self._tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> CLIPTokenizer:
        found = resolve_first(name_or_path, ["tokenizer.json", "vocab.json"], what="a CLIP tokenizer")
        if found.name == "tokenizer.json":
            model = json.loads(found.read_text(encoding="utf-8"))["model"]
            vocab, merges = model["vocab"], model["merges"]
        else:
            vocab = json.loads(found.read_text(encoding="utf-8"))
            merges_path = resolve_file(name_or_path, "merges.txt")
            lines = merges_path.read_text(encoding="utf-8").splitlines()
            merges = [line for line in lines if line and not line.startswith("#version")]
        pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        return cls(vocab, cast(list[tuple[str, str]], pairs))  # each merge is two tokens; BPE checks them

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), padded to the longest text (at most 77 tokens)."""
        rows = []
        for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False):
            rows.append([self.bos_token_id, *e.ids[: self.max_length - 2], self.eos_token_id])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask


def train_clip_tokenizer(texts: list[str], vocab_size: int, directory: str | os.PathLike) -> CLIPTokenizer:
    """Writes ``vocab.json`` and ``merges.txt`` of a small CLIP-style byte-level BPE tokenizer trained on ``texts``
    into ``directory`` (for random teachers; real ones ship their tokenizer), and returns it."""
    from tokenizers import trainers

    tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,  # its progress bar leaves blank lines on the terminal
    )
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    path = os.fspath(directory)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(path)


def assemble_altclip(student: AltCLIPTextModel, clip_path: str | os.PathLike) -> AltCLIPModel:
    """A complete AltCLIP model: the trained ``student`` text tower with the CLIP checkpoint's image tower,
    ``visual_projection``, ``text_projection`` and ``logit_scale``, as AltCLIP was built."""
    raw = read_config_file(resolve_file(clip_path, "config.json"))
    if raw.get("model_type") != "clip":
        raise ValueError(
            f"{clip_path} is not a full CLIP checkpoint (model_type {raw.get('model_type')!r}): its image tower is needed"
        )
    vision_config = AltCLIPVisionConfig.from_dict(raw.get("vision_config") or {})
    text_config: AltCLIPTextConfig = student.config
    teacher_width = (raw.get("text_config") or {}).get("hidden_size", 512)
    if text_config.project_dim != teacher_width:
        raise ValueError(
            f"The student maps to {text_config.project_dim} dimensions, the CLIP text tower has {teacher_width}"
        )
    config = AltCLIPConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=raw.get("projection_dim", 512)
    )
    model = _clip_image_side(clip_path, config)
    model.text_model.load_state_dict(student.state_dict(), assign=True)
    return model.to(next(student.parameters()).device)


def _clip_image_side(clip_path: str | os.PathLike, config: AltCLIPConfig) -> AltCLIPModel:
    """An AltCLIP model with the CLIP checkpoint's image tower, projections and ``logit_scale`` loaded, and its
    text tower still empty (on the meta device), for a trained student to fill."""
    from altclip.modeling.model import AltCLIPModel

    with empty_weights():
        model = AltCLIPModel(config, initialize=False)
    ckpt.load_weights(
        model, ckpt.TensorFiles(checkpoint_files(clip_path)), ckpt.MODEL_WEIGHTS, dtype=torch.float32,
        source=f"CLIP checkpoint {clip_path}", ignore=re.compile(r"^text_model\."), missing_ok=re.compile(r"^text_model\."),
    )  # fmt: skip
    return model
