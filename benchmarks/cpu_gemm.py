"""What this CPU's matrix products deliver, per precision and backend: the ceiling of every CPU engine.

    python benchmarks/cpu_gemm.py [--json out.json]

Measures the shapes of the ViT-L/14 and XLM-R large layers (1028 rows = 4 images x 257 tokens): float32 through
PyTorch's default path and through oneDNN, bfloat16, and int8 dynamic quantization (x86 / fbgemm kernels).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch


def gflops(fn, flop: float, seconds: float = 1.0) -> float:
    fn()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return flop * runs / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from torch.ao.quantization import quantize_dynamic

    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    isa = sorted({f for f in flags.split() if f.startswith(("avx", "amx", "fma"))})
    results = {"cpu_flags": isa, "threads": torch.get_num_threads(), "torch": torch.__version__, "shapes": []}
    for rows, k, n in ((1028, 1024, 3072), (1028, 1024, 4096), (1028, 4096, 1024)):
        x, linear = torch.randn(rows, k), torch.nn.Linear(k, n)
        flop = 2 * rows * k * n
        xm, wm, bm = x.to_mkldnn(), linear.weight.detach().to_mkldnn(), linear.bias.detach().to_mkldnn()
        q = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n)), {torch.nn.Linear}, dtype=torch.qint8)
        xb, lb = x.bfloat16(), torch.nn.Linear(k, n).bfloat16()
        with torch.inference_mode():
            row = {
                "shape": [rows, k, n],
                "float32_default": gflops(lambda: linear(x), flop),
                "float32_onednn": gflops(lambda: torch._C._nn.mkldnn_linear(xm, wm, bm), flop),
                "bfloat16": gflops(lambda: lb(xb), flop, seconds=0.5),
                "int8_dynamic": gflops(lambda: q(x), flop),
            }
        results["shapes"].append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()})
        print(row["shape"], {k: round(v, 1) for k, v in row.items() if k != "shape"}, "GFLOP/s")
    print("CPU vector extensions:", " ".join(isa))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
