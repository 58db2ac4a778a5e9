"""What the command line says when something stands in the way, as a newcomer meets it: each message names what is
wrong and what to do, with the command as it can be typed here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altclip.cli import build
from test_index import make_images

ROOT = Path(__file__).parent.parent
CAT = ROOT / "examples" / "photos" / "cat.jpg"


def offline(tmp_path: Path, path: str = "/usr/bin:/bin") -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": path,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def altclip(args: list[str], cwd: Path, env: dict[str, str], program: list[str] | None = None):
    program = program or [sys.executable, "-m", "altclip"]
    return subprocess.run([*program, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_missing_model_says_what_to_do(tmp_path):
    """A real process, offline, with the default model not downloadable and no checkpoint written yet."""
    result = altclip(["classify", str(CAT), "--labels", "cat", "dog"], tmp_path, offline(tmp_path))
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "BAAI/AltCLIP" in result.stderr and "python -m altclip random-checkpoint ./checkpoints/tiny" in result.stderr


def test_the_hint_names_the_command_as_it_can_be_typed(tmp_path):
    """Before the environment is activated (make demo), `altclip` is not on PATH: the hint says .venv/bin/altclip."""
    script = tmp_path / ".venv" / "bin" / "altclip"  # as pip writes a console script
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom altclip.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    args = ["classify", str(CAT), "-l", "cat"]
    result = altclip(args, tmp_path, offline(tmp_path), program=[".venv/bin/altclip"])
    assert result.returncode == 3
    assert "\n  .venv/bin/altclip random-checkpoint ./checkpoints/tiny\n" in result.stderr
    assert "ALTCLIP_MODEL=./checkpoints/tiny .venv/bin/altclip ..." in result.stderr
    activated = altclip(args, tmp_path, offline(tmp_path, f"{script.parent}:/usr/bin:/bin"), program=["altclip"])
    assert "\n  altclip random-checkpoint ./checkpoints/tiny\n" in activated.stderr


def test_a_random_checkpoint_that_exists_is_pointed_at_not_written_again(tmp_path, checkpoint):
    shutil.copytree(checkpoint, tmp_path / "checkpoints" / "tiny")
    result = altclip(["classify", str(CAT), "-l", "cat"], tmp_path, offline(tmp_path))
    assert result.returncode == 3 and "random-checkpoint" not in result.stderr
    assert "point at the random checkpoint in ./checkpoints/tiny:\n  ALTCLIP_MODEL=./checkpoints/tiny" in result.stderr


def test_a_mistyped_local_path_is_not_looked_for_on_the_hub(tmp_path):
    result = altclip(["classify", str(CAT), "-l", "cat", "--model", "./checkpoints/tinyy"], tmp_path, offline(tmp_path))
    assert result.returncode == 3
    assert result.stderr.startswith("error: No checkpoint at ./checkpoints/tinyy: no such folder")
    assert "Hugging Face cache" not in result.stderr


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_make_demo_offline_names_the_commands_to_type(tmp_path):
    """make demo's own hint, with the demo failing as it does offline (exit 3)."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "altclip").write_text("#!/bin/sh\nexit 3\n")
    (tmp_path / ".venv" / "bin" / "altclip").chmod(0o755)
    (tmp_path / ".venv" / ".installed").touch()  # newer than the Makefile: no set-up
    first = subprocess.run(["make", "-s", "demo"], cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode != 0
    assert (
        "  .venv/bin/altclip random-checkpoint ./checkpoints/tiny && ALTCLIP_MODEL=./checkpoints/tiny make demo"
        in first.stdout
    )
    (tmp_path / "checkpoints" / "tiny").mkdir(parents=True)
    again = subprocess.run(["make", "-s", "demo"], cwd=tmp_path, capture_output=True, text=True)
    assert "random-checkpoint" not in again.stdout and "  ALTCLIP_MODEL=./checkpoints/tiny make demo" in again.stdout


@pytest.mark.parametrize("shape", ["tiny", "clip-tiny"])
def test_random_checkpoint_prints_one_line(tmp_path, shape):
    """No blank lines from the tokenizer trainer's progress bar."""
    result = altclip(["random-checkpoint", str(tmp_path / "c"), "--shape", shape], tmp_path, offline(tmp_path))
    assert (
        result.returncode == 0
        and result.stdout + result.stderr
        == f"Wrote a random {shape} "
        + ("AltCLIP checkpoint" if shape == "tiny" else "CLIP teacher checkpoint")
        + f" to {tmp_path / 'c'}\n"
    )


def test_ctrl_c_during_index_says_what_was_kept(checkpoint, tmp_path, monkeypatch):
    """Interrupted after its first batch (3 images) was committed: the message says so, and a re-run resumes."""
    from altclip.inference import Embedder

    folder = tmp_path / "photos"
    make_images(folder, 7)
    calls = []
    original = Embedder.embed_prepared

    def interrupted(self, arrays):
        calls.append(len(arrays))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, arrays)

    monkeypatch.setattr(Embedder, "embed_prepared", interrupted)
    env = {"ALTCLIP_MODEL": str(checkpoint)}
    args = ["index", str(folder), "--index", str(tmp_path / "index"), "--batch-size", "3", "--workers", "1"]
    result = CliRunner().invoke(build(), args, env=env)
    assert result.exit_code == 130
    assert "Interrupted: the index at" in result.stderr and "keeps the 3 images embedded so far" in result.stderr
    assert "run the same command again to continue" in result.stderr
    monkeypatch.setattr(Embedder, "embed_prepared", original)
    again = CliRunner().invoke(build(), [*args, "--json"], env=env)
    assert again.exit_code == 0 and '"embedded": 4' in again.stdout


def test_ctrl_c_in_any_command_says_so(checkpoint, tmp_path, monkeypatch):
    """Ctrl-C in a command without a message of its own (here `altclip embed`) exits 130 with a message, as the
    README's exit-code table says every non-zero exit does (Typer alone exits 130 without a word)."""
    from altclip.inference import Embedder

    make_images(tmp_path / "photos", 3)

    def interrupted(self, arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(Embedder, "embed_prepared", interrupted)
    args = ["embed", str(tmp_path / "photos"), "--output", str(tmp_path / "emb")]
    result = CliRunner().invoke(build(), args, env={"ALTCLIP_MODEL": str(checkpoint)})
    assert result.exit_code == 130
    assert result.stderr.strip().endswith("Interrupted")


def test_an_evaluation_of_a_folder_whose_name_is_not_utf8_is_written(checkpoint, tmp_path):
    """A dataset named by bytes that are not UTF-8 (a folder's name, or --name) once ended an evaluation with
    'Unexpected UnicodeEncodeError' (exit 1) after its work was done, leaving an empty result file; its name is now
    written with U+FFFD for those bytes, and the file appears whole (no temporary file left beside it)."""
    classes = ROOT / "examples" / "data" / "classes"
    out = tmp_path / "out"
    args = ["eval", "zeroshot", str(classes), "--name", "caf\udce9", "-o", str(out), "--json"]
    result = CliRunner().invoke(build(), args, env={"ALTCLIP_MODEL": str(checkpoint)})
    assert result.exit_code == 0, result.output
    (written,) = out.iterdir()
    assert json.loads(written.read_text(encoding="utf-8"))["dataset"] == "caf\ufffd"


def test_training_without_matplotlib_says_it_skipped_the_plot(tmp_path, monkeypatch):
    import altclip

    altclip.write_random_checkpoint("clip-tiny", tmp_path / "teacher")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    args = ["train", "distill", "--teacher", str(tmp_path / "teacher"), "--student", "tiny", "--corpus",
            str(ROOT / "examples" / "data" / "en-zh.tsv"), "-o", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(build(), args)
    assert result.exit_code == 0, result.output
    assert "metrics.png not drawn: matplotlib is not installed (pip install 'altclip[train]')" in result.stderr
    assert (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "metrics.png").exists()
