"""Shared fixtures: tiny random reference checkpoints written by transformers (the oracle), loaded by both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep every test off the network: a test that tried to reach the Hub would hang CI on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    type_vocab_size=2,
    project_dim=24,
)
TINY_VISION = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, image_size=30, patch_size=6
)
TINY_PROJECTION = 16


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Moves every parameter away from its structured init (ones, zeros), so a swapped or dropped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def reference_model(text=TINY_TEXT, vision=TINY_VISION, projection_dim=TINY_PROJECTION, seed=0):
    """A random transformers.AltCLIPModel (the oracle) in eval mode."""
    import transformers

    config = transformers.AltCLIPConfig(
        text_config=dict(text), vision_config=dict(vision), projection_dim=projection_dim
    )
    torch.manual_seed(seed)
    model = transformers.AltCLIPModel(config).eval()
    perturb_(model, seed)
    return model


def load_reference(path: Path, cls: str = "AltCLIPModel", attn: str = "eager"):
    import transformers

    return getattr(transformers, cls).from_pretrained(str(path), attn_implementation=attn).eval()


@pytest.fixture(scope="session")
def ref_checkpoint(tmp_path_factory) -> Path:
    """A tiny AltCLIP checkpoint folder saved by transformers."""
    path = tmp_path_factory.mktemp("ref_tiny")
    reference_model().save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def text_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Three texts of different lengths, right-padded with <pad> (1), and their attention mask."""
    ids = torch.tensor(
        [
            [0, 5, 17, 42, 98, 7, 2],
            [0, 33, 2, 1, 1, 1, 1],
            [0, 9, 64, 11, 2, 1, 1],
        ]
    )
    return ids, ids.ne(1).long()


@pytest.fixture(scope="session")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A complete tiny random checkpoint folder: weights, tokenizer, preprocessor config."""
    import altclip

    return altclip.write_random_checkpoint("tiny", tmp_path_factory.mktemp("tiny_random"), seed=1)


@pytest.fixture(scope="session")
def embedder(checkpoint):
    import altclip
    from altclip.inference import Embedder

    model, processor = altclip.load(checkpoint)
    return Embedder(model, processor, str(checkpoint))
