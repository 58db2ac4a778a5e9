"""``altclip generate`` and ``altclip random-checkpoint --shape altdiffusion-tiny``, end to end on the tiny random
pipeline: the images are those diffusers makes with its own text encoder from the same folder, and bad input gets
the README's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

from altclip.cli import build  # noqa: E402

SRC = Path(__file__).parent.parent / "src"


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("altdiffusion") / "tiny"
    result = CliRunner().invoke(build(), ["random-checkpoint", str(path), "--shape", "altdiffusion-tiny"])
    assert result.exit_code == 0, result.output
    return path


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(build(), [str(a) for a in args], env={"ALTCLIP_DIFFUSION_MODEL": None})
    return result.exit_code, result.stdout, result.stderr


def test_images_are_diffusers_images_with_their_settings(pipeline_dir, tmp_path):
    from diffusers import AltDiffusionPipeline, AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesModelWithTransformation,
    )
    from transformers import XLMRobertaTokenizer

    prompts = ["一只猫在雪地里", "a red car"]
    code, stdout, stderr = run(
        "generate", *prompts, "--model", pipeline_dir, "--output", tmp_path / "out", "--seed", 7, "--steps", 3,
        "-n", 2, "--batch-size", 3, "--negative-prompt", "模糊", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    rows = json.loads(stdout)
    assert [(r["prompt"], r["seed"]) for r in rows] == [(p, 7 + k) for k, p in enumerate(np.repeat(prompts, 2))]
    assert [Path(r["file"]).name for r in rows] == ["00000.png", "00001.png", "00002.png", "00003.png"]

    folder = str(pipeline_dir)
    theirs = AltDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae"),
        text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(folder, subfolder="text_encoder").eval(),
        tokenizer=XLMRobertaTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        scheduler=PNDMScheduler.from_pretrained(folder, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    theirs.set_progress_bar_config(disable=True)
    for row in rows:
        expected = theirs(
            row["prompt"], negative_prompt="模糊", num_inference_steps=3, guidance_scale=7.5, output_type="np",
            generator=torch.Generator().manual_seed(row["seed"]),
        ).images[0]  # fmt: skip
        with Image.open(row["file"]) as image:
            got = np.asarray(image, dtype=np.float64)
            info = image.info
        assert got.shape == (32, 32, 3)
        assert np.abs(got - np.round(expected * 255)).max() <= 1  # PNG holds 8 bits: a rounding step at most
        assert (
            info["prompt"] == row["prompt"] and info["negative_prompt"] == "模糊" and info["seed"] == str(row["seed"])
        )
        settings = json.loads(info["altclip"])
        assert settings["steps"] == 3 and settings["guidance_scale"] == 7.5 and settings["width"] == 32
        assert info["parameters"].startswith(row["prompt"] + "\nNegative prompt: 模糊\nSteps: 3, ")

    code, stdout, _ = run("generate", "again", "--model", pipeline_dir, "-o", tmp_path / "out", "--steps", 1)
    assert code == 0 and "00004.png" in stdout  # a second run adds to the folder


def test_models_lists_the_pipelines():
    code, stdout, _ = run("models", "--json")
    listed = {m["name"]: m for m in json.loads(stdout)}
    assert len(listed["BAAI/AltDiffusion-m18"]["languages"]) == 18 and listed["BAAI/AltDiffusion-m18"]["released"]
    assert not listed["altdiffusion-tiny"]["released"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["x" * 400], 4, "prompt is 403 tokens long; this pipeline reads at most 77"),  # refused, not cut
        (["x " * 10**5], 4, "characters"),  # refused before it is tokenized
        (["ok", "--negative-prompt", "很长的句子 " * 80], 4, "negative prompt is"),
        (["a cat", "--width", "30"], 2, "--width 30 must be a multiple of 8"),
        (["a cat", "--height", "4096"], 2, "--height 4096"),
        (["a cat", "--guidance", "nan"], 2, "--guidance"),
        (["a cat", "--steps", "0"], 2, "steps"),
        (["a cat", "--device", "gpu"], 2, "not a device"),
        (["  "], 2, "no empty ones"),
        (["un chat \udcff"], 4, "must be valid UTF-8"),  # undecodable bytes of a command line
    ],
)
def test_bad_input(pipeline_dir, tmp_path, args, code, message):
    exit_code, _, stderr = run("generate", *args, "--model", pipeline_dir, "-o", tmp_path)
    assert exit_code == code, stderr
    assert message in stderr and "Traceback" not in stderr


def test_a_model_that_is_not_a_pipeline(checkpoint, tmp_path):
    code, _, stderr = run("generate", "a cat", "--model", checkpoint, "-o", tmp_path)
    assert code == 3 and "is not a diffusion pipeline" in stderr and "AltCLIP checkpoint" in stderr
    code, _, stderr = run("generate", "a cat", "--model", tmp_path / "nowhere", "-o", tmp_path)
    assert code == 3 and "Traceback" not in stderr


def test_a_damaged_text_encoder_config_is_named(pipeline_dir, tmp_path):
    import shutil

    other = tmp_path / "damaged"
    shutil.copytree(pipeline_dir, other)
    (other / "text_encoder" / "config.json").write_text('{"vocab_size": -5}')
    code, _, stderr = run("generate", "a cat", "--model", other, "-o", tmp_path / "out")
    assert code == 3 and f"{other}/text_encoder/config.json: vocab_size must be a positive integer" in stderr


def test_another_text_encoder_is_refused(pipeline_dir, tmp_path):
    import shutil

    other = tmp_path / "sd"
    shutil.copytree(pipeline_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "CLIPTextModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    code, _, stderr = run("generate", "a cat", "--model", other, "-o", tmp_path / "out")
    assert code == 3 and "whose text encoder is CLIPTextModel" in stderr


@pytest.mark.parametrize(
    "args", [["generate", "a cat", "-o", "out"], ["random-checkpoint", "p", "--shape", "altdiffusion-tiny"]]
)
def test_without_diffusers(tmp_path, args):
    code = (
        "import sys\n"
        "sys.modules['diffusers'] = None  # as if not installed: importing it raises ImportError\n"
        "from altclip.cli import main\n"
        f"sys.argv = ['altclip', *{args!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'altclip[diffusion]'" in result.stderr and "Traceback" not in result.stderr


def test_runs_into_one_folder_never_overwrite_and_an_interruption_keeps_what_was_made(pipeline_dir, tmp_path,
                                                                                     monkeypatch):  # fmt: skip
    """Each image is written as soon as its batch is done, under a number no other file holds: another run that
    writes the next number meanwhile keeps its image (the names were once picked for all images at the end, then
    written over whatever took them), and Ctrl-C after the first batch keeps the first image (exit 130, saying so)."""
    import altclip.diffusion.pipeline as diffusion

    out = tmp_path / "out"
    out.mkdir()
    original = diffusion.png_metadata
    calls = []

    def another_run_writes(settings, software):  # called as each image is about to be written
        calls.append(settings.seed)
        if len(calls) == 2:
            (out / "00001.png").write_bytes(b"the other run's image")
        return original(settings, software)

    monkeypatch.setattr(diffusion, "png_metadata", another_run_writes)
    code, stdout, stderr = run("generate", "a cat", "--model", pipeline_dir, "-o", out, "--steps", 1, "-n", 3,
                               "--seed", 0, "--json")  # fmt: skip
    assert code == 0, stderr
    assert [Path(r["file"]).name for r in json.loads(stdout)] == ["00000.png", "00002.png", "00003.png"]
    assert (out / "00001.png").read_bytes() == b"the other run's image"
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]

    monkeypatch.setattr(diffusion, "png_metadata", original)
    real_generate = diffusion.generate

    def interrupted_in_the_second_batch(*args, on_step, **kwargs):
        def step(done):
            if done == 2:  # one step per image, one image per batch: the second batch's first step
                raise KeyboardInterrupt
            on_step(done)

        return real_generate(*args, on_step=step, **kwargs)

    monkeypatch.setattr(diffusion, "generate", interrupted_in_the_second_batch)
    code, _, stderr = run("generate", "a dog", "--model", pipeline_dir, "-o", tmp_path / "two", "--steps", 1,
                          "-n", 2, "--seed", 0)  # fmt: skip
    assert code == 130 and "Interrupted (1 images written before" in stderr
    with Image.open(tmp_path / "two" / "00000.png") as image:
        assert image.text["prompt"] == "a dog"
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["00000.png"]
