"""What one AltDiffusion image costs: the real BAAI/AltDiffusion-m18 shape with random weights, end to end.

    python benchmarks/diffusion_cpu_cost.py [--steps 3] [--size 512] [--device cpu] [--json out.json]

Builds the pipeline ``altclip generate`` runs (diffusers' StableDiffusionPipeline with altclip's text encoder) at
the m18 shape: XLM-R large text encoder, Stable Diffusion 2.1's UNet (865M parameters) and VAE, PNDM; float32.
One image of one prompt with a negative prompt and guidance (the UNet sees a batch of 2 each step), timed with a
callback at the end of every denoising step:

- prologue: encoding both prompts and drawing the noise (the time to the first step's end, less one step);
- per step: the median of the UNet evaluations after the first;
- epilogue: the VAE decoding the latents into pixels, after the last step.

An image of N steps then costs prologue + E x step + epilogue, where E is the UNet evaluations of N steps (N + 1
with PNDM, whose PLMS warm-up takes one more); the report gives it for 25 (altclip generate's default) and 50
(diffusers') steps. Random weights cost what trained ones do: the same operations on the same shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="steps to time (2 or more)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import diffusers
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import XLMRobertaTokenizer

    sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
    from altclip.diffusion import AltDiffusionTextConfig, AltDiffusionTextEncoder
    from altclip.diffusion.shapes import DIFFUSION_SHAPES
    from altclip.loading.random_checkpoints import random_tokenizer

    shape = DIFFUSION_SHAPES["BAAI/AltDiffusion-m18"]
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):
        text_encoder = AltDiffusionTextEncoder(AltDiffusionTextConfig(**shape.text)).eval()
        unet = UNet2DConditionModel(**shape.unet).eval()
        vae = AutoencoderKL(**shape.vae).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # the pipeline's own tokenizer class, on a small vocabulary
        tokens = random_tokenizer(4000)
        tokens.model_max_length = shape.max_tokens
        tokens.save_pretrained(folder)
        tokenizer = XLMRobertaTokenizer.from_pretrained(folder)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**shape.scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    built = time.perf_counter() - start
    print(f"built the m18-shape pipeline in {built:.1f} s", flush=True)

    marks: list[float] = []

    def step_end(_pipe, _step, _timestep, callback_kwargs):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        print(f"step {len(marks)}: {marks[-1] - (marks[-2] if len(marks) > 1 else begin):.1f} s", flush=True)
        return callback_kwargs

    with torch.inference_mode():
        begin = time.perf_counter()
        pipe(
            "一只戴着红色帽子的猫坐在窗台上，阳光，油画", negative_prompt="模糊，低质量", num_inference_steps=args.steps,
            guidance_scale=7.5, width=args.size, height=args.size, generator=torch.Generator().manual_seed(0),
            callback_on_step_end=step_end, output_type="pil",
        )  # fmt: skip
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        end = time.perf_counter()
    steps = [b - a for a, b in zip(marks, marks[1:])]
    per_step = statistics.median(steps)
    prologue = marks[0] - begin - per_step
    epilogue = end - marks[-1]
    evaluations = {}  # UNet evaluations of N steps: PNDM's PLMS takes one more than N (its warm-up)
    for n in (25, 50):
        pipe.scheduler.set_timesteps(n)
        evaluations[n] = len(pipe.scheduler.timesteps)
    per_image = {n: prologue + evaluations[n] * per_step + epilogue for n in (25, 50)}
    print(f"prologue {prologue:.2f} s, {per_step:.2f} s per step, epilogue (VAE) {epilogue:.2f} s")
    print(f"one {args.size}x{args.size} image: {per_image[25]:.0f} s at 25 steps, {per_image[50]:.0f} s at 50 steps")
    report = {
        "benchmark": "diffusion_cpu_cost",
        "shape": "BAAI/AltDiffusion-m18 (random weights)",
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
        "dtype": "float32",
        "size": args.size,
        "guidance": True,
        "timed_steps": args.steps,
        "step_s": steps,
        "per_step_s": per_step,
        "prologue_s": prologue,
        "epilogue_s": epilogue,
        "unet_evaluations": evaluations,
        "per_image_s": per_image,
        "build_s": built,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
