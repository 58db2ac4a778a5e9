"""Bulk embedding on a local Ray cluster beside single-process ``altclip embed``, on the same photos.

    python benchmarks/ray_throughput.py [--images 300] [--size 1600x1200] [--shape tiny] [--json PATH]

Writes JPEG photos (crops of the example photos, scaled up) and a random checkpoint of ``--shape`` (tiny, or a
full size such as BAAI/AltCLIP), embeds the photos once as ``altclip embed`` does (this process: decoding threads
and the model) and then with ``embed_on_ray`` on a local Ray cluster of all this machine's CPUs, in each
``--ray-config`` (ACTORS:CPUS_PER_ACTOR, ``default`` for the library's choice), checks that the files are equal and
prints images/s.

A Ray run's time counts from the start of its dataset (the actors starting, each loading the model) to its last
shard written. Each configuration embeds four images twice, the first time to warm Ray's worker processes, the
second to measure what a run costs before its throughput counts (``four_image_seconds``); then all the photos.
The single-process run's time leaves out loading the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from index_throughput import write_photos

import altclip
from altclip.index.embed_files import embed_shard
from altclip.index.ray_embed import embed_on_ray
from altclip.inference import Embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--shape", default="tiny", help="tiny, or a registered full shape such as BAAI/AltCLIP")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-config", nargs="+", default=["default", "1:0"], help="ACTORS:CPUS_PER_ACTOR")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_photos(tmp / "photos", args.images, size)
        few = tmp / "few.txt"
        few.write_text("".join(f"{p}\n" for p in paths[:4]))
        start = time.perf_counter()
        checkpoint = altclip.write_random_checkpoint(args.shape, tmp / "ckpt")
        print(f"{args.shape} random checkpoint written in {time.perf_counter() - start:.1f} s")
        results = {
            "images": len(paths),
            "size": args.size,
            "shape": args.shape,
            "batch_size": args.batch_size,
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "ray": ray.__version__,
            "load_average_at_start": os.getloadavg(),  # others' work on a shared machine shows here
            "runs": [],
        }

        model, processor = altclip.load(checkpoint)
        embedder = Embedder(model, processor, str(checkpoint), batch_size=args.batch_size)
        start = time.perf_counter()
        embed_shard(embedder, [tmp / "photos"], [], tmp / "single", 0, 1)
        seconds = time.perf_counter() - start
        reference = np.load(tmp / "single" / "img_emb" / "img_emb_0.npy")
        del model, processor, embedder
        results["single_process"] = {"images_per_s": round(len(paths) / seconds, 2), "seconds": round(seconds, 2)}
        print(f"altclip embed, one process: {len(paths) / seconds:.2f} images/s ({seconds:.1f} s)")

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        results["ray_init_seconds"] = round(time.perf_counter() - start, 2)
        try:
            for config in args.ray_config:
                actors, cpus_per_actor = (None, 1.0) if config == "default" else map(float, config.split(":"))
                options = dict(batch_size=args.batch_size, actors=actors and int(actors), cpus_per_actor=cpus_per_actor)
                name = config.replace(":", "-")
                embed_on_ray(str(checkpoint), [few], output=tmp / f"warm-{name}", **options)
                fixed = embed_on_ray(str(checkpoint), [few], output=tmp / f"few-{name}", **options)["image_seconds"]
                result = embed_on_ray(str(checkpoint), [tmp / "photos"], output=tmp / f"ray-{name}", **options)
                vectors = np.load(tmp / f"ray-{name}" / "img_emb" / "img_emb_0.npy")
                difference = float(np.abs(vectors - reference).max())
                run = {
                    "config": config,
                    "images_per_s": round(result["images"] / result["image_seconds"], 2),
                    "image_seconds": result["image_seconds"],
                    "four_image_seconds": round(fixed, 2),
                    "max_abs_difference_from_single_process": difference,
                }
                results["runs"].append(run)
                print(
                    f"Ray, {config} (actors:cpus per actor): {run['images_per_s']} images/s "
                    f"({run['image_seconds']:.1f} s; four images take {fixed:.1f} s); largest difference from one "
                    f"process {difference:.2g}"
                )
        finally:
            ray.shutdown()
        results["load_average_at_end"] = os.getloadavg()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
