"""JPEG files on disk -> embeddings: images/s end to end, and how far the fast preprocessing is from the exact one.

    python benchmarks/jpeg_throughput.py --device cuda --shape BAAI/AltCLIP --images 4096 --workers 16

Writes ``--images`` JPEGs (640x480, quality 90, crops of the example photos: COCO-like sizes), then measures, with a
pool of decoding threads feeding the model in batches (what ``altclip embed`` and ``altclip index`` do):

- ``decode`` rates alone (no model), exact and draft: the ceiling the CPU sets;
- ``exact``: the transformers-equal PIL path, end to end;
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
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


def decode_rate(processor, paths: list[Path], workers: int, processes: bool = False) -> float:
    """Images/s of ``prepare`` alone, in a pool of threads (what the library uses) or of processes."""
    start = time.perf_counter()
    with (ProcessPoolExecutor if processes else ThreadPoolExecutor)(workers) as pool:
        for _ in pool.map(processor.prepare, paths, chunksize=16):
            pass
    return len(paths) / (time.perf_counter() - start)


def embed_files_processes(embedder, processor, paths: list[Path], workers: int, batch: int) -> float:
    """Images/s end to end with decoding in worker processes instead of threads."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        arrays = []
        for array in pool.map(processor.prepare, paths, chunksize=16):
            arrays.append(array)
            if len(arrays) == batch:
                embedder.embed_prepared(np.stack(arrays))
                arrays = []
        if arrays:
            embedder.embed_prepared(np.stack(arrays))
    return len(paths) / (time.perf_counter() - start)


def embed_files(
    embedder, processor, paths: list[Path], workers: int, batch: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(embeddings, uint8 pixels of the first 64 images, images/s): decoding threads run ahead of the model."""
    from altclip.utils.files import ordered_map

    arrays, out, keep = [], [], []
    start = time.perf_counter()
    for _, array, _ in ordered_map(processor.prepare, paths, workers=workers, prefetch=2 * batch):
        arrays.append(array)
        if len(keep) < 64:
            keep.append(array)
        if len(arrays) == batch:
            out.append(embedder.embed_prepared(np.stack(arrays)))
            arrays = []
    if arrays:
        out.append(embedder.embed_prepared(np.stack(arrays)))
    rate = len(paths) / (time.perf_counter() - start)
    return np.concatenate(out), np.stack(keep), rate


def gpu_decode_embed(embedder, processor, paths: list[Path], batch: int, workers: int):
    """nvJPEG through torchvision: files read by threads, decoded and resized on the GPU."""
    from torchvision.io import decode_jpeg

    size = processor.crop_size["height"]
    device = embedder.model.device

    def read(path: Path) -> torch.Tensor:
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)

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
    parser.add_argument("--workers", type=int, default=os.cpu_count())
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
    embedder = Embedder(model, SimpleNamespace(image_processor=exact_processor), "random", batch_size=args.batch)

    report: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPUs",
        "model": args.model or f"random {args.shape}",
        "dtype": args.dtype,
        "images": args.images,
        "image_size": "640x480 and 480x640 JPEG, quality 90",
        "batch": args.batch,
        "workers": args.workers,
        "versions": {"torch": torch.__version__, "pillow": Image.__version__, "python": sys.version.split()[0]},
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, args.workers)
        embed_files(embedder, exact_processor, paths[: args.batch], args.workers, args.batch)  # warm-up
        report["decode_only_images_per_s"] = {
            "exact": round(decode_rate(exact_processor, paths, args.workers), 1),
            "draft": round(decode_rate(draft_processor, paths, args.workers), 1),
            "exact_processes": round(decode_rate(exact_processor, paths, args.workers, processes=True), 1),
            "draft_processes": round(decode_rate(draft_processor, paths, args.workers, processes=True), 1),
            "exact_1_thread": round(decode_rate(exact_processor, paths[:256], 1), 1),
        }
        report["exact_processes"] = {
            "images_per_s": round(embed_files_processes(embedder, exact_processor, paths, args.workers, args.batch), 1)
        }
        report["draft_processes"] = {
            "images_per_s": round(embed_files_processes(embedder, draft_processor, paths, args.workers, args.batch), 1)
        }
        exact_vectors, exact_pixels, exact_rate = embed_files(
            embedder, exact_processor, paths, args.workers, args.batch
        )
        report["exact"] = {"images_per_s": round(exact_rate, 1)}
        vectors, pixels, rate = embed_files(embedder, draft_processor, paths, args.workers, args.batch)
        report["draft"] = {"images_per_s": round(rate, 1), **distance(pixels, exact_pixels, vectors, exact_vectors)}
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
