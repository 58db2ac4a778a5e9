"""Training and evaluation on a synthetic multilingual task (coloured shapes captioned in English and Chinese),
on CPU: teacher learning, contrastive learning, several processes, resuming, bad data, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import altclip
from altclip.evaluate import classification_metrics, retrieval_metrics
from altclip.inference import Embedder
from altclip.modeling.clip_text import CLIPTextTower, CLIPTokenizer
from synthetic import (
    CLASSES,
    COLOURS,
    SHAPES,
    TOY,
    english,
    make_images,
    write_captions,
    write_clip_teacher,
    write_parallel,
    write_toy_checkpoint,
)

ALTCLIP = [sys.executable, "-m", "altclip"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def run(args: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """The last logged value of ``key`` at each step (a resumed run logs some steps twice)."""
    return {r["step"]: r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task")
    write_parallel(root / "parallel.tsv")
    write_captions(root / "train.csv", make_images(root / "train", 10, seed=1))
    make_images(root / "heldout", 4, seed=2)
    write_captions(root / "retrieval.csv", make_images(root / "retrieval", 1, seed=5), seed=6)
    (root / "en.json").write_text(json.dumps({f"{c}_{s}": f"{c} {s}" for c, s in CLASSES}))
    (root / "zh.json").write_text(
        json.dumps({f"{c}_{s}": f"{COLOURS[c][1]}{SHAPES[s]}" for c, s in CLASSES}, ensure_ascii=False)
    )
    write_toy_checkpoint(root / "toy")
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny random CLIP whose text width is the student's project_dim and whose image tower has TOY's shape."""
    v = TOY.vision_config
    vision = dict(
        hidden_size=v.hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=v.image_size,
        patch_size=v.patch_size,
    )
    texts = [english(c, s, t) for c, s in CLASSES for t in range(4)] * 5
    return write_clip_teacher(
        tmp_path_factory.mktemp("teacher"), texts, 300, TOY.text_config.project_dim, vision, TOY.projection_dim
    )


def distill_args(teacher: Path, task: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "distill", "--teacher", str(teacher), "--student", "tiny", "--tokenizer", str(task / "toy"),
            "--corpus", str(task / "parallel.tsv"), "--output", str(output), "--batch-size", "16", "--lr", "2e-3",
            "--warmup-steps", "20", "--log-every", "1", *extra]  # fmt: skip


def contrastive_args(model: Path, task: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "contrastive", "--model", str(model), "--data", str(task / "train.csv"), "--output", str(output),
            "--lr", "1e-3", "--warmup-steps", "20", "--log-every", "1", *extra]  # fmt: skip


@pytest.mark.slow
def test_distillation_brings_the_student_to_the_teacher(task, teacher, tmp_path):
    out = tmp_path / "distill"
    run([*ALTCLIP, *distill_args(teacher, task, out, "--steps", "300", "--dropout", "0", "--save-every", "300")])
    first = losses(out, "mse_en")[1], losses(out, "mse_xx")[1]  # before the first update (dropout off)
    # The distilled result is a complete AltCLIP model: the student with the teacher's image tower.
    model = altclip.AltCLIPModel.from_pretrained(out / "final")
    tokenizer = altclip.XLMRobertaTokenizer.from_pretrained(out / "final")
    pairs = [line.split("\t") for line in (task / "parallel.tsv").read_text(encoding="utf-8").splitlines()]
    tower, clip_tokenizer = CLIPTextTower.from_pretrained(teacher), CLIPTokenizer.from_pretrained(teacher)
    with torch.no_grad():
        target = tower(*clip_tokenizer([en for en, _ in pairs]))[1]
        mse = []
        for column in (0, 1):
            batch = tokenizer([p[column] for p in pairs], padding=True, return_tensors="pt")
            mse.append(
                torch.nn.functional.mse_loss(
                    model.text_model.pooled(batch.input_ids, batch.attention_mask), target
                ).item()
            )
    print(f"distillation MSE: English {first[0]:.4f} -> {mse[0]:.4f}, Chinese {first[1]:.4f} -> {mse[1]:.4f}")
    assert first[0] / mse[0] >= 10 and first[1] / mse[1] >= 10
    import transformers

    ref = transformers.AltCLIPModel.from_pretrained(str(out / "final")).eval()  # transformers loads it too
    assert (ref.text_projection.weight - model.text_projection.weight).abs().max() == 0
    assert (out / "metrics.png").exists() and json.loads((out / "final" / "data_report.json").read_text())["used"] == 48


@pytest.mark.slow
def test_contrastive_learning_lifts_zero_shot_and_retrieval(task, tmp_path):
    out = tmp_path / "contrastive"
    run(
        [
            *ALTCLIP,
            *contrastive_args(
                task / "toy", task, out, "--steps", "300", "--batch-size", "32", "--train-vision", "--save-every", "300"
            ),
        ]
    )
    results = {}
    for start, name in ((task / "toy", "before"), (out / "final", "after")):
        model, processor = altclip.load(start)
        embedder = Embedder(model, processor, str(start))
        for language in ("en", "zh"):
            names = json.loads((task / f"{language}.json").read_text())
            result = altclip.evaluate.zero_shot_classification(
                embedder, task / "heldout", classnames=names, templates=language
            )
            results[(name, language)] = result["metrics"]["acc1"]
        retrieval = altclip.evaluate.zero_shot_retrieval(embedder, task / "retrieval.csv")["metrics"]
        results[(name, "R@1")] = (retrieval["image_retrieval_recall@1"] + retrieval["text_retrieval_recall@1"]) / 2
    print(
        "held-out zero-shot accuracy and recall@1 (chance 0.083):",
        {f"{k[0]} {k[1]}": round(v, 3) for k, v in results.items()},
    )
    assert results[("after", "en")] >= 0.35 and results[("after", "zh")] >= 0.25 and results[("after", "R@1")] >= 0.3
    assert results[("after", "en")] > results[("before", "en")] + 0.2


@pytest.mark.slow
def test_the_recipe_chains(task, teacher, tmp_path):
    """distill -> contrastive -> eval, through the command line, with the files each stage writes."""
    run([*ALTCLIP, *distill_args(teacher, task, tmp_path / "d", "--steps", "5")])
    run(
        [
            *ALTCLIP,
            *contrastive_args(tmp_path / "d" / "final", task, tmp_path / "c", "--steps", "5", "--batch-size", "16"),
        ]
    )
    out = run([*ALTCLIP, "eval", "zeroshot", str(task / "heldout"), "--classnames", str(task / "zh.json"), "--language", "zh",
               "--templates", "zh", "--name", "shapes", "--model", str(tmp_path / "c" / "final"), "-o", str(tmp_path / "results")])  # fmt: skip
    # Named as CLIP_benchmark names results; a checkpoint outside the current folder by its folder's name.
    record = json.loads((tmp_path / "results" / "shapes_final_AltCLIP_zh_zeroshot_classification.json").read_text())
    assert (
        record["pretrained"] == "final"
        and record["task"] == "zeroshot_classification"
        and record["language"] == "zh"
        and record["samples"] == 48
    )
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and "acc1" in out.stdout
    run(
        [
            *ALTCLIP,
            "eval",
            "retrieval",
            str(task / "retrieval.csv"),
            "--name",
            "shapes-captions",
            "--model",
            str(tmp_path / "c" / "final"),
            "-o",
            str(tmp_path / "results"),
        ]
    )
    retrieval = tmp_path / "results" / "shapes-captions_final_AltCLIP_en_zeroshot_retrieval.json"
    assert "image_retrieval_recall@10" in json.loads(retrieval.read_text())["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["distill", "contrastive", "contrastive-fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(task, teacher, tmp_path, stage):
    """torchrun with 2 CPU processes (gloo) and half the per-process batch equals 1 process with the full batch."""
    if stage == "distill":
        one, two = (
            distill_args(teacher, task, tmp_path / n, "--steps", "8", "--dropout", "0", "--batch-size", b)
            for n, b in (("one", "16"), ("two", "8"))
        )
    else:
        extra = ["--fsdp"] if stage.endswith("fsdp") else []
        one, two = (contrastive_args(task / "toy", task, tmp_path / n, "--steps", "8", "--dropout", "0", "--batch-size", b, *(extra if n == "two" else []))
                    for n, b in (("one", "16"), ("two", "8")))  # fmt: skip
    run([*ALTCLIP, *one])
    run([*TORCHRUN, "-m", "altclip", *two])
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() == set(range(1, 9))
    assert max(abs(a[s] - b[s]) / abs(a[s]) for s in a) < 1e-4, (a, b)
    assert altclip.AutoModel.from_pretrained(tmp_path / "two" / "final").num_parameters() > 0


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(task, teacher, tmp_path):
    """SIGKILL mid-run, then run again: it resumes from the last checkpoint (weights, optimizer, random state,
    data position) and ends exactly where an uninterrupted run ends. Dropout stays on: the random state matters."""
    steps = ["--steps", "60", "--save-every", "10"]
    run([*ALTCLIP, *distill_args(teacher, task, tmp_path / "straight", *steps)])
    killed = distill_args(teacher, task, tmp_path / "killed", *steps)
    process = subprocess.Popen([*ALTCLIP, *killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed").glob("checkpoints/step-0000020")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "final").exists()
    resumed = run([*ALTCLIP, *killed])
    assert "Resumed from" in resumed.stderr
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    x = altclip.AltCLIPModel.from_pretrained(tmp_path / "straight" / "final").state_dict()
    y = altclip.AltCLIPModel.from_pretrained(tmp_path / "killed" / "final").state_dict()
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


@pytest.mark.slow
def test_bad_data_is_counted_and_skipped(task, teacher, tmp_path):
    corpus = tmp_path / "corpus.tsv"
    lines = (task / "parallel.tsv").read_bytes().splitlines()
    corpus.write_bytes(
        b"\n".join([*lines, b"three\tcolumns\there", b"\tno english", b"english only\t", b"bad utf-8 \xff\tx", b""])
    )
    out = tmp_path / "d"
    args = distill_args(teacher, task, out, "--steps", "2")
    args[args.index(str(task / "parallel.tsv"))] = str(corpus)
    run([*ALTCLIP, *args], env={**os.environ, "TERM": "dumb"})
    report = json.loads((out / "final" / "data_report.json").read_text())
    assert report["used"] == 48
    assert report["skipped"] == {
        "more than two tab-separated columns": 1,
        "no English text": 1,
        "empty translation": 1,
        "invalid UTF-8": 1,
    }

    pairs = tmp_path / "pairs.csv"
    rows = (task / "train.csv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    truncated = (task / "train" / "red_circle" / "000.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    pairs.write_text("\n".join([*rows[:41], f"{tmp_path}/missing.png,a red circle", f"{tmp_path}/corrupt.png,a red circle",
                                f"{tmp_path}/truncated.png,a red circle", f"{rows[1].split(',')[0]},"]) + "\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "c"
    run(
        [
            *ALTCLIP,
            "train",
            "contrastive",
            "--model",
            str(task / "toy"),
            "--data",
            str(pairs),
            "--output",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "8",
        ]
    )
    report = json.loads((out / "final" / "data_report.json").read_text())
    assert report["used"] == 40
    assert report["skipped"] == {"missing image": 1, "unreadable image": 2, "empty caption": 1}


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(task, teacher, tmp_path):
    out = tmp_path / "d"
    result = subprocess.run([*ALTCLIP, *distill_args(teacher, task, out, "--steps", "50", "--save-every", "1", "--lr", "1e30", "--warmup-steps", "1")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert "training stopped" in result.stderr and "The last good checkpoint is" in result.stderr
    good = sorted(out.glob("checkpoints/step-*"))
    assert good and all(
        np.isfinite(v).all()
        for v in torch.load(good[-1] / "model.pt", weights_only=True).values()
        if v.is_floating_point()
    )
    assert "Traceback" not in result.stderr


def test_classification_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 1, 2, 2])
    m = classification_metrics(scores, labels)
    # top-1 right: items 0, 1, 3 -> 3/5. Per class: class 0 1/1, class 1 1/2, class 2 1/2 -> mean 2/3.
    assert m["acc1"] == pytest.approx(0.6) and m["mean_per_class_recall"] == pytest.approx(2 / 3)
    assert np.isnan(m["acc5"])  # 3 classes: no top 5 (CLIP_benchmark reports NaN)


def test_retrieval_metrics_by_hand():
    images = np.eye(3)
    # captions 0, 1 describe image 0; caption 2 image 1; caption 3 image 2 (but points at image 1).
    texts = np.array([[1.0, 0.1, 0.0], [0.2, 0.9, 0.0], [0.0, 1.0, 0.1], [0.0, 0.8, 0.3]])
    m = retrieval_metrics(images, texts, np.array([0, 0, 1, 2]), ks=(1, 2))
    # caption -> image ranks: 0, 1, 0, 1 -> R@1 = 2/4, R@2 = 4/4
    assert m["image_retrieval_recall@1"] == 0.5 and m["image_retrieval_recall@2"] == 1.0
    # image -> best caption ranks: image 0: caption 0 is first (rank 0); image 1: caption 2 (1.0) is first;
    # image 2: caption 3 (0.3) is first of its column -> R@1 = 1
    assert m["text_retrieval_recall@1"] == 1.0
    assert m["mean_recall"] == pytest.approx(np.mean([0.5, 1.0, 1.0, 1.0]))


def test_batches_come_in_training_order_whatever_the_number_of_workers():
    """The DataLoader (with or without worker processes, from the first step or from a resumed one) gives the
    micro-batches ``global_indices`` defines, in order: data order stays a function of the step alone."""
    from altclip.train.loop import Distributed, StepBatches, TrainConfig, TrainData, global_indices

    config = TrainConfig(steps=5, batch_size=3, grad_accum=2, seed=1)
    data = TrainData(dataset=list(range(10)), collate=torch.tensor, to_device=lambda b: b, decodes=True)
    for start in (0, 3):
        expected = [global_indices(s, m, config, 1, 0, 10) for s in range(start, 5) for m in range(2)]
        for workers in (0, 2, None):
            sampler = StepBatches(config, Distributed(), 10, start=start)
            got = [batch.tolist() for batch in data.loader(sampler, workers, "cpu")]
            assert got == expected, (start, workers)
    # by default, workers decode only beside a step on an accelerator: on the CPU the step uses every core
    sampler = StepBatches(config, Distributed(), 10, start=0)
    assert data.loader(sampler, None, "cpu").num_workers == 0
    assert data.loader(sampler, None, "cuda").num_workers >= 1
    assert TrainData(list(range(10)), torch.tensor, lambda b: b).loader(sampler, None, "cuda").num_workers == 0
