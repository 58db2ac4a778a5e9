"""Contrastive training with the image tower trained, fed from JPEG files: pairs/s with the batches prepared in the
training process (``--workers 0``: how every batch was made before training had a DataLoader) and by DataLoader
workers that decode the next batches while a step runs.

    python benchmarks/train_data.py -o benchmarks/results/train_data_cpu.json

The photos are the example photos, resized to 640x480 and saved as JPEGs (``--images`` of them, cycled), each with a
caption; the model is a random checkpoint (``--shape``, default ``tiny``: decoding is then most of the work, as it is
for a large model on a GPU). Each setting runs in the same process, one after the other, on the same files,
alternating, so that a change in the machine's load shows as a spread between runs of one setting. On the CPU the
training step uses every core, so by default no workers decode there (measured: one worker on 2 cores was slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import altclip
from altclip.train.contrastive import contrastive
from altclip.train.loop import TrainConfig

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


def write_pairs(folder: Path, count: int) -> Path:
    photos = sorted(PHOTOS.glob("*.jpg"))
    rows = ["image,caption"]
    for i in range(count):
        photo = photos[i % len(photos)]
        Image.open(photo).convert("RGB").resize((640, 480)).save(folder / f"{i:05d}.jpg", quality=90)
        rows.append(f"{i:05d}.jpg,a photo of {photo.stem} number {i}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", default="0,1,0,1", help="comma-separated worker counts; auto = the default (none on the CPU)"
    )
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = altclip.write_random_checkpoint(args.shape, tmp / "model")
        (tmp / "data").mkdir()
        pairs = write_pairs(tmp / "data", args.images)
        for run, setting in enumerate(args.workers.split(",")):
            workers = None if setting == "auto" else int(setting)
            config = TrainConfig(
                output=str(tmp / f"run-{run}"), steps=args.steps, batch_size=args.batch_size, warmup_steps=1,
                save_every=10**9, log_every=10**9, progress=False, device="cpu", workers=workers,
            )  # fmt: skip
            start = time.perf_counter()
            result = contrastive(str(checkpoint), [str(pairs)], config, train_vision=True, log=lambda _: None)
            wall = time.perf_counter() - start
            last = result["last"]
            row = {
                "workers": setting,
                "pairs_per_s": last["samples_per_s"],  # over the training loop: steps x batch / its time
                "loop_s": last["elapsed_s"],
                "wall_s": round(wall, 2),  # with loading and the first pass that drops unreadable images
            }
            print(json.dumps(row))
            results.append(row)
    base = results[0]["pairs_per_s"]
    for row in results:
        row["speedup"] = round(row["pairs_per_s"] / base, 2)
    report = {
        "benchmark": "train_data",
        "shape": args.shape,
        "images": args.images,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
