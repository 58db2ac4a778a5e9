"""``altclip eval`` with CLIP_benchmark as it comes: its ``build`` command tabulates our result files, and our
evaluation reads the datasets CLIP_benchmark's own WebDataset writer makes (classification and retrieval), giving
the metrics of the same images in our own formats. CLIP_benchmark runs in child processes
(``clip_benchmark_code.py`` says why)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altclip.cli import build

pytest.importorskip("clip_benchmark")
pytest.importorskip("webdataset")

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"
CLASSES = EXAMPLES / "data" / "classes"
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}."]  # CLIP_benchmark's placeholder


def clip_benchmark(code: str, cwd: Path) -> str:
    """Runs ``code`` in a child process with CLIP_benchmark importable; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    script = "import clip_benchmark_code\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def altclip(checkpoint):
    def invoke(*args, model: str | Path = checkpoint):
        result = CliRunner().invoke(build(), [str(a) for a in args], env={"ALTCLIP_MODEL": str(model)})
        return result

    return invoke


def test_clip_benchmark_build_reads_our_results(altclip, checkpoint, tmp_path, monkeypatch):
    """Its table has our metrics under CLIP_benchmark's columns; no absolute path of ours in a name or a field."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint, tmp_path / "runs" / "final")
    out = tmp_path / "results"
    zeroshot = altclip("eval", "zeroshot", CLASSES, "--templates", "en", "-o", out, "--json", model="runs/final")
    assert zeroshot.exit_code == 0, zeroshot.output
    retrieval = altclip("eval", "retrieval", EXAMPLES / "data" / "pairs.csv", "--language", "zh", "-o", out, "--json")
    assert retrieval.exit_code == 0, retrieval.output

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "classes_runs_final_AltCLIP_en_zeroshot_classification.json",  # {dataset}_{pretrained}_{model}_...
        f"pairs_{checkpoint.name}_AltCLIP_zh_zeroshot_retrieval.json",  # a folder outside this one: its name
    ]
    for path in out.iterdir():
        assert str(tmp_path) not in path.read_text() and str(checkpoint.parent) not in path.read_text()

    subprocess_out = clip_benchmark(f"import sys; from clip_benchmark.cli import main; sys.argv = ['clip_benchmark', 'build', {str(out)!r}, '--output', 'benchmark.csv']; main()", tmp_path)  # fmt: skip
    assert subprocess_out == ""
    rows = {row["task"]: row for row in csv.DictReader(open(tmp_path / "benchmark.csv", encoding="utf-8"))}
    ours = {"zeroshot_classification": json.loads(zeroshot.stdout), "zeroshot_retrieval": json.loads(retrieval.stdout)}
    assert rows.keys() == ours.keys()
    for task, row in rows.items():
        assert row["model_fullname"] == f"AltCLIP {ours[task]['pretrained']}"
        assert (row["dataset"], row["language"]) == (ours[task]["dataset"], ours[task]["language"])
        for metric, value in ours[task]["metrics"].items():
            assert float(row[metric]) == pytest.approx(value, nan_ok=True), metric
    assert rows["zeroshot_classification"]["model_fullname"] == "AltCLIP runs/final"


def test_the_console_script_runs_build(tmp_path):
    """The same, through ``clip_benchmark build`` as its console script parses it."""
    record = {"dataset": "d", "model": "AltCLIP", "pretrained": "p", "task": "zeroshot_classification",
              "metrics": {"acc1": 0.5}, "language": "en"}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(record))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(TESTS / "clip_benchmark_code.py"), "build", "r.json", "--output", "b.csv"]
    subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert next(csv.DictReader(open(tmp_path / "b.csv")))["model_fullname"] == "AltCLIP p"


def write_classification_wds(folder: Path, max_count: int = 4) -> list[int]:
    """examples/data/classes as CLIP_benchmark's writer converts an image folder (shards of 4 images); the labels
    CLIP_benchmark's own reader then reads back, in order."""
    classes = sorted(p.name for p in CLASSES.iterdir())
    samples = [(str(image), label) for label, c in enumerate(classes) for image in sorted((CLASSES / c).iterdir())]
    out = clip_benchmark(
        f"""
        import json
        from clip_benchmark.datasets.builder import build_wds_dataset
        from clip_benchmark.webdataset_builder import convert_dataset, path_to_bytes

        class Dataset(list):
            classes = {classes!r}
            templates = {TEMPLATES!r}

        convert_dataset(Dataset({samples!r}), "test", {str(folder)!r}, transform=path_to_bytes,
                        max_count={max_count}, verbose=False)
        read = build_wds_dataset("examples", transform=None, data_dir={str(folder)!r})
        assert read.classes == Dataset.classes and read.templates == Dataset.templates
        print(json.dumps([int(label) for _, label in read]))
        """,
        folder.parent,
    )
    return json.loads(out.splitlines()[-1])


def test_a_clip_benchmark_webdataset_classification_folder(altclip, tmp_path):
    folder = tmp_path / "wds"
    labels = write_classification_wds(folder)
    assert sorted((folder / "test").glob("*.tar")) and len(labels) == 6  # two shards

    from_wds = altclip("eval", "zeroshot", folder, "-o", tmp_path / "out", "--json")
    assert from_wds.exit_code == 0, from_wds.output
    result = json.loads(from_wds.stdout)
    # The dataset's own templates by default, as CLIP_benchmark uses them.
    assert (result["samples"], result["classes"], result["templates"]) == (len(labels), 6, len(TEMPLATES))
    # The same images as an image folder, with the same templates: the same numbers.
    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    from_folder = json.loads(
        altclip("eval", "zeroshot", CLASSES, "--templates", templates, "-o", tmp_path / "out", "--json").stdout
    )
    assert result["metrics"] == pytest.approx(from_folder["metrics"], nan_ok=True)

    # --templates overrides the dataset's; the split is an option.
    other = json.loads(
        altclip("eval", "zeroshot", folder, "--templates", "none", "-o", tmp_path / "o", "--json").stdout
    )
    assert other["templates"] == 1
    missing = altclip("eval", "zeroshot", folder, "--split", "train", "-o", tmp_path / "o")
    assert missing.exit_code == 2 and "has no split 'train' (--split): its splits are test" in missing.stderr


def test_a_clip_benchmark_webdataset_retrieval_folder(altclip, tmp_path):
    """Each image with several captions, written as CLIP_benchmark writes them (one .txt, a caption per line)."""
    rows = list(csv.DictReader(open(EXAMPLES / "data" / "pairs.csv", encoding="utf-8")))
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(str((EXAMPLES / "data" / row["image"]).resolve()), []).append(row["caption"])
    folder = tmp_path / "flickr-wds"
    clip_benchmark(
        f"""
        from clip_benchmark.datasets.builder import build_wds_dataset
        from clip_benchmark.webdataset_builder import convert_retrieval_dataset, path_to_bytes

        convert_retrieval_dataset({list(captions.items())!r}, "test", {str(folder)!r}, transform=path_to_bytes,
                                  max_count=3, verbose=False)
        read = build_wds_dataset("flickr", transform=None, data_dir={str(folder)!r})
        assert sorted(c for _, cs in read for c in cs) == {sorted(c for cs in captions.values() for c in cs)!r}
        """,
        tmp_path,
    )
    from_wds = altclip("eval", "retrieval", folder, "-o", tmp_path / "out", "--json")
    assert from_wds.exit_code == 0, from_wds.output
    from_csv = altclip("eval", "retrieval", EXAMPLES / "data" / "pairs.csv", "-o", tmp_path / "out", "--json")
    wds, table = json.loads(from_wds.stdout), json.loads(from_csv.stdout)
    assert (wds["samples"], wds["images"]) == (table["samples"], table["images"]) == (len(rows), len(captions))
    assert wds["metrics"] == pytest.approx(table["metrics"])
    assert wds["dataset"] == "flickr-wds"


def test_unusable_datasets_exit_with_the_readme_codes(altclip, tmp_path):
    # A WebDataset classification folder whose samples cannot be used: 4, never a crash.
    folder = tmp_path / "broken"
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("cat\ndog\n")
    import tarfile

    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for name, data in (("s0.jpg", b"not a JPEG"), ("s0.cls", b"0"), ("s1.jpg", b"x"), ("s1.cls", b"7")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    result = altclip("eval", "zeroshot", folder, "-o", tmp_path / "out")
    assert result.exit_code == 4, result.output
    assert "none of its 1 images could be used" in result.stderr and "1 unreadable image" in result.stderr
    assert "1 no class label" in result.stderr
    # A folder that is no dataset, for retrieval: 2, saying what it takes (it exists).
    result = altclip("eval", "retrieval", CLASSES, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "without WebDataset shards (test/*.tar)" in result.stderr
    # --classnames nested absurdly deep: 2 (bad usage), like any other file that is not a JSON object.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 50_000)
    result = altclip("eval", "zeroshot", CLASSES, "--classnames", deep, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "nested more than 64 levels" in result.stderr
