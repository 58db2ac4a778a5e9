"""Building blocks both towers share: activations, the linear layers' small-batch CPU path, attention with a fused
q/k/v projection, the MLP, and the loop over layers that collects hidden states and attention maps."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x), CLIP's activation. Outside autograd and graph capture it works in one buffer (the same
    values, 3% less time per image on CPU, where the first and third pass would each allocate a new tensor)."""
    if (torch.is_grad_enabled() and x.requires_grad) or graph_mode():
        return x * torch.sigmoid(1.702 * x)
    y = torch.mul(x, 1.702)
    torch.sigmoid_(y)
    return y.mul_(x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported hidden_act {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


# For few rows, oneDNN multiplies a float32 matrix by a layer's weight faster than MKL, the BLAS behind F.linear, on
# an AVX2 CPU: 1.4-1.7x for 1 to 32 rows, 1.06x at 128; from about 256 rows on MKL is as fast or faster
# (benchmarks/small_gemm.py, results in benchmarks/results/small_gemm_cpu.json).
ONEDNN_MAX_ROWS = 255


@functools.cache
def onednn_linear() -> Callable[..., torch.Tensor] | None:
    """oneDNN's linear kernel, where this PyTorch has it and it gives ``F.linear``'s values, else None.

    The kernel is ``torch.ops.mkldnn._linear_pointwise``, what torch.compile's CPU backend emits for linear layers:
    an operator, not a documented API, so it is used only after a check on this machine (it exists, and on a small
    random product it agrees with ``F.linear`` to float32 round-off); anything else falls back to ``F.linear``."""
    if not torch.backends.mkldnn.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(3, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
        with torch.no_grad():
            agrees = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return None
    return (lambda x, weight, bias: op(x, weight, bias, "none", [], "")) if agrees else None


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, for the linear layers of the towers. A plain float32 ``nn.Linear`` on an x86 CPU, given fewer
    than 256 rows (one query, a short text) outside autograd and graph capture, multiplies through oneDNN instead
    (``onednn_linear``): the latency of one text falls by a quarter, with the same values to float32 round-off.
    Anything else (other devices and dtypes, quantized or wrapped layers, hooks, training, tracing, a PyTorch without
    the kernel) calls the module as it is."""
    if _small_cpu_gemm(module, x) and (kernel := onednn_linear()) is not None:
        return kernel(x, module.weight, module.bias)
    return module(x)


def _small_cpu_gemm(module: nn.Module, x: torch.Tensor) -> bool:
    if type(module) is not nn.Linear or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if graph_mode() or not torch.backends.mkldnn.enabled or module._forward_hooks or module._forward_pre_hooks:
        return False
    weight = module.weight
    return (
        type(weight) is nn.Parameter  # not a quantized tensor subclass
        and weight.dtype == torch.float32
        and x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class Packing:
    """Where the real tokens of a right-padded (B, T) batch sit when only they are kept, packed as (N, C) rows.

    Linear layers, norms and the MLP work row by row, so they run on the packed rows alone and spend nothing on
    padding. Attention runs on the packed rows too where a variable-length kernel exists (half precision on CUDA,
    see ``varlen_attention``); elsewhere it re-pads to the (B, T) layout around its own few operations.

    ``rows`` (B, T), a superset of ``attention_mask`` right after each sequence's real tokens, keeps more positions
    than the attended ones: those extra rows are computed as queries that attend to their sequence's real tokens,
    and are never attended to themselves (what a padding position computes under the attention mask).
    """

    def __init__(self, attention_mask: torch.Tensor, rows: torch.Tensor | None = None):
        self.batch, self.length = attention_mask.shape
        rows = attention_mask if rows is None else rows
        self.index = rows.flatten().nonzero().squeeze(1)  # (N,) positions of the kept rows in B * T
        lengths = rows.sum(1)
        ends = torch.cumsum(lengths, 0)
        self.first = ends - lengths  # (B,) row of each sequence's first token
        self.cu_seqlens = F.pad(ends, (1, 0)).to(torch.int32)  # (B + 1,) where each sequence starts, then N
        self.max_length = self.length  # an upper bound of the longest sequence is all the kernel needs
        # The packed rows that are keys, and where each sequence's keys start; None when every row is a key.
        self.keys: torch.Tensor | None = None
        self.key_cu_seqlens = self.cu_seqlens
        if rows is not attention_mask:
            self.keys = attention_mask.flatten()[self.index].nonzero().squeeze(1)  # (K,)
            self.key_cu_seqlens = F.pad(torch.cumsum(attention_mask.sum(1), 0), (1, 0)).to(torch.int32)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch * self.length, -1)[self.index]  # (B, T, C) -> (N, C)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.index, x).view(self.batch, self.length, -1)  # (N, C) -> (B, T, C)


class Attention(nn.Module):
    """Multi-head self-attention. q, k and v come from one fused projection: one matrix multiply instead of three.

    Uses ``scaled_dot_product_attention`` unless the attention probabilities are asked for, then the explicit
    ("eager") computation, which also applies dropout and a head mask to the probabilities.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        qkv = linear(self.qkv, x)  # (B, T, 3C), or (N, 3C) for packed rows
        p = self.dropout if self.training else 0.0
        if packing is not None and not need_weights and head_mask is None and p == 0.0 and varlen_supported(qkv):
            N = qkv.shape[0]
            q, k, v = qkv.view(N, 3, self.num_heads, self.head_dim).unbind(1)  # each (N, nh, hs)
            if packing.keys is not None:  # rows that are queries only
                k, v = k[packing.keys], v[packing.keys]  # (K, nh, hs)
            y = varlen_attention(q, k, v, packing.cu_seqlens, packing.max_length, packing.key_cu_seqlens)
            return linear(self.out, y.reshape(N, -1)), None
        if packing is not None:
            qkv = packing.unpack(qkv)
        B, T, C3 = qkv.shape
        C = C3 // 3
        qkv = qkv.view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        weights = None
        if need_weights:
            scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5)  # (B, nh, T, T)
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1, dtype=torch.float32).to(q.dtype), p, self.training)
            if head_mask is not None:
                weights = weights * head_mask
            y = torch.matmul(weights, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            if head_mask is not None:  # probs * m @ v == m * (probs @ v) for a per-head scalar m
                y = y * head_mask
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh * hs)
        if packing is not None:
            y = packing.pack(y)
        return linear(self.out, y), weights


@functools.cache
def varlen_kernel() -> Callable | None:
    """PyTorch's variable-length attention kernel, or None before PyTorch 2.10. Imported on first use, by the CUDA
    half-precision path alone: its module loads torch._dynamo, which would add a second to every ``import altclip``."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # PyTorch before 2.10
        return None
    return varlen_attn


def varlen_supported(x: torch.Tensor) -> bool:
    """Whether attention over packed sequences can run without re-padding: PyTorch's variable-length (flash)
    kernel, CUDA and half precision only. Float32 never takes it, so the exact path is unchanged."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and varlen_kernel() is not None


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
    key_cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention within each of the packed sequences: q, k, v (N, nh, hs), sequence ``i`` in rows
    ``cu_seqlens[i]:cu_seqlens[i + 1]`` (of k and v: ``key_cu_seqlens``, when they hold other rows); returns
    (N, nh, hs)."""
    keys = cu_seqlens if key_cu_seqlens is None else key_cu_seqlens
    kernel = varlen_kernel()
    if kernel is None:  # callers check varlen_supported first
        raise RuntimeError("Attention over packed sequences needs PyTorch 2.10 or later (torch.nn.attention.varlen)")
    return kernel(q, k, v, cu_seqlens, keys, max_length, max_length)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, self.act(linear(self.fc1, x)))


class PreNormLayer(nn.Module):
    """A CLIP transformer layer (the image tower's, and the text tower of the CLIP teacher):
    x = x + attn(norm(x)); x = x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, act: str, eps: float, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden, act)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.attn_norm(x), mask, head_mask, need_weights, packing)
        x = x + y
        x = x + self.mlp(self.mlp_norm(x))
        return x, weights


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask: 0 where attended, the dtype's minimum where padded.

    None when nothing is padded, which lets SDPA pick its fastest kernel (not while a graph is recorded, which
    must not depend on the values).
    """
    if attention_mask is None or (not graph_mode() and bool(attention_mask.all())):
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def expand_head_mask(head_mask: torch.Tensor | None, num_layers: int, num_heads: int) -> list[torch.Tensor | None]:
    """A (heads,) or (layers, heads) 1/0 mask -> one (1, heads, 1, 1) multiplier per layer."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask.expand(num_layers, -1)
    if head_mask.shape != (num_layers, num_heads):
        raise ValueError(
            f"head_mask must have shape ({num_heads},) or ({num_layers}, {num_heads}), got {tuple(head_mask.shape)}"
        )
    return [m.view(1, num_heads, 1, 1) for m in head_mask]


def run_layers(
    layers: Iterable[nn.Module],
    x: torch.Tensor,
    mask: torch.Tensor | None,
    head_masks: Sequence[torch.Tensor | None],
    *,
    output_hidden_states: bool,
    output_attentions: bool,
    gradient_checkpointing: bool,
    packing: Packing | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
    """Runs ``x`` through ``layers``; returns the output, the hidden states (input first) and attention maps."""
    hidden_states: list[torch.Tensor] = []
    attentions: list[torch.Tensor] = []
    for layer, head_mask in zip(layers, head_masks):
        if output_hidden_states:
            hidden_states.append(x)
        if gradient_checkpointing and torch.is_grad_enabled():
            x, weights = checkpoint(layer, x, mask, head_mask, output_attentions, packing, use_reentrant=False)
        else:
            x, weights = layer(x, mask, head_mask, output_attentions, packing)
        if output_attentions:
            attentions.append(weights)
    if output_hidden_states:
        hidden_states.append(x)
    return (
        x,
        tuple(hidden_states) if output_hidden_states else None,
        tuple(attentions) if output_attentions else None,
    )


def init_linear(module: nn.Linear, std: float) -> None:
    nn.init.normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_layer_norm(module: nn.LayerNorm) -> None:
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)


def tracing() -> bool:
    """Whether the model is being traced into a graph (torch.compile, torch.export / ONNX export, TorchScript)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


_recording: contextvars.ContextVar[bool] = contextvars.ContextVar("altclip_recording", default=False)


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Runs the model as it will be recorded into a graph (see ``graph_mode``), for the warm-up runs before a
    CUDA-graph capture: they must take the same path, so that the capture meets only kernels already loaded."""
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


def capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def graph_mode() -> bool:
    """Whether operations are being recorded into a graph (tracing, or CUDA-graph capture) rather than run: the
    code must then take the same path whatever the values, and must not read them (no host synchronisation)."""
    return _recording.get() or tracing() or capturing()


def checks_enabled() -> bool:
    """Whether to run the input checks that read tensor values; a graph being recorded skips them."""
    return not graph_mode()
