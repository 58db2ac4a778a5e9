"""Prompt encoding for AltDiffusion: altclip's text encoder against diffusers' own, as the pipelines call it.

    python benchmarks/diffusion_prompt_encoding.py [--device cpu] [--dtype float32] [--json out.json]

Random weights of the BAAI/AltDiffusion-m18 text encoder (XLM-R large, 24 layers, project_dim 1024, the head on the
layer before the last), written once by diffusers' ``RobertaSeriesModelWithTransformation`` and read by both. A
batch of 16 prompts of mixed length (4 to 75 tokens with <s> and </s>, 27 on average: short subjects to long
descriptions), padded to the tokenizer's 77 with their attention mask, as ``encode_prompt`` passes them; each model
in float32 (or --dtype), eval mode, no grad. Reports the median of --repeats rounds after a warm-up (each round
calls every model once, so that a shared machine's busy moments fall on all alike), and
the largest difference between the two ``projection_state`` outputs (what the UNet reads). ``altclip, padded``
is our encoder without the attention mask (every position computed, as diffusers' is), to show what packing saves.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

LENGTHS = [4, 6, 8, 10, 12, 14, 16, 19, 22, 26, 30, 36, 44, 52, 64, 75]  # tokens of each prompt, <s> and </s> in
WIDTH = 77  # what the tokenizer pads to


def batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.full((len(LENGTHS), WIDTH), 1)  # <pad>
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = torch.randint(5, vocab_size, (length,), generator=g)
        ids[row, 0], ids[row, length - 1] = 0, 2  # <s> ... </s>
    return ids, ids.ne(1).long()


def timed(runs: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, taking turns (one call of each per round), so that a busy moment of a
    shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
    from altclip.diffusion import AltDiffusionTextEncoder
    from altclip.diffusion.shapes import DIFFUSION_SHAPES

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = DIFFUSION_SHAPES["BAAI/AltDiffusion-m18"].text
    torch.manual_seed(0)
    reference = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(**shape)).eval()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        ours = AltDiffusionTextEncoder.from_pretrained(folder, dtype=dtype, device=device)
    reference = reference.to(device, dtype)
    ids, mask = (t.to(device) for t in batch(shape["vocab_size"]))

    results = {}
    with torch.inference_mode():
        expected = reference(ids, attention_mask=mask)[0]
        got = ours(ids, mask)[0]
        difference = (got.float() - expected.float()).abs().max().item()
        runs = {
            "diffusers": lambda: reference(ids, attention_mask=mask),
            "altclip": lambda: ours(ids, mask),
            "altclip, padded": lambda: ours(ids, None),
        }
        for name, times in timed(runs, args.repeats, device).items():
            results[name] = {"median_s": statistics.median(times), "times_s": times}
            print(f"{name:16s} {statistics.median(times) * 1000:9.1f} ms per batch of {len(LENGTHS)}", flush=True)
    speedup = results["diffusers"]["median_s"] / results["altclip"]["median_s"]
    per_round = [a / b for a, b in zip(results["diffusers"]["times_s"], results["altclip"]["times_s"])]
    print(
        f"altclip is {speedup:.2f}x diffusers (per round: median {statistics.median(per_round):.2f}x, "
        f"{min(per_round):.2f}x to {max(per_round):.2f}x); largest difference of projection_state {difference:.2e}"
    )
    report = {
        "benchmark": "diffusion_prompt_encoding",
        "shape": "BAAI/AltDiffusion-m18 text encoder (random weights)",
        "config": shape,
        "prompt_tokens": LENGTHS,
        "padded_to": WIDTH,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "results": results,
        "speedup_vs_diffusers": speedup,
        "speedup_per_round": per_round,
        "max_abs_difference": difference,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
        },  # fmt: skip
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
