"""What each deployment variant costs and saves: size on disk, peak memory, CPU speed, and accuracy against float32
(the lowest cosine similarity of embeddings, and how often the top zero-shot label stays the same) on the example
photos with labels in several languages.

    python benchmarks/variants.py [--shape tiny | BAAI/AltCLIP] [--json out.json]

Variants: PyTorch float32 (the exact path), bfloat16, int8 dynamic (with and without int8 word embeddings), int8
weight-only (torchao), and ONNX float32 / float16 / int8 in onnxruntime. Each runs in its own process, so its
peak memory is its own. With a random checkpoint (no weights can be downloaded here) the accuracy numbers measure
how far a variant moves the model's outputs, not task accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
LABELS = [
    "猫",
    "a cup of coffee",
    "ロケット",
    "галактика",
    "monedas",
    "une astronaute",
    "一位女军官",
    "a brick wall",
    "Fotograf",
    "강아지",
    "سيارة",
    "un gâteau",
]
TEXTS = LABELS + [
    "一只在窗台上睡觉的猫",
    "a rocket launching at night",
    "銀河の写真",
    "старинные греческие монеты",
    "una mujer con uniforme",
]
VARIANTS = [
    "fp32",
    "bf16",
    "int8_dynamic",
    "int8_dynamic+emb",
    "int8_weight_only",
    "onnx-fp32",
    "onnx-fp16",
    "onnx-int8",
]


def worker(variant: str, folder: Path, probe: Path) -> dict:
    """Runs in a fresh process: load the variant, embed the probes, measure speed."""
    import torch

    import altclip
    from altclip.bench import peak_rss_mb

    photos = sorted(PHOTOS.glob("*.jpg"))
    start = time.perf_counter()
    if variant.startswith("onnx"):
        import onnxruntime as ort

        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["variants"][variant.split("-")[1]]
        text = ort.InferenceSession(str(folder / files["text"]), providers=["CPUExecutionProvider"])
        vision = ort.InferenceSession(str(folder / files["vision"]), providers=["CPUExecutionProvider"])
        tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(folder)
        processor = altclip.CLIPImageProcessor.from_pretrained(folder)
        pixel_dtype = np.float16 if variant == "onnx-fp16" else np.float32

        def embed_texts(texts):
            t = tokenizer(texts, padding=True, return_tensors="np")
            return text.run(None, {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]})[0].astype(
                np.float32
            )

        def embed_pixels(pixels):
            return vision.run(None, {"pixel_values": pixels.astype(pixel_dtype)})[0].astype(np.float32)

        logit_scale = manifest["logit_scale"]
    else:
        dtype = torch.bfloat16 if variant == "bf16" else None
        model, processor_ = altclip.load(folder, dtype=dtype)
        tokenizer, processor = processor_.tokenizer, processor_.image_processor

        def embed_texts(texts):
            t = tokenizer(texts, padding=True, return_tensors="pt")
            with torch.inference_mode():
                return model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask).float().numpy()

        def embed_pixels(pixels):
            with torch.inference_mode():
                return model.get_image_features(pixel_values=torch.from_numpy(pixels).to(model.dtype)).float().numpy()

        logit_scale = model.logit_scale.exp().item()
    load_s = time.perf_counter() - start
    pixels = processor([str(p) for p in photos], return_tensors="np")["pixel_values"]
    image_embeds, text_embeds, label_embeds = embed_pixels(pixels), embed_texts(TEXTS), embed_texts(LABELS)
    np.savez(probe, image=image_embeds, text=text_embeds, labels=label_embeds, logit_scale=logit_scale)

    def rate(fn, items, seconds=4.0):
        fn()
        runs, t = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - t < seconds:
            fn()
            runs += 1
        return items * runs / (time.perf_counter() - t)

    batch = np.repeat(pixels[:4], 1, axis=0)
    texts = (TEXTS * 4)[:32]
    return {
        "variant": variant,
        "load_s": round(load_s, 2),
        "images_per_s": round(rate(lambda: embed_pixels(batch), len(batch)), 3),
        "texts_per_s": round(rate(lambda: embed_texts(texts), len(texts)), 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))))
        return

    import altclip
    from altclip.export import export_onnx

    wanted = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = altclip.write_random_checkpoint(args.shape, tmp / "fp32")
        folders = {"fp32": base, "bf16": base}
        sizes = {"fp32": (base / "model.safetensors").stat().st_size}
        sizes["bf16"] = sizes["fp32"] // 2  # the same weights at 2 bytes each (saved with --dtype bfloat16)
        for name, method, embeddings in (
            ("int8_dynamic", "int8_dynamic", False),
            ("int8_dynamic+emb", "int8_dynamic", True),
            ("int8_weight_only", "int8_weight_only", False),
        ):
            if name in wanted:
                print(f"quantizing {name}...", file=sys.stderr)
                extra = ["--include-embeddings"] if embeddings else []
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "altclip",
                        "quantize",
                        "--model",
                        str(base),
                        "--output",
                        str(tmp / name),
                        "--method",
                        method,
                        *extra,
                    ],
                    check=True,
                    capture_output=True,
                )
                folders[name] = tmp / name
                sizes[name] = (tmp / name / "quantized_model.pt").stat().st_size
        if any(v.startswith("onnx") for v in wanted):
            print("exporting ONNX...", file=sys.stderr)
            manifest = export_onnx(
                base,
                tmp / "onnx",
                fp16="onnx-fp16" in wanted,
                int8="onnx-int8" in wanted,
                log=lambda m: print(m, file=sys.stderr),
            )
            for name, files in manifest["variants"].items():
                folders[f"onnx-{name}"] = tmp / "onnx"
                sizes[f"onnx-{name}"] = sum(
                    p.stat().st_size
                    for p in (tmp / "onnx").iterdir()
                    if p.name.startswith(tuple(f.removesuffix(".onnx") + ".onnx" for f in files.values()))
                )
        rows, probes = [], {}
        for variant in wanted:
            print(f"measuring {variant}...", file=sys.stderr)
            probe = tmp / f"{variant}.npz"
            done = subprocess.run(
                [sys.executable, __file__, "--worker", variant, str(folders[variant]), str(probe)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                rows.append({"variant": variant, "error": done.stderr.strip().splitlines()[-1]})
                continue
            rows.append(
                {**json.loads(done.stdout.strip().splitlines()[-1]), "size_mb": round(sizes[variant] / 2**20, 1)}
            )
            probes[variant] = dict(np.load(probe))
    reference = probes["fp32"]

    def top1(p: dict) -> np.ndarray:
        return (_normalize(p["image"]) @ _normalize(p["labels"]).T).argmax(1)

    for row in rows:
        p = probes.get(row["variant"])
        if p is None:
            continue
        row["cosine_image_min"] = round(
            float((_normalize(p["image"]) * _normalize(reference["image"])).sum(-1).min()), 6
        )
        row["cosine_text_min"] = round(float((_normalize(p["text"]) * _normalize(reference["text"])).sum(-1).min()), 6)
        row["top1_agreement"] = round(float((top1(p) == top1(reference)).mean()), 3)
    result = {
        "shape": args.shape,
        "photos": len(list(PHOTOS.glob("*.jpg"))),
        "labels": LABELS,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
