"""Indexing throughput on this machine: where the time goes (decoding vs the model) for a tiny model.

    python benchmarks/index_throughput.py [--images 300] [--size 1600x1200] [--workers 1 2]

Writes JPEG photos (crops of the example photos, scaled up) into a temporary folder, indexes them with a tiny
random checkpoint, and prints images/s with the decode and model time. With a tiny model the model costs almost
nothing, so images/s is bounded by decoding: compare it with the decode-only rate printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

import altclip
from altclip.index import ImageIndex
from altclip.inference import Embedder

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = src.size
        crop = src.crop((i % 7, i % 5, w - i % 11, h - i % 3)).resize(size, Image.Resampling.BILINEAR)
        path = folder / f"photo_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_photos(tmp / "photos", args.images, size)
        checkpoint = altclip.write_random_checkpoint("tiny", tmp / "ckpt")
        model, processor = altclip.load(checkpoint)
        embedder = Embedder(model, processor, str(checkpoint), batch_size=args.batch_size)

        start = time.perf_counter()
        for p in paths:
            embedder.prepare(p.read_bytes())
        decode_rate = len(paths) / (time.perf_counter() - start)
        results = {
            "images": len(paths),
            "size": args.size,
            "cpu_count": os.cpu_count(),
            "decode_only_images_per_s_1_thread": round(decode_rate, 1),
            "runs": [],
        }
        print(f"{len(paths)} JPEGs of {args.size}; decode+resize alone, one thread: {decode_rate:.1f} images/s")
        for workers in args.workers:
            with ImageIndex(tmp / f"index-{workers}") as index:
                report = index.update([tmp / "photos"], embedder, batch_size=args.batch_size, workers=workers)
            run = {
                "workers": workers,
                "images_per_s": round(report.embedded / report.seconds, 1),
                "seconds": round(report.seconds, 2),
                "decode_seconds_summed_over_workers": round(report.decode_seconds, 2),
                "model_seconds": round(report.model_seconds, 2),
                "model_waited_for_decoding_seconds": round(report.wait_seconds, 2),
            }
            results["runs"].append(run)
            print(
                f"workers={workers}: {run['images_per_s']} images/s; wall {report.seconds:.2f} s, of which the model "
                f"{report.model_seconds:.2f} s and waiting for decoded images {report.wait_seconds:.2f} s; decoding "
                f"took {report.decode_seconds:.2f} s summed over the workers"
            )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
