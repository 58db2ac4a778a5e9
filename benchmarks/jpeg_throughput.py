"""JPEG files on disk -> embeddings: images/s end to end, decoding in threads against decoding in processes, and how
far the fast preprocessing is from the exact one.

    python benchmarks/jpeg_throughput.py --device cuda --shape BAAI/AltCLIP --images 4096 --workers 16

Writes ``--images`` JPEGs (640x480, quality 90, crops of the example photos: COCO-like sizes), then measures the
library's own paths (``altclip.processing.decode_pool.DecodePool`` feeding ``Embedder.embed_readable``, what
``altclip embed``, ``altclip index`` and evaluation do), each pool's start and end included:

- ``decode_only_images_per_s`` and ``end_to_end_images_per_s``: decoding alone (no model), and the
  transformers-equal PIL path end to end, in threads and in processes, with ``--workers`` workers (and with 1, 2,
  4, ... up to it with ``--sweep``; each rate the median of ``--repeats`` runs, the kinds taking turns): the
  numbers behind ``choose_kind``'s rule (``auto`` says what it picks here). ``exact_processes`` says whether the
  vectors of both kinds are equal;
- ``draft``: JPEGs decoded at a reduced DCT scale (``CLIPImageProcessor(draft=True)``), end to end;
- ``gpu-decode`` (CUDA with torchvision only; not a library path): nvJPEG decoding and antialiased bicubic
  resizing on the GPU, to see what the GPU decoder would add.

Each fast path reports its distance from the exact path: max and mean |difference| of the 224x224 uint8 pixels
and the lowest cosine similarity between its embeddings and the exact path's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from altclip.processing.decode_pool import available_cpus, choose_kind

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "examples" / "photos"


def write_jpegs(folder: Path, count: int, workers: int) -> list[Path]:
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(count):
        source = sources[i % len(sources)]
        scale = rng.uniform(1.0, 1.6)
        width, height = (640, 480) if rng.random() < 0.75 else (480, 640)
        jobs.append((folder / f"{i:06d}.jpg", source, scale, width, height, int(rng.integers(0, 1 << 30))))

    def write(job) -> Path:
        path, source, scale, width, height, seed = job
        big = source.resize((max(width, int(source.width * scale)), max(height, int(source.height * scale))))
        r = np.random.default_rng(seed)
        left, top = int(r.integers(0, big.width - width + 1)), int(r.integers(0, big.height - height + 1))
        big.crop((left, top, left + width, top + height)).save(path, quality=90)
        return path

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(write, jobs))


def decode_rate(preparation, paths: list[str], kind: str, workers: int) -> float:
    """Images/s of the library's decoding alone, in a ``DecodePool`` of ``workers`` threads or processes (started
    and closed within the measurement, as a run pays them)."""
    from altclip.processing import decoding
    from altclip.processing.decode_pool import DecodePool

    start = time.perf_counter()
    with DecodePool(workers, kind) as pool:
        for path, (_, reason), _ in pool.map(
            decoding.prepare_or_reason, paths, preparation, failed=lambda r: (None, r)
        ):
            assert reason == "", (path, reason)
    return len(paths) / (time.perf_counter() - start)


def pool_start(kind: str, workers: int) -> float:
    """Seconds from creating a pool to the first result of a trivial task on each worker (the cost of starting it,
    which a run of few images does not earn back)."""
    from altclip.processing.decode_pool import DecodePool

    start = time.perf_counter()
    with DecodePool(workers, kind) as pool:
        for future in [pool.submit(os.getpid) for _ in range(workers)]:
            future.result()
        return time.perf_counter() - start


def embed_files(embedder, paths: list[str], workers: int) -> tuple[np.ndarray, float]:
    """(embeddings, images/s) through ``Embedder.embed_readable``: a decoding pool runs ahead of the model."""
    start = time.perf_counter()
    vectors, kept, _ = embedder.embed_readable(paths, workers=workers)
    assert len(kept) == len(paths)
    return vectors, len(paths) / (time.perf_counter() - start)


def first_pixels(preparation, paths: list[str]) -> np.ndarray:
    from altclip.processing import decoding

    return np.stack([decoding.prepare(path, preparation) for path in paths[:64]])


def gpu_decode_embed(embedder, processor, paths: list[Path], batch: int, workers: int):
    """nvJPEG through torchvision: files read by threads, decoded and resized on the GPU."""
    from torchvision.io import decode_jpeg

    size = processor.crop_size["height"]
    device = embedder.model.device

    def read(path: Path) -> torch.Tensor:
        return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)

    def prepare(images: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for image in images:  # (3, H, W) uint8 on the GPU
            _, h, w = image.shape
            new_w, new_h = processor.output_size((w, h))
            x = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)[0]
            top, left = (new_h - size) // 2, (new_w - size) // 2
            out.append(x[:, top : top + size, left : left + size].permute(1, 2, 0))
        return torch.stack(out)  # (B, H, W, 3) uint8

    vectors, keep = [], None
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool, torch.inference_mode():
        for first in range(0, len(paths), batch):
            data = list(pool.map(read, paths[first : first + batch]))
            decoded = decode_jpeg(data, device=device)
            uint8 = prepare(decoded)
            if keep is None:
                keep = uint8[:64].cpu().numpy()
            pixels = processor.normalize_tensor(uint8)
            embeds = embedder.features.get_image_features(pixel_values=pixels.to(embedder.model.dtype))
            vectors.append(F.normalize(embeds.float(), dim=-1).cpu().numpy())
    rate = len(paths) / (time.perf_counter() - start)
    return np.concatenate(vectors), keep, rate


def distance(pixels: np.ndarray, exact_pixels: np.ndarray, vectors: np.ndarray, exact_vectors: np.ndarray) -> dict:
    diff = np.abs(pixels.astype(np.int16) - exact_pixels.astype(np.int16))
    cosine = (vectors * exact_vectors).sum(-1)
    return {
        "pixel_max_abs_diff": int(diff.max()),
        "pixel_mean_abs_diff": round(float(diff.mean()), 3),
        "min_cosine_to_exact": round(float(cosine.min()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--model", help="a checkpoint folder instead of random weights of --shape")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--repeats", type=int, default=1, help="runs of each rate (the median is kept)")
    parser.add_argument("--sweep", action="store_true", help="also 1, 2, 4, ... workers, up to --workers")
    parser.add_argument("--output", "-o", type=Path)
    args = parser.parse_args()

    from altclip import AltCLIPModel
    from altclip.inference import Embedder
    from altclip.loading.random_checkpoints import random_model
    from altclip.processing.image_processing import CLIPImageProcessor

    dtype = getattr(torch, args.dtype)
    if args.model:
        model = AltCLIPModel.from_pretrained(args.model, device=args.device, dtype=dtype)
    else:
        with torch.device(args.device):
            model = random_model(args.shape).to(dtype)
    size = model.config.vision_config.image_size
    exact_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    draft_processor = CLIPImageProcessor(**{**exact_processor.__dict__, "draft": True})
    embedders = {
        kind + suffix: Embedder(model, SimpleNamespace(image_processor=processor), "random", args.batch, decode=kind)
        for kind in ("threads", "processes")
        for suffix, processor in (("", exact_processor), ("-draft", draft_processor))
    }
    embedder = embedders["threads"]

    report: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs",
        "cpus": available_cpus(),
        "model": args.model or f"random {args.shape}",
        "dtype": args.dtype,
        "images": args.images,
        "image_size": "640x480 and 480x640 JPEG, quality 90",
        "batch": args.batch,
        "workers": args.workers,
        "versions": {"torch": torch.__version__, "pillow": Image.__version__, "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d"),
        "auto": choose_kind("auto", args.images),
    }
    exact, draft = exact_processor.preparation, draft_processor.preparation
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(p) for p in write_jpegs(Path(tmp), args.images, args.workers)]
        embed_files(embedders["threads"], paths[: args.batch], args.workers)  # warm-up
        counts = [args.workers]
        if args.sweep:
            counts = sorted({1, args.workers, *(2**i for i in range(1, 8) if 2**i < args.workers)})
        rates: dict = {"threads": {}, "processes": {}}
        end_to_end: dict = {"threads": {}, "processes": {}}
        vectors: dict = {}  # of each kind, at --workers
        for workers in counts:
            runs: dict = {kind: ([], []) for kind in rates}
            for _ in range(args.repeats):
                for kind in rates:  # the kinds take turns, so that a change in the machine's load hits both
                    runs[kind][0].append(decode_rate(exact, paths, kind, workers))
                    vectors[kind], rate = embed_files(embedders[kind], paths, workers)
                    runs[kind][1].append(rate)
            for kind in rates:
                rates[kind][str(workers)] = round(statistics.median(runs[kind][0]), 1)
                end_to_end[kind][str(workers)] = round(statistics.median(runs[kind][1]), 1)
        report["decode_only_images_per_s"] = rates
        report["end_to_end_images_per_s"] = end_to_end
        report["pool_start_s"] = {kind: round(pool_start(kind, args.workers), 3) for kind in rates}
        report["decode_only_draft_images_per_s"] = {
            kind: round(decode_rate(draft, paths, kind, args.workers), 1) for kind in ("threads", "processes")
        }
        exact_vectors, exact_pixels = vectors["threads"], first_pixels(exact, paths)
        report["exact"] = {"images_per_s": end_to_end["threads"][str(args.workers)]}
        report["exact_processes"] = {
            "images_per_s": end_to_end["processes"][str(args.workers)],
            "same_vectors": bool(np.array_equal(vectors["processes"], exact_vectors)),
        }
        vectors, rate = embed_files(embedders[report["auto"] + "-draft"], paths, args.workers)
        report["draft"] = {
            "images_per_s": round(rate, 1),
            "decoded_in": report["auto"],
            **distance(first_pixels(draft, paths), exact_pixels, vectors[:64], exact_vectors[:64]),
        }
        if args.device.startswith("cuda"):
            try:
                vectors, pixels, rate = gpu_decode_embed(embedder, exact_processor, paths, args.batch, args.workers)
                report["gpu-decode"] = {
                    "images_per_s": round(rate, 1),
                    **distance(pixels, exact_pixels, vectors, exact_vectors),
                }
            except Exception as e:  # torchvision missing or without nvJPEG: reported, not fatal
                report["gpu-decode"] = {"error": f"{type(e).__name__}: {e}"}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
