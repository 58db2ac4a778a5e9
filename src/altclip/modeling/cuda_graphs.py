"""CUDA graphs for small batches: the service's batch of one.

A batch of one runs some 300 small kernels, and on a GPU their launches (Python, PyTorch's dispatcher, the driver)
take longer than their work. ``GraphedFeatures`` records each input shape's kernels once into a CUDA graph and
replays the graph afterwards, a single launch:

    fast = GraphedFeatures(model)  # a model on CUDA, in any dtype
    fast.get_text_features(input_ids=ids, attention_mask=mask)
    fast.get_image_features(pixel_values=pixels)

Shapes are rounded up so that few graphs serve every input: the batch to a power of two, texts to a multiple of
``text_multiple`` tokens. The padding is masked out of attention (texts) or dropped from the output (images), so a
result equals the eager model's on the padded input exactly, and on the input as given up to float round-off.
Larger batches, and calls asking for more than the features, run eagerly. Inference only: no gradients.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from altclip.modeling.layers import recording


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class GraphedFeatures:
    """``get_text_features`` and ``get_image_features`` of an ``AltCLIPModel`` on CUDA, replayed from CUDA graphs
    for batches of up to ``max_batch``. At most ``max_graphs`` shapes are recorded; others run eagerly."""

    def __init__(self, model: Any, *, max_batch: int = 8, max_graphs: int = 64, text_multiple: int = 8):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, this one is on {model.device}")
        self.model = model
        self.config = model.config
        self.max_batch, self.max_graphs, self.text_multiple = max_batch, max_graphs, text_multiple
        self._graphs: dict[tuple, _Graph] = {}
        # One memory pool shared by all graphs: they never run at the same time.
        self._pool: torch.cuda._POOL_HANDLE | None = None
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        model = self.model
        if any(v is not None for v in kwargs.values()) or input_ids.dim() != 2 or len(input_ids) > self.max_batch:
            return model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        model.text_model.check_inputs(input_ids, attention_mask)  # the graph cannot: it reads no values
        B, T = input_ids.shape
        rows, width = _next_power_of_two(B), -(-T // self.text_multiple) * self.text_multiple
        ids = input_ids.new_full((rows, width), self.config.text_config.pad_token_id, device=self.device)
        mask = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        ids[:B, :T] = input_ids
        mask[:B, :T] = 1 if attention_mask is None else attention_mask
        # Rows added to fill the batch hold only padding: keep one real position so their attention stays defined.
        mask[B:, 0] = 1

        def text(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return model.get_text_features(input_ids=i, attention_mask=m)

        return self._run(("text", rows, width), text, (ids, mask))[:B]

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        model = self.model
        if any(v for v in kwargs.values()) or pixel_values.dim() != 4 or len(pixel_values) > self.max_batch:
            return model.get_image_features(pixel_values=pixel_values, **kwargs)
        B, C, H, W = pixel_values.shape
        size = self.config.vision_config.image_size
        if (C, H, W) != (self.config.vision_config.num_channels, size, size):
            return model.get_image_features(pixel_values=pixel_values)  # says what is wrong
        rows = _next_power_of_two(B)
        pixels = torch.zeros((rows, C, H, W), dtype=self.dtype, device=self.device)
        pixels[:B] = pixel_values

        def image(p: torch.Tensor) -> torch.Tensor:
            return model.get_image_features(pixel_values=p)

        return self._run(("image", rows, H, W), image, (pixels,))[:B]

    def _run(self, key: tuple, fn, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.max_graphs:
                    with recording():
                        return fn(*inputs)
                entry = self._graphs[key] = self._capture(fn, inputs)
            for static, x in zip(entry.inputs, inputs):
                static.copy_(x)
            entry.graph.replay()
            return entry.output.clone()  # the next replay overwrites the graph's output

    def _capture(self, fn, inputs: tuple[torch.Tensor, ...]) -> _Graph:
        static = tuple(x.clone() for x in inputs)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), recording():
            for _ in range(2):  # warm-up: cuBLAS handles and workspaces, kernel loading, allocator blocks
                fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), recording():
            output = fn(*static)
        self._pool = graph.pool()
        return _Graph(graph, static, output)


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
