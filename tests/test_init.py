"""Building and initialising are separate steps: a model built directly is randomly initialised, as transformers
initialises it; one built for loading runs no initialiser (its own or PyTorch's modules'), without changing
torch.nn.init for anyone else."""

from __future__ import annotations

import threading

import pytest
import torch

from altclip import AltCLIPModel, AltCLIPTextModel
from altclip.loading.pretrained import empty_weights
from altclip.loading.registry import known_model

CONFIG = known_model("tiny").config()


def test_a_model_built_directly_is_initialised():
    torch.manual_seed(0)
    model = AltCLIPModel(CONFIG)
    token = model.text_model.embeddings.token.weight
    assert token.std().item() == pytest.approx(CONFIG.text_config.initializer_range, rel=0.1)
    assert token[CONFIG.text_config.pad_token_id].abs().sum() == 0  # the padding row stays zero
    assert model.logit_scale.item() == pytest.approx(CONFIG.logit_scale_init_value)
    text = AltCLIPTextModel(CONFIG.text_config)  # a tower on its own too
    assert text.embeddings.token.weight.std().item() == pytest.approx(CONFIG.text_config.initializer_range, rel=0.1)


def test_a_model_built_for_loading_is_empty_and_initialises_nothing():
    with empty_weights():
        model = AltCLIPModel(CONFIG, initialize=False)
    assert all(p.is_meta for p in model.parameters())


def test_empty_weights_leaves_torch_nn_init_alone_outside_its_block_and_thread():
    original = torch.nn.init.normal_
    elsewhere = []
    with empty_weights():
        assert torch.nn.init.normal_(torch.zeros(3, device="cpu")).abs().sum() == 0  # skipped here
        worker = threading.Thread(target=lambda: elsewhere.append(torch.nn.init.normal_(torch.zeros(3)).abs().sum()))
        worker.start()
        worker.join()
    assert elsewhere[0] > 0 and torch.nn.init.normal_(torch.zeros(3)).abs().sum() > 0
    assert torch.nn.init.normal_ is original
