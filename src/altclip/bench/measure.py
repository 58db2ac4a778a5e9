"""``altclip bench``: throughput, latency, memory, load time and accuracy of our engines, and of transformers'
AltCLIPModel on the same random weights in the same run.

Each engine runs in a fresh worker process (clean peak memory, no cross-talk); all see the same inputs: random
pixels, and texts of 8 to 32 tokens padded to the longest. Accuracy is the lowest cosine similarity between an
engine's embeddings and the float32 reference (transformers when compared, else our exact path).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Engine:
    library: str  # "altclip" or "transformers"
    dtype: str
    quantization: str | None = None  # an altclip.modeling.quantize method
    # The engine's fast paths, as ``altclip.inference.fast_features`` takes them: CUDA graphs for batches of up to 8,
    # the image tower compiled for large half-precision batches; None: the machine's choice, what Embedder runs.
    graphs: bool | None = False
    compile: bool | None = False


ENGINES: dict[str, Engine] = {
    "exact": Engine("altclip", "float32"),
    "default-bf16": Engine("altclip", "bfloat16", graphs=None, compile=None),  # what the library runs in bf16
    "bf16": Engine("altclip", "bfloat16"),
    "fp16": Engine("altclip", "float16"),
    "bf16-graphs": Engine("altclip", "bfloat16", graphs=True),
    "bf16-compile": Engine("altclip", "bfloat16", compile=True),
    "int8": Engine("altclip", "float32", "int8_dynamic"),
    "int8-bf16": Engine("altclip", "bfloat16", "int8_dynamic"),
    "int8wo-bf16": Engine("altclip", "bfloat16", "int8_weight_only"),
    "int4-bf16": Engine("altclip", "bfloat16", "int4_weight_only"),
    "transformers": Engine("transformers", "float32"),
    "transformers-bf16": Engine("transformers", "bfloat16"),
}


@dataclass
class Workload:
    image_batch: int = 8
    text_batch: int = 64
    min_seconds: float = 3.0
    latency_runs: int = 10
    latency_tokens: int = 20  # the one text of the batch-1 latency: <s>, 18 random tokens, </s>
    seed: int = 0


def make_inputs(config: dict, w: Workload, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, input_ids, attention_mask): texts of 8 to 32 tokens, right-padded with <pad> (1). The first text has
    ``latency_tokens`` tokens: the batch-1 latency is measured on it."""
    g = torch.Generator().manual_seed(w.seed)
    size = config["vision_config"]["image_size"]
    pixels = torch.randn(w.image_batch, 3, size, size, generator=g)
    vocab = config["text_config"]["vocab_size"]
    lengths = torch.randint(8, 33, (w.text_batch,), generator=g)
    lengths[0] = w.latency_tokens
    ids = torch.full((w.text_batch, int(lengths.max())), 1)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
    return pixels.to(device), ids.to(device), ids.ne(1).long().to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _throughput(fn, items: int, min_seconds: float, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    _sync(device)
    return items * runs / (time.perf_counter() - start)


def _latency_ms(fn, runs: int, device: str) -> float:
    fn()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run_engine(engine: str, checkpoint: str, device: str, w: Workload, probe_out: str) -> dict[str, Any]:
    """Measures one engine in this process."""
    spec = ENGINES[engine]
    dtype = getattr(torch, spec.dtype)
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    pixels, ids, mask = make_inputs(config, w, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if spec.library == "altclip":
        from altclip import AltCLIPModel

        model = AltCLIPModel.from_pretrained(
            checkpoint, dtype=dtype, device=device, quantization_config=spec.quantization
        )
        from altclip.inference import fast_features

        model = fast_features(model, cuda_graphs=spec.graphs, compile_images=spec.compile)
    else:
        import transformers

        model = (
            transformers.AltCLIPModel.from_pretrained(checkpoint, dtype=dtype, attn_implementation="sdpa")
            .to(device)  # type: ignore[arg-type]  # transformers wraps Module.to with functools.wraps
            .eval()
        )
    load_s = time.perf_counter() - start

    def image(p):
        out = model.get_image_features(pixel_values=p.to(dtype))
        return getattr(out, "pooler_output", out)

    def text(i, m):
        out = model.get_text_features(input_ids=i, attention_mask=m)
        return getattr(out, "pooler_output", out)

    with torch.inference_mode():
        result = {
            "engine": engine,
            "load_s": round(load_s, 3),
            "images_per_s": round(_throughput(lambda: image(pixels), len(pixels), w.min_seconds, device), 3),
            "texts_per_s": round(_throughput(lambda: text(ids, mask), len(ids), w.min_seconds, device), 3),
            "image_latency_ms": round(_latency_ms(lambda: image(pixels[:1]), w.latency_runs, device), 2),
            "text_latency_ms": round(
                _latency_ms(
                    lambda: text(ids[:1, : w.latency_tokens], mask[:1, : w.latency_tokens]), w.latency_runs, device
                ),
                2,
            ),
        }
        probe = {
            "image": image(pixels[:2]).float().cpu().numpy(),
            "text": text(ids[:16], mask[:16]).float().cpu().numpy(),
        }
    np.savez(probe_out, **probe)
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` starts afresh with each program, unlike ``ru_maxrss``,
    which a child inherits from the parent that started it (Linux keeps it across execve)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def benchmark(
    engines: list[str],
    *,
    shape: str = "tiny",
    checkpoint: str | None = None,
    device: str | None = None,
    workload: Workload | None = None,
    log=print,
) -> dict[str, Any]:
    """Runs each engine in a worker process on the same checkpoint (a random one of ``shape`` unless given), on
    ``device`` (default: a GPU where there is one)."""
    from altclip.loading.random_checkpoints import write_random_checkpoint
    from altclip.utils.devices import resolve_device

    device = resolve_device(device)
    w = workload or Workload()
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"Unknown engines {unknown}; known: {', '.join(ENGINES)}")
    given = checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            log(f"Writing a random {shape} checkpoint...")
            checkpoint = str(write_random_checkpoint(shape, Path(tmp) / "ckpt"))
        results: list[dict[str, Any]] = []
        probes: dict[str, dict[str, np.ndarray]] = {}
        for engine in engines:
            log(f"Measuring {engine}...")
            probe = str(Path(tmp) / f"{engine}.npz")
            command = [sys.executable, "-m", "altclip.bench", engine, checkpoint, device, json.dumps(w.__dict__), probe]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["failed"]
                results.append({"engine": engine, "error": lines[-1], "stderr_tail": "\n".join(lines[-30:])})
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            probes[engine] = dict(np.load(probe))
    reference = "transformers" if "transformers" in probes else "exact" if "exact" in probes else None
    baseline = next((r for r in results if r["engine"] == reference), None)
    for r in results:
        if reference and r["engine"] in probes:
            r["cosine_image"] = round(_cosine_min(probes[r["engine"]]["image"], probes[reference]["image"]), 6)
            r["cosine_text"] = round(_cosine_min(probes[r["engine"]]["text"], probes[reference]["text"]), 6)
        if baseline and "error" not in r:
            for key in ("images_per_s", "texts_per_s"):
                r[f"{key}_ratio"] = round(r[key] / baseline[key], 2)
            for key in ("image_latency", "text_latency"):  # how many times faster than the reference, as the ratios
                r[f"{key}_speedup"] = round(baseline[f"{key}_ms"] / r[f"{key}_ms"], 2)
    return {
        "checkpoint": given or f"random {shape}",
        "device": _device_name(device),
        "versions": _versions(),
        "workload": w.__dict__,
        "reference": reference,
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions
