"""float32 matrix products of few rows on CPU: which kernel ``layers.linear`` should use, and where it stops paying.

    python benchmarks/small_gemm.py [--json out.json] [--rows 1 8 20 ...]

Times the four linear layers of six XLM-R large / ViT-L layers (q/k/v 1024->3072, out 1024->1024, fc1 1024->4096,
fc2 4096->1024; 300 MB of weights, so they stream from memory as in the model) for inputs of a few rows (one
20-token query has 20) up to four images' tokens (1028), through:

- ``mkl``: ``F.linear``, the path of PyTorch (and transformers) by default;
- ``onednn``: ``torch.ops.mkldnn._linear_pointwise`` on the weights as they are (what ``layers.linear`` does below
  ``ONEDNN_MAX_ROWS`` rows);
- ``onednn_packed``: the same on weights reordered once into oneDNN's blocked layout (a second copy of every weight);
- ``mkl_packed``: MKL's own packed-weight product (what torch.compile's CPU backend uses for float32).

Each entry is the median of five passes, in GFLOP/s, with the largest difference from ``mkl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)] * 6  # (out, in) of each layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 20, 32, 64, 128, 257, 514, 1028])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=g) * 0.02 for n, k in SHAPES]
    biases = [torch.randn(n, generator=g) * 0.02 for n, _ in SHAPES]
    onednn_packed = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
    flop_per_row = 2 * sum(n * k for n, k in SHAPES)

    def kernels(rows: int) -> dict:
        mkl_packed = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights]
        return {
            "mkl": lambda xs: [F.linear(x, w, b) for x, w, b in zip(xs, weights, biases)],
            "onednn": lambda xs: [
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "") for x, w, b in zip(xs, weights, biases)
            ],
            "onednn_packed": lambda xs: [
                torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")
                for x, p, b in zip(xs, onednn_packed, biases)
            ],
            "mkl_packed": lambda xs: [
                torch.ops.mkl._mkl_linear(x, p, w, b, rows) for x, p, w, b in zip(xs, mkl_packed, weights, biases)
            ],
        }

    results = []
    with torch.inference_mode():
        for rows in args.rows:
            xs = [torch.randn(rows, k, generator=g) for _, k in SHAPES]
            reference = kernels(rows)["mkl"](xs)
            times: dict[str, list[float]] = {}
            errors: dict[str, float] = {}
            for _ in range(5):  # the kernels take turns, so that a busy moment of the machine hits them all
                for name, fn in kernels(rows).items():
                    start = time.perf_counter()
                    out = fn(xs)
                    times.setdefault(name, []).append(time.perf_counter() - start)
                    errors[name] = max((a - b).abs().max().item() for a, b in zip(out, reference))
            entry = {"rows": rows}
            for name, ts in times.items():
                entry[name] = {
                    "gflops": round(rows * flop_per_row / statistics.median(ts) / 1e9, 1),
                    "max_diff": float(f"{errors[name]:.2g}"),
                }
            results.append(entry)
            print(f"rows {rows:5d}  " + "  ".join(f"{k} {v['gflops']:6.1f}" for k, v in entry.items() if k != "rows"))
    if args.json:
        report = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "layers": "6 x (1024->3072, 1024->1024, 1024->4096, 4096->1024), float32",
            "unit": "GFLOP/s, median of 5 passes; max_diff: largest difference from mkl",
            "results": results,
            "date": time.strftime("%Y-%m-%d"),
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
