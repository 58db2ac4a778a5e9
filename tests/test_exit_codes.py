"""The command line's documented exit codes, and never a traceback: hostile images, damaged checkpoints and configs,
damaged or full index databases, missing paths, bad --device and --dtype values, training without a model, and
messages that hold rich markup. The codes are the README's: 0 success, 1 unexpected error, 2 bad usage, 3 the model
could not be loaded (or gave NaN), 4 an image or text could not be used, 5 the index is missing, damaged or does not
fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from altclip.cli import build
from altclip.index import ImageIndex
from hostile_images import crafted
from synthetic import write_clip_teacher, write_parallel
from test_hostile_checkpoints import BAD_CONFIGS, DAMAGED_WEIGHTS, NESTED_FILES, damaged
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"
CAT = PHOTOS / "cat.jpg"


@pytest.fixture
def run(checkpoint):
    runner = CliRunner()

    def invoke(*args, env: dict | None = None):
        environment = {"ALTCLIP_MODEL": str(checkpoint), "ALTCLIP_DEBUG": "", **(env or {})}
        result = runner.invoke(build(), [str(a) for a in args], env=environment, catch_exceptions=False)
        result.said = " ".join(result.stderr.split())  # rich wraps long lines
        assert "Traceback" not in result.output
        return result

    return invoke


# --- item 1: hostile images ----------------------------------------------------------------------------------------


def test_a_crafted_image_is_an_input_error_and_does_not_stop_the_indexer(run, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    (folder / "x.jpg").write_bytes(crafted()["sgi"])  # the reproduction
    result = run("classify", folder / "x.jpg", "-l", "cat")
    assert (
        result.exit_code == 4
        and "x.jpg): not a readable image (unknown or unsupported format: altclip reads JPEG" in result.said
    )
    for retry in ([], ["--retry-errors"]):  # every re-run used to crash again
        result = run("index", folder, "--index", tmp_path / "index", "--json", *retry)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["images"] == 3 and [f["path"] for f in report["failed"]] == [str(folder / "x.jpg")]


# --- items 3 and 11: damaged checkpoints and configs ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DAMAGED_WEIGHTS) + sorted(BAD_CONFIGS) + sorted(NESTED_FILES))
def test_a_damaged_checkpoint_or_config_exits_3_naming_the_file(run, tmp_path, checkpoint, kind):
    folder = damaged(checkpoint, tmp_path / "ckpt", kind)
    result = run("classify", CAT, "-l", "cat", "--model", folder)
    assert result.exit_code == 3, result.output
    assert "error: Could not load" in result.said
    named = ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json")
    assert any(name in result.said for name in named)


def test_a_config_far_deeper_than_its_weights_exits_3_at_once(tmp_path, checkpoint):
    folder = damaged(checkpoint, tmp_path / "ckpt", "10**9 layers")
    result = subprocess.run(
        [sys.executable, "-m", "altclip", "classify", str(CAT), "-l", "cat", "--model", str(folder)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3 and "num_hidden_layers = 1000000000" in result.stderr
    assert "Traceback" not in result.stderr


def test_nan_weights_exit_3_instead_of_printing_nan_scores(run, tmp_path, checkpoint):
    folder = damaged(checkpoint, tmp_path / "ckpt", "nan weights")
    result = run("classify", CAT, "-l", "cat", "-l", "dog", "--model", folder, "--json")
    assert result.exit_code == 3 and "NaN or infinite image embeddings" in result.said and result.stdout == ""
    make_images(tmp_path / "photos", 2)
    result = run("index", tmp_path / "photos", "--index", tmp_path / "index", "--model", folder)
    assert result.exit_code == 3 and "NaN or infinite" in result.said


# --- item 12: the index database, missing paths, symbolic link loops -----------------------------------------------


def test_a_damaged_index_database_exits_5(run, tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "index.sqlite3").write_bytes(b"this is not an SQLite database" * 100)
    for args in (["search", "cat"], ["index", PHOTOS]):
        result = run(*args, "--index", garbage)
        assert result.exit_code == 5 and "holds no usable index (file is not a database)" in result.said
    make_images(tmp_path / "photos", 30)
    assert run("index", tmp_path / "photos", "--index", tmp_path / "index").exit_code == 0
    database = tmp_path / "index" / "index.sqlite3"
    database.write_bytes(database.read_bytes()[: 3 * 4096])  # truncated: the header is fine, the pages are gone
    result = run("search", "cat", "--index", tmp_path / "index")
    assert result.exit_code == 5 and "holds no usable index (database disk image is malformed)" in result.said


def test_a_full_disk_exits_5_and_keeps_the_index_consistent(run, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    assert run("index", folder, "--index", tmp_path / "index").exit_code == 0
    make_images(folder, 60, start=3)
    opened = ImageIndex.__init__

    def no_room_to_grow(self, *args, **kwargs):  # SQLite's own "database or disk is full"
        opened(self, *args, **kwargs)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(ImageIndex, "__init__", no_room_to_grow)
    result = run("index", folder, "--index", tmp_path / "index", "--batch-size", "4")
    assert result.exit_code == 5 and "The index database failed: database or disk is full" in result.said
    monkeypatch.undo()
    with ImageIndex(tmp_path / "index") as index:
        assert index.check() == [] and index.count() >= 3
    assert run("index", folder, "--index", tmp_path / "index").exit_code == 0  # a re-run finishes the job
    with ImageIndex(tmp_path / "index") as index:
        assert index.count() == 63


def test_missing_paths_are_bad_usage_and_loops_are_named(run, tmp_path):
    result = run("embed", tmp_path / "nonexist", "--output", tmp_path / "out")
    assert result.exit_code == 2 and "nonexist does not exist" in result.said  # the README's table says 2
    result = run("embed", "--texts", tmp_path / "captions.txt", "--output", tmp_path / "out")
    assert result.exit_code == 2 and "captions.txt does not exist" in result.said
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    result = run("classify", loop, "-l", "cat")
    assert result.exit_code == 4 and "loop.jpg): symbolic link loop" in result.said
    result = run("index", loop, "--index", tmp_path / "index")
    assert result.exit_code == 2 and "cannot be used (symbolic link loop)" in result.said
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "gone")
    result = run("embed", broken, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "broken cannot be used (broken symbolic link)" in result.said


# --- item 13: devices, dtypes, training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, message",
    [
        (["--device", "gpu"], "'gpu' is not a device"),
        (["--device", "cuda"], "Cannot use cuda"),
        (["--dtype", "float64"], "Unknown dtype 'float64'"),
    ],
)
def test_bad_device_and_dtype_values_are_bad_usage(run, option, message):
    if option == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = run("classify", CAT, "-l", "cat", *option)
    assert result.exit_code == 2 and message in result.said


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=16)  # fmt: skip
    texts = ["a red circle", "a blue square", "a green triangle"] * 10
    return write_clip_teacher(tmp_path_factory.mktemp("teacher"), texts, 300, 24, vision, 16)


def test_training_errors_have_their_exit_codes(run, tmp_path, teacher):
    corpus = write_parallel(tmp_path / "parallel.tsv")
    common = ["--corpus", corpus, "--output", tmp_path / "run", "--steps", "1", "--batch-size", "4"]
    result = run("train", "distill", "--teacher", tmp_path / "offline", "--student", "tiny", *common)
    assert result.exit_code == 3 and "Could not load a model" in result.said
    result = run("train", "distill", "--teacher", teacher, "--student", "tiny", "--device", "gpu", *common)
    assert result.exit_code == 2 and "'gpu' is not a device" in result.said
    result = run("train", "contrastive", "--model", tmp_path / "nothing", "--data", corpus, "--output", tmp_path / "c")
    assert result.exit_code == 3 and "Could not load a model" in result.said


def test_distill_from_the_tiny_shape_needs_no_tokenizer(tmp_path, teacher):
    """`--student tiny` without `--tokenizer`, which --help allows: the student gets the small tokenizer random
    checkpoints are written with. A real process, as training runs."""
    corpus = write_parallel(tmp_path / "parallel.tsv")
    result = subprocess.run(
        [sys.executable, "-m", "altclip", "train", "distill", "--teacher", str(teacher), "--student", "tiny",
         "--corpus", str(corpus), "--output", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
         "--save-every", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "tokenizer.json").exists() or any((tmp_path / "run" / "final").iterdir())


# --- item 14: messages are printed as they are ---------------------------------------------------------------------


def test_install_hints_keep_their_extra(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "altclip.export", None)  # as if onnx were not installed
    result = run("export", "onnx", "--model", "x", "--output", "y")
    assert result.exit_code == 2 and "pip install 'altclip[onnx]'" in result.said
    monkeypatch.setitem(sys.modules, "altclip.server", None)
    result = run("serve")
    assert result.exit_code == 2 and "pip install 'altclip[serve]'" in result.said


def test_user_text_is_never_read_as_markup(run, tmp_path):
    result = run("index", tmp_path / "[red]photos", "--index", tmp_path / "index")
    assert result.exit_code == 2 and "[red]photos does not exist" in result.said
    result = run("classify", CAT, "-l", "[bold]cat", "-l", "altclip[serve]", "--templates", "none")
    assert result.exit_code == 0 and "[bold]cat" in result.stdout and "altclip[serve]" in result.stdout


def test_the_model_hint_recommends_hf_download(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("ALTCLIP_MODEL", None)
    result = subprocess.run(
        [sys.executable, "-m", "altclip", "classify", str(CAT), "-l", "cat", "--model", "BAAI/AltCLIP-m9"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    said = " ".join(result.stderr.split())
    assert result.returncode == 3 and "hf download BAAI/AltCLIP-m9 --local-dir ./AltCLIP-m9" in said
    assert "huggingface-cli" not in said


# --- everything else: a message, exit 1, no traceback ----------------------------------------------------------------


def test_an_unexpected_error_is_a_message_not_a_traceback(run, monkeypatch):
    import altclip.loading.registry

    class Broken(dict):
        def values(self):
            raise RuntimeError("boom")

    monkeypatch.setattr(altclip.loading.registry, "KNOWN_MODELS", Broken())
    result = run("models")
    assert result.exit_code == 1 and "Unexpected RuntimeError: boom" in result.said and "bug" in result.said
    with pytest.raises(RuntimeError, match="boom"):  # ALTCLIP_DEBUG=1 shows where it happened
        run("models", env={"ALTCLIP_DEBUG": "1"})
