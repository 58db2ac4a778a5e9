"""One optimizer step of each training stage, at the real model sizes: pairs/s and peak memory.

    python benchmarks/train_step.py --device cuda --batch 128 -o train_step.json

Random weights of the BAAI/AltCLIP shape (``--shape``), random texts of 8 to 32 tokens, AdamW, bfloat16 autocast
(as ``altclip train --bf16`` runs), the library's own training modules and losses:

- ``distill``: teacher learning. The CLIP ViT-L/14 text tower (teacher, frozen) reads the English texts; the
  AltCLIP text tower (student) reads them and their translations (2 x batch sequences) and regresses the teacher's
  states.
- ``contrastive``: contrastive learning with the image tower frozen (its embeddings cached, as the recipe runs).
- ``contrastive+vision``: the image tower trained too, 224x224 pixels through it every step.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F


def random_texts(batch: int, vocab: int, device: str, generator: torch.Generator, eos: int = 2):
    lengths = torch.randint(8, 33, (batch,), generator=generator)
    ids = torch.full((batch, int(lengths.max())), 1)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=generator)
        ids[i, 0], ids[i, n - 1] = 0, eos
    return ids.to(device), ids.ne(1).long().to(device)


def measure(name: str, module: torch.nn.Module, step_loss, steps: int, batch: int, device: str, bf16: bool) -> dict:
    """Times ``steps`` optimizer steps after two warm-up steps."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.startswith("cuda"))
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
    module.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.item()

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        first = step()
    start = time.perf_counter()
    for _ in range(steps):
        last = step()
    seconds = (time.perf_counter() - start) / steps
    result = {
        "stage": name,
        "pairs_per_step": batch,
        "step_ms": round(1000 * seconds, 1),
        "pairs_per_s": round(batch / seconds, 1),
        "trained_parameters_m": round(sum(p.numel() for p in params) / 1e6, 1),
        "loss_first_last": [round(first, 4), round(last, 4)],
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="BAAI/AltCLIP")
    parser.add_argument("--batch", type=int, default=128, help="pairs per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast")
    parser.add_argument("--stages", default="distill,contrastive,contrastive+vision")
    parser.add_argument("--output", "-o", type=Path)
    args = parser.parse_args()

    from altclip.loading.random_checkpoints import random_model
    from altclip.modeling.clip_text import CLIPTextConfig, CLIPTextTower
    from altclip.train.contrastive import ContrastiveModel, infonce
    from altclip.train.distill import Student
    from altclip.train.loop import Distributed

    device, bf16, batch = args.device, not args.fp32, args.batch
    generator = torch.Generator().manual_seed(0)
    results = []
    stages = args.stages.split(",")
    with torch.device(device):
        model = random_model(args.shape)
    text_config = model.config.text_config

    if "distill" in stages:
        # CLIP ViT-L/14's text tower (768 wide, 12 heads of 64) at BAAI/AltCLIP's shape: the teacher.
        width = text_config.project_dim
        teacher_config = CLIPTextConfig(
            hidden_size=width, intermediate_size=4 * width, num_attention_heads=max(1, width // 64),
            projection_dim=width, eos_token_id=49407,
        )  # fmt: skip
        with torch.device(device):
            teacher = CLIPTextTower(teacher_config).eval().requires_grad_(False)
        student = Student(model.text_model)
        teacher_ids, teacher_mask = random_texts(batch, 49406, device, generator, eos=49407)
        ids, mask = random_texts(2 * batch, text_config.vocab_size, device, generator)

        def distill_loss() -> torch.Tensor:
            with torch.no_grad():
                target = teacher(teacher_ids, teacher_mask)[1].float()
            predicted = student(ids, mask).float()
            return F.mse_loss(predicted[:batch], target) + F.mse_loss(predicted[batch:], target)

        results.append(measure("distill", student, distill_loss, args.steps, batch, device, bf16))
        del teacher, student

    d = Distributed()
    ids, mask = random_texts(batch, text_config.vocab_size, device, generator)
    size = model.config.vision_config.image_size
    if "contrastive" in stages:
        trained = ContrastiveModel(model, train_vision=False)
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            pixels = torch.randn(batch, 3, size, size, generator=generator).to(device)
            cached = F.normalize(model.get_image_features(pixel_values=pixels).float(), dim=-1)

        def contrastive_loss() -> torch.Tensor:
            text, image, scale = trained(ids, mask, cached)
            return infonce(text.float(), image, scale, d)

        results.append(measure("contrastive", trained, contrastive_loss, args.steps, batch, device, bf16))
        del trained
    if "contrastive+vision" in stages:
        trained = ContrastiveModel(model, train_vision=True)
        pixels = torch.randn(batch, 3, size, size, generator=generator).to(device)

        def vision_loss() -> torch.Tensor:
            text, image, scale = trained(ids, mask, pixels)
            return infonce(text.float(), image.float(), scale, d)

        results.append(measure("contrastive+vision", trained, vision_loss, args.steps, batch, device, bf16))

    report = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "shape": args.shape,
        "precision": "bfloat16 autocast, float32 weights and AdamW" if bf16 else "float32",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
