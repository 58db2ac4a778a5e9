"""Bulk embedding on a real local Ray cluster (two CPUs, the tiny checkpoint): the files equal, vector for vector,
those that single-process ``altclip embed`` writes, failures are recorded the same way, and re-runs skip finished
shards."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from altclip.cli import build
from test_index import make_images

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

# Each test starts or joins a local Ray cluster (seconds of start-up, processes of its own): end to end.
pytestmark = pytest.mark.slow

CAPTIONS = "一只猫\na red square\n\nкошка\nune tasse de café\n宇宙の銀河\nzwei Hunde im Schnee\nun perro\n"


STALE = "127.0.0.1:1"  # the address a cluster that is gone left in ray_current_cluster


@pytest.fixture(scope="module")
def cluster():
    """A cluster of its own (address="local"), whatever else runs or ran on the machine. Its temporary folder holds
    the ray_current_cluster file a cluster that is gone leaves behind: without an address, ray.init would follow
    it (and refuse num_cpus, "When connecting to an existing cluster...")."""
    with tempfile.TemporaryDirectory(prefix="ray-") as temp, pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text(STALE)
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
        yield Path(temp)
        ray.shutdown()


def test_the_cluster_is_new_despite_a_stale_cluster_file(cluster):
    assert (cluster / "ray" / "ray_current_cluster").exists()
    assert ray.get_runtime_context().gcs_address != STALE and ray.cluster_resources()["CPU"] == 2


@pytest.fixture
def run(checkpoint):
    runner = CliRunner()

    def invoke(*args):
        argv = [str(a) for a in args]
        result = runner.invoke(build(), argv, env={"ALTCLIP_MODEL": str(checkpoint)}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke


def files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_files(got: Path, expected: Path) -> None:
    got_files, expected_files = files(got), files(expected)
    assert got_files.keys() == expected_files.keys()
    for name, path in got_files.items():
        if name.endswith(".npy"):
            a, b = np.load(path), np.load(expected_files[name])
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, name
            assert np.abs(a - b).max(initial=0) < 1e-6, name
        else:
            assert pq.read_table(path).equals(pq.read_table(expected_files[name])), name


def test_ray_writes_what_embed_writes(cluster, run, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 30)
    (folder / "img_0007.jpg").write_bytes(b"not a JPEG")  # one corrupt image, in the middle of a shard
    captions = tmp_path / "captions.txt"
    captions.write_text(CAPTIONS, encoding="utf-8")

    single = tmp_path / "single"
    failed = []
    for i in range(3):
        failed += run("embed", folder, "--texts", captions, "-o", single, "--shard", f"{i}/3", "--json")["failed"]
    assert [f["path"] for f in failed] == [str(folder / "img_0007.jpg")]

    # Another batch size than the single-process run: batches of other images give the same vectors.
    out = tmp_path / "ray"
    args = ("embed", folder, "--texts", captions, "-o", out, "--ray", "local", "--shards", "3", "--batch-size", "4")
    result = run(*args, "--json")
    assert result["written"] == [0, 1, 2] and result["skipped"] == []
    assert (result["images"], result["texts"]) == (29, 7)
    assert result["failed"] == failed
    assert_same_files(out, single)

    # A re-run redoes nothing; after a crash that lost shard 1's images, only those are redone.
    stamps = {name: path.stat().st_mtime_ns for name, path in files(out).items()}
    again = run(*args, "--json")
    assert (again["written"], again["skipped"], again["images"]) == ([], [0, 1, 2], 0)
    (out / "img_emb" / "img_emb_1.npy").unlink()
    again = run(*args, "--json")
    assert (again["written"], again["skipped"], again["images"], again["texts"]) == ([1], [0, 2], 10, 0)
    assert_same_files(out, single)
    changed = {name for name, path in files(out).items() if path.stat().st_mtime_ns != stamps[name]}
    assert changed == {"img_emb/img_emb_1.npy", "metadata/metadata_1.parquet"}

    # An image removed from the first shard changes its part (29 images: 9, 10 and 10, the others' parts as they
    # were): that shard is redone, from its new inputs, and no other.
    (folder / "img_0001.jpg").unlink()
    again = run(*args, "--json")
    assert (again["written"], again["skipped"], again["images"], again["texts"]) == ([0], [1, 2], 8, 0)
    listed = [p for i in range(3) for p in pq.read_table(out / "metadata" / f"metadata_{i}.parquet")["image_path"]]
    assert sorted(map(str, listed)) == sorted(str(p) for p in folder.iterdir() if p.name != "img_0007.jpg")


def test_ray_reads_webdataset_tars(cluster, run, checkpoint, embedder, tmp_path):
    from altclip.index.ray_embed import embed_on_ray

    paths = make_images(tmp_path / "photos", 12)
    (tmp_path / "photos" / "img_0003.jpg").write_bytes(b"truncated")
    tars = [tmp_path / "shards" / f"{i:05d}.tar" for i in range(3)]
    tars[0].parent.mkdir()
    for tar, part in zip(tars, (paths[:7], paths[7:], [])):
        with tarfile.open(tar, "w") as archive:
            for path in part:
                archive.add(path, arcname=f"{path.stem}.{path.suffix[1:]}")
                caption = f"caption of {path.stem}".encode()
                info = tarfile.TarInfo(f"{path.stem}.txt")
                info.size = len(caption)
                archive.addfile(info, io.BytesIO(caption))
    broken = tmp_path / "shards" / "00003.tar"
    broken.write_bytes(b"not a tar at all" * 100)

    result = embed_on_ray(str(checkpoint), [*tars, broken], output=tmp_path / "out", batch_size=4)
    assert result["shards"] == 4 and result["written"] == [0, 1, 2] and result["images"] == 11
    assert [f["path"] for f in result["failed"]] == [f"{tars[0]}/img_0003.jpg", str(broken)]
    assert "unreadable tar" in result["failed"][1]["reason"]
    assert not (tmp_path / "out" / "img_emb" / "img_emb_3.npy").exists()  # tried again by the next run

    expected, kept, _ = embedder.embed_readable([str(p) for p in paths])
    names = [f"{tars[0] if i < 7 else tars[1]}/{paths[i].name}" for i in kept]
    vectors = np.concatenate([np.load(tmp_path / "out" / "img_emb" / f"img_emb_{i}.npy") for i in range(3)])
    metadata = [
        p
        for i in range(3)
        for p in pq.read_table(tmp_path / "out" / "metadata" / f"metadata_{i}.parquet")["image_path"].to_pylist()
    ]
    assert metadata == names and np.abs(vectors - expected).max() < 1e-6
    assert np.load(tmp_path / "out" / "img_emb" / "img_emb_2.npy").shape == (0, 16)  # a tar without images

    # One process reads the same inputs into the same files (and skips the shards --ray wrote).
    single = run("embed", *tars, broken, "-o", tmp_path / "single", "--json")
    assert single["written"] == [0, 1, 2] and single["failed"] == result["failed"]
    assert_same_files(tmp_path / "single", tmp_path / "out")
    assert run("embed", *tars, broken, "-o", tmp_path / "out", "--json")["skipped"] == [0, 1, 2]


def test_ray_leaves_a_cpu_for_decoding(cluster, checkpoint, tmp_path):
    from altclip.index.ray_embed import embed_on_ray

    make_images(tmp_path / "photos", 2)
    with pytest.raises(ValueError, match="leave none of the cluster's 2 CPUs for decoding"):
        embed_on_ray(str(checkpoint), [tmp_path / "photos"], output=tmp_path / "out", actors=2)


def test_ray_usage_errors(checkpoint, tmp_path):
    runner = CliRunner()
    env = {"ALTCLIP_MODEL": str(checkpoint)}
    result = runner.invoke(build(), ["embed", str(tmp_path), "--shards", "4"], env=env)
    assert result.exit_code == 2 and "--shards goes with --ray" in result.stderr
    result = runner.invoke(build(), ["embed", str(tmp_path), "--ray", "local", "--shard", "1/2"], env=env)
    assert result.exit_code == 2 and "all shards run on the cluster" in result.stderr
