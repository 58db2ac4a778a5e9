"""Cold-ish load time of a full-size checkpoint: ours against transformers' from_pretrained, same files, one run.

    python benchmarks/load_time.py [--shape BAAI/AltCLIP] [--repeats 3]

Writes a random checkpoint of the shape (model.safetensors, float32), then alternates loads by both libraries
(the page cache is warm for both after the first), and reports each load's wall time and the time to the first
output (one text, one image). Needs transformers (the dev extra).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import altclip


def first_output(model, pixel_values, input_ids):
    with torch.inference_mode():
        text = model.get_text_features(input_ids=input_ids)
        image = model.get_image_features(pixel_values=pixel_values)
    return getattr(text, "pooler_output", text), getattr(image, "pooler_output", image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="BAAI/AltCLIP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import transformers

    pixels = torch.randn(1, 3, 224, 224)
    ids = torch.tensor([[0, 1000, 2000, 2]])
    with tempfile.TemporaryDirectory() as tmp:
        altclip.write_random_checkpoint(args.shape, tmp)
        times: dict[str, list[tuple[float, float]]] = {"altclip": [], "transformers": []}
        loaders = {
            "altclip": lambda: altclip.AltCLIPModel.from_pretrained(tmp),
            "transformers": lambda: transformers.AltCLIPModel.from_pretrained(tmp).eval(),
        }
        for _ in range(args.repeats):
            for name, load in loaders.items():
                gc.collect()
                start = time.perf_counter()
                model = load()
                loaded = time.perf_counter() - start
                first_output(model, pixels, ids)
                times[name].append((loaded, time.perf_counter() - start))
                del model
        result = {
            "shape": args.shape,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            **{
                name: {
                    "load_s_median": round(statistics.median(t[0] for t in runs), 3),
                    "first_output_s_median": round(statistics.median(t[1] for t in runs), 3),
                    "runs": [[round(a, 3), round(b, 3)] for a, b in runs],
                }
                for name, runs in times.items()
            },
        }
    ours, theirs = result["altclip"], result["transformers"]
    print(
        f"{args.shape}: load {ours['load_s_median']} s (altclip) vs {theirs['load_s_median']} s (transformers); "
        f"to first output {ours['first_output_s_median']} s vs {theirs['first_output_s_median']} s"
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
