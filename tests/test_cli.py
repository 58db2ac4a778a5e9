"""The `altclip` command line, end to end on a tiny random checkpoint."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import altclip
from altclip.cli import build
from test_index import make_images

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


@pytest.fixture
def run(checkpoint):
    runner = CliRunner()

    def invoke(*args: str, model: bool = True):
        env = {"ALTCLIP_MODEL": str(checkpoint)} if model else {}
        return runner.invoke(build(), [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


def test_classify_json(run, embedder):
    result = run(
        "classify",
        PHOTOS / "cat.jpg",
        PHOTOS / "coffee.jpg",
        "--labels",
        "猫",
        "dog",
        "café",
        "--top-k",
        "2",
        "--templates",
        "none",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["image"] for d in data] == [str(PHOTOS / "cat.jpg"), str(PHOTOS / "coffee.jpg")]
    assert all(len(d["labels"]) == 2 for d in data)
    # The scores are the model's: softmax of scaled cosine similarities of the bare labels.
    image = embedder.embed_images([str(PHOTOS / "cat.jpg")])[0]
    texts = embedder.embed_texts(["猫", "dog", "café"])
    logits = (texts @ image) * float(np.exp(embedder.model.logit_scale.item()))
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    best = int(np.argmax(probs))
    assert data[0]["labels"][0]["label"] == ["猫", "dog", "café"][best]
    assert data[0]["labels"][0]["score"] == pytest.approx(float(probs[best]), abs=1e-5)


def test_similarity_table_and_json(run):
    args = ["similarity", "--images", PHOTOS / "cat.jpg", PHOTOS / "rocket-launch.jpg", "--texts", "一只猫", "a rocket"]
    table = run(*args)
    assert table.exit_code == 0 and "一只猫" in table.stdout and "rocket-launch.jpg" in table.stdout
    data = json.loads(run(*args, "--json").stdout)
    probs = np.array(data["probs"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array(data["cosine"]).max() <= 1 + 1e-6


def test_index_search_and_reindex(run, tmp_path):
    folder = tmp_path / "photos"
    paths = make_images(folder, 6)
    index = tmp_path / "index"
    first = run("index", folder, "--index", index, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["embedded"] == 6
    by_text = json.loads(run("search", "一只猫", "--index", index, "-k", "3", "--json").stdout)
    assert len(by_text) == 3
    by_image = json.loads(run("search", "--image", paths[4], "--index", index, "-k", "1", "--json", model=False).stdout)
    assert by_image[0]["path"] == str(paths[4])  # the index remembers its model: no --model needed
    paths[0].unlink()
    again = json.loads(run("index", folder, "--index", index, "--json").stdout)
    assert (again["deleted"], again["embedded"], again["images"]) == (1, 0, 5)


def test_search_tables_escape_control_characters_in_file_names(run, tmp_path):
    """An ESC sequence or a newline in a file name reaches the terminal escaped, never raw; --json stays exact."""
    folder = tmp_path / "photos"
    paths = make_images(folder, 3)
    hostile = [folder / "clear\x1b[2J\x1b[31mred.jpg", folder / "two\nlines.jpg", folder / "right\u202egpj.exe.jpg"]
    for path, new in zip(paths, hostile):
        path.rename(new)
    index = tmp_path / "index"
    assert run("index", folder, "--index", index).exit_code == 0
    table = run("search", "cat", "--index", index, "-k", "3")
    assert table.exit_code == 0
    unwrapped = table.stdout.replace("\n", "")  # long names wrap at 80 columns
    for raw, shown in (("\x1b", "clear\\x1b[2J\\x1b[31mred.jpg"), ("\u202e", "right\\u202egpj.exe.jpg")):
        assert raw not in table.stdout and shown in unwrapped
    assert "two\\nlines.jpg" in unwrapped and "two\nlines" not in table.stdout
    exact = json.loads(run("search", "cat", "--index", index, "-k", "3", "--json").stdout)
    assert sorted(hit["path"] for hit in exact) == sorted(map(str, hostile))


def test_embed_writes_clip_retrieval_layout(run, tmp_path, embedder):
    import pyarrow.parquet as pq

    folder = tmp_path / "photos"
    paths = make_images(folder, 7)
    (folder / "broken.jpg").write_bytes(b"nope")
    captions = tmp_path / "captions.txt"
    captions.write_text("一只猫\na red square\n\nкошка\n", encoding="utf-8")
    out = tmp_path / "emb"
    for shard in ("0/2", "1/2"):
        result = run("embed", folder, "--texts", captions, "--output", out, "--shard", shard, "--json")
        assert result.exit_code == 0, result.output
    image_paths = [
        p for i in (0, 1) for p in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()
    ]
    vectors = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy") for i in (0, 1)])
    assert sorted(image_paths) == sorted(map(str, paths)) and vectors.shape == (7, 16) and vectors.dtype == np.float32
    assert np.abs(vectors - embedder.embed_images(image_paths)).max() < 1e-5
    texts = [
        t
        for i in (0, 1)
        for t in pq.read_table(out / "text_metadata" / f"text_metadata_{i}.parquet")["caption"].to_pylist()
    ]
    text_vectors = np.concatenate([np.load(out / "text_emb" / f"text_emb_{i}.npy") for i in (0, 1)])
    assert texts == ["一只猫", "a red square", "кошка"]
    assert np.abs(text_vectors - embedder.embed_texts(texts)).max() < 1e-5
    skipped = json.loads(run("embed", folder, "--texts", captions, "--output", out, "--shard", "1/2", "--json").stdout)
    assert skipped["skipped"] is True  # idempotent: a finished shard is not redone
    failed = json.loads(run("embed", folder, "--output", tmp_path / "e2", "--json").stdout)["failed"]
    assert [f["path"] for f in failed] == [str(folder / "broken.jpg")]


def test_embed_reads_webdataset_tars(run, tmp_path, embedder):
    """.tar inputs as --ray reads them: one output shard per tar, its image members named TAR/MEMBER."""
    import pyarrow.parquet as pq

    paths = make_images(tmp_path / "photos", 5)
    tars = [tmp_path / "a.tar", tmp_path / "b.tar"]
    for tar, part in zip(tars, (paths[:3], paths[3:])):
        with tarfile.open(tar, "w") as archive:
            for path in part:
                archive.add(path, arcname=f"s/{path.name}")
    broken = tmp_path / "c.tar"
    broken.write_bytes(b"not a tar" * 100)
    result = json.loads(run("embed", *tars, broken, "-o", tmp_path / "emb", "--json").stdout)
    assert (result["shards"], result["written"], result["images"]) == (3, [0, 1], 5)
    assert [(f["path"], f["reason"].split(":")[0]) for f in result["failed"]] == [(str(broken), "unreadable tar")]
    assert not (tmp_path / "emb" / "img_emb" / "img_emb_2.npy").exists()  # tried again by the next run
    for i, (tar, part) in enumerate(zip(tars, (paths[:3], paths[3:]))):
        names = pq.read_table(tmp_path / "emb" / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()
        assert names == [f"{tar}/s/{p.name}" for p in part]
        vectors = np.load(tmp_path / "emb" / "img_emb" / f"img_emb_{i}.npy")
        assert np.abs(vectors - embedder.embed_images([str(p) for p in part])).max() < 1e-5
    one = json.loads(run("embed", *tars, broken, "-o", tmp_path / "one", "--shard", "1/3", "--json").stdout)
    assert (one["shard"], one["images"]) == ("1/3", 2)
    wrong = run("embed", *tars, "-o", tmp_path / "one", "--shard", "0/1")
    assert wrong.exit_code == 2 and "one output shard per tar (2)" in wrong.stderr
    mixed = run("embed", tars[0], paths[0], "-o", tmp_path / "one")
    assert mixed.exit_code == 2 and "not both" in mixed.stderr


def test_embed_redoes_a_shard_whose_inputs_changed(run, tmp_path):
    """A file added before the others shifts every shard's part: a re-run must not skip the shards that exist (their
    files would hold the old parts: one image twice, another never)."""
    import pyarrow.parquet as pq

    folder = tmp_path / "photos"
    make_images(folder, 6)
    out = tmp_path / "emb"
    for shard in ("0/2", "1/2"):
        assert run("embed", folder, "--output", out, "--shard", shard, "--json").exit_code == 0
    shutil.copy(next(folder.iterdir()), folder / "0000-first.jpg")  # sorts before the others
    for shard in ("0/2", "1/2"):
        result = json.loads(run("embed", folder, "--output", out, "--shard", shard, "--json").stdout)
        assert result["skipped"] is False
    listed = [
        p for i in (0, 1) for p in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()
    ]
    assert sorted(listed) == sorted(str(p) for p in folder.iterdir())  # each image once
    assert json.loads(run("embed", folder, "--output", out, "--shard", "0/2", "--json").stdout)["skipped"] is True


def test_random_checkpoint_and_models(run, tmp_path):
    result = run("random-checkpoint", tmp_path / "ckpt", "--seed", "3")
    assert result.exit_code == 0
    model, processor = altclip.load(tmp_path / "ckpt")
    assert model.num_parameters() > 0 and processor(text="a cat")["input_ids"][0] == 0
    listed = json.loads(run("models", "--json").stdout)
    assert {"BAAI/AltCLIP", "BAAI/AltCLIP-m9", "BAAI/AltCLIP-m18"} <= {m["name"] for m in listed}


def test_exit_codes_and_messages(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("index", empty, "--index", tmp_path / "i")
    assert result.exit_code == 0 and "No image files under" in result.stderr
    result = run("search", "   ", "--index", tmp_path / "i")
    assert result.exit_code == 2 and "The query is empty" in result.stderr
    result = run("search", "cat", "--index", tmp_path / "nowhere")
    assert result.exit_code == 5 and "No index at" in result.stderr
    result = run("classify", tmp_path / "missing.jpg", "--labels", "cat")
    assert result.exit_code == 4 and "no such file" in result.stderr
    result = run("classify", PHOTOS / "cat.jpg", "--labels", " ")
    assert result.exit_code == 2 and "non-empty label" in result.stderr
    result = run("index", tmp_path / "nope", "--index", tmp_path / "i")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = run("embed", "--shard", "3/2")
    assert result.exit_code == 2 and "need 0 <= i < n" in result.stderr


def test_model_mismatch_exit_code(run, tmp_path, checkpoint):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    assert run("index", folder, "--index", tmp_path / "i").exit_code == 0
    other = altclip.write_random_checkpoint("tiny", tmp_path / "other", seed=9)
    result = run("index", folder, "--index", tmp_path / "i", "--model", other)
    assert result.exit_code == 5 and "cannot be mixed" in result.stderr


def test_demo_runs(run, tmp_path):
    result = run("demo", PHOTOS)
    assert result.exit_code == 0, result.output
    assert "一只猫" in result.stdout and "Zero-shot classification" in result.stdout
    assert "random weights" in result.stderr


def test_repeated_options_and_the_deprecated_several_values_form(run, tmp_path):
    """One value per option is the syntax; several values after one option still work, with a warning."""
    cat, rocket = PHOTOS / "cat.jpg", PHOTOS / "rocket-launch.jpg"
    explicit = run("classify", cat, rocket, "-l", "猫", "-l", "a rocket", "--templates", "none", "--json")
    assert explicit.exit_code == 0 and "deprecated" not in explicit.stderr
    old = run("classify", cat, rocket, "--labels", "猫", "a rocket", "--templates", "none", "--json")
    assert old.exit_code == 0 and "several values after one --labels are deprecated" in old.stderr
    assert json.loads(old.stdout) == json.loads(explicit.stdout)
    texts = run("similarity", "-i", cat, "-t", "-1 degrees", "-t", "x", "--json")
    assert json.loads(texts.stdout)["texts"] == ["-1 degrees", "x"]
    # Other options take one value and words after them stay where they are: a caption file, then a folder.
    captions = tmp_path / "captions.txt"
    captions.write_text("一只猫\na dog\n", encoding="utf-8")
    make_images(tmp_path / "photos", 2)
    result = run("embed", "--texts", captions, tmp_path / "photos", "--output", tmp_path / "emb", "--json")
    assert result.exit_code == 0, result.output
    assert (json.loads(result.stdout)["images"], json.loads(result.stdout)["texts"]) == (2, 2)


@pytest.mark.parametrize("stage", ["distill", "contrastive"])
def test_training_options_set_their_config_fields(stage, monkeypatch, tmp_path):
    """Each training option, declared once for both stages, sets the TrainConfig field of its name."""
    import altclip.train.contrastive
    import altclip.train.distill
    from altclip.train.config import TrainConfig

    seen = {}

    def capture(*args, log, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return {}

    monkeypatch.setattr(getattr(altclip.train, stage), stage, capture)
    given = dict(output=str(tmp_path / "run"), steps=7, batch_size=3, grad_accum=2, lr=0.5, weight_decay=0.25,
                 warmup_steps=4, save_every=5, log_every=6, seed=9, dropout=0.125, workers=0, device="cpu")  # fmt: skip
    args = [f"--{name.replace('_', '-')}={value}" for name, value in given.items()]
    args += ["--bf16", "--gradient-checkpointing", "--fsdp", "--no-resume"]
    if stage == "distill":
        args += ["--teacher", "t", "--student", "s", "--corpus", "c.tsv", "--cosine-weight", "0.5"]
        env = {}
    else:
        args += ["--data", "d.csv", "--train-vision"]
        env = {"ALTCLIP_MODEL": "from-the-environment"}
    result = CliRunner().invoke(build(), ["train", stage, *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = next(a for a in seen["args"] if isinstance(a, TrainConfig))
    expected = TrainConfig(**given, bf16=True, gradient_checkpointing=True, fsdp=True, resume=False)
    assert config == expected
    if stage == "distill":
        assert seen["args"][:3] == ("t", "s", ["c.tsv"]) and seen["kwargs"]["cosine_weight"] == 0.5
    else:  # ALTCLIP_MODEL names the model to train, as for every other command
        assert seen["args"][:2] == ("from-the-environment", ["d.csv"]) and seen["kwargs"]["train_vision"] is True
    # The stages' own defaults.
    shown = " ".join(CliRunner().invoke(build(), ["train", stage, "--help"]).stdout.split())
    assert f"micro-step [default: {64 if stage == 'contrastive' else 32};" in shown


def test_quantize_and_export_take_the_model_from_altclip_model(run, checkpoint, tmp_path, monkeypatch):
    result = run("quantize", "--output", tmp_path / "int8", "--json")
    assert result.exit_code == 0, result.output
    assert altclip.AltCLIPModel.from_pretrained(tmp_path / "int8").config.quantization_config is not None
    seen = []
    monkeypatch.setattr("altclip.export.export_onnx", lambda model, *a, **k: seen.append(model) or {})
    run("export", "onnx", "--output", tmp_path / "onnx", "--json")
    assert seen == [str(checkpoint)]
    assert "ALTCLIP_MODEL" in run("export", "onnx", "--help").stdout


def test_search_uses_the_index_model_from_any_folder(checkpoint, tmp_path, monkeypatch):
    """ALTCLIP_MODEL as a relative path (as the README sets it) indexes; searching from elsewhere still works."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copytree(checkpoint, tmp_path / "a" / "ckpt")
    make_images(tmp_path / "photos", 3)
    env = {"ALTCLIP_MODEL": "./ckpt"}
    monkeypatch.chdir(tmp_path / "a")
    runner = CliRunner()
    assert (
        runner.invoke(build(), ["index", str(tmp_path / "photos"), "--index", str(tmp_path / "i")], env=env).exit_code
        == 0
    )
    monkeypatch.chdir(tmp_path / "b")
    result = runner.invoke(build(), ["search", "cat", "--index", str(tmp_path / "i"), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3
    shown = " ".join(runner.invoke(build(), ["search", "--help"]).stdout.split())
    assert "[default: the model the index was built with]" in shown and "BAAI/AltCLIP]" not in shown
