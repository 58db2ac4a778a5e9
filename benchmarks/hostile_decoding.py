"""What files whose headers are expensive to open cost the service, and what an ordinary request waits meanwhile.

    python benchmarks/hostile_decoding.py --label after [--json benchmarks/results/hostile_decoding_cpu.json]
    PYTHONPATH=/path/to/older/src python benchmarks/hostile_decoding.py --label before ...

The service runs (default settings, a tiny random checkpoint) in a process of its own, in a thread as the tests run
it. Measured in that process:

- ``idle``: an ordinary request (one 300x300 PNG to ``/v1/embed/image``, multipart) on the idle server, 5 times;
- ``attack``: 8 crafted TIFFs and 8 crafted JPEGs of 19 MB (issue 21's: 2.5 million strip offsets under a
  6000x6000 header; 5 million empty comment segments), uploaded at once, each its own request; while they are in
  flight, the ordinary request again and again: its latencies, and the hostile requests' answers and time;
- memory: the peak resident memory of the server's process and its children (decoding processes), sampled every
  50 ms, above what it was before the attack.

Then the same files on the command line: ``altclip index`` and ``altclip embed`` of a folder holding the four crafted
files (TIFF, JPEG, PNG, GIF: 19 MB each, under the 512 MiB a file may have) and one photo, each in a process of its
own: its time, its peak resident memory (the largest of the process and its children), and what it made of them.

Results are merged into the JSON file under ``--label`` (one label per version of the code measured).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in family:
                family.add(child)
                frontier.append(child)
    total = 0
    for member in family:
        try:
            with open(f"/proc/{member}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))
            time.sleep(0.05)


def scenario(checkpoint: str) -> dict:
    import httpx

    import altclip
    from altclip.inference import Embedder
    from altclip.server import ServerSettings
    from hostile_images import costly_headers
    from serving import running_server

    model, processor = altclip.load(checkpoint)
    embedder = Embedder(model, processor, "tiny")
    crafted = costly_headers()
    ordinary = io.BytesIO()
    Image.new("RGB", (300, 300), (120, 60, 30)).save(ordinary, "PNG")
    ordinary = ordinary.getvalue()
    settings = ServerSettings()
    with running_server(settings, embedder) as url:

        async def one(client, data: bytes, name: str) -> tuple[int, float]:
            start = time.perf_counter()
            r = await client.post("/v1/embed/image", files=[("images", (name, data))])
            return r.status_code, time.perf_counter() - start

        async def run() -> dict:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                await one(client, ordinary, "warm.png")
                idle = [await one(client, ordinary, "ordinary.png") for _ in range(5)]
                baseline = tree_rss_mb(os.getpid())
                sampler = PeakSampler()
                sampler.start()
                start = time.perf_counter()
                hostile = [
                    asyncio.ensure_future(one(client, crafted[kind], f"{kind}{i}.{kind}"))
                    for kind in ("tiff", "jpeg")
                    for i in range(8)
                ]
                during = []
                while not all(task.done() for task in hostile):
                    during.append(await one(client, ordinary, "ordinary.png"))
                answers = [task.result() for task in hostile]
                hostile_seconds = time.perf_counter() - start
                sampler.running = False
                sampler.join()
                after = [await one(client, ordinary, "ordinary.png") for _ in range(3)]
            return {
                "idle_latency_s": {"median": round(statistics.median(t for _, t in idle), 3)},
                "under_attack_latency_s": {
                    "requests": len(during),
                    "statuses": sorted({s for s, _ in during}),
                    "median": round(statistics.median(t for _, t in during), 3),
                    "max": round(max(t for _, t in during), 3),
                },
                "after_attack_latency_s": {"median": round(statistics.median(t for _, t in after), 3)},
                "hostile": {
                    "statuses": {str(s): sum(1 for a, _ in answers if a == s) for s in sorted({a for a, _ in answers})},
                    "all_answered_s": round(hostile_seconds, 2),
                    "slowest_s": round(max(t for _, t in answers), 2),
                },
                "rss_mb": {"before_attack": round(baseline), "peak": round(sampler.peak)},
            }

        return {"decode_workers": settings.decode_workers, **asyncio.run(run())}


# Runs a command and prints its output, then its exit status, seconds and peak resident memory (KB; the largest of
# the command's processes: RUSAGE_CHILDREN of a process that ran only this command).
MEASURED = """
import resource, subprocess, sys, time
start = time.perf_counter()
run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
print(run.stdout.decode())
print(run.returncode, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def command_line(checkpoint: str, folder: Path) -> dict:
    """``altclip index`` and ``altclip embed`` of the crafted files and a photo, each in a process of its own."""
    from hostile_images import costly_headers

    photos = folder / "photos"
    photos.mkdir()
    for kind, data in costly_headers().items():
        (photos / f"crafted.{'jpg' if kind == 'jpeg' else kind}").write_bytes(data)
    (photos / "cat.jpg").write_bytes((ROOT / "examples" / "photos" / "cat.jpg").read_bytes())
    out = {}
    for name, args in (
        ("index", ["index", str(photos), "--index", str(folder / "index")]),
        ("embed", ["embed", str(photos), "--output", str(folder / "embeddings")]),
    ):
        command = [sys.executable, "-m", "altclip", *args, "--model", checkpoint, "--json"]
        run = subprocess.run([sys.executable, "-c", MEASURED, *command], capture_output=True, timeout=1200)
        *said, last = run.stdout.decode().strip().splitlines()
        code, seconds, peak = last.split()
        result = {"exit": int(code), "seconds": round(float(seconds), 1), "peak_rss_mb": round(int(peak) / 1024)}
        try:
            answer = json.loads("\n".join(said))
            result["images"] = answer.get("images")
            result["failed"] = sorted(f["reason"] for f in answer.get("failed", []))
        except ValueError:
            result["output"] = "\n".join(said)[-500:]
        out[name] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="what this run measures (before, after, ...)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)  # in the subprocess
    args = parser.parse_args()
    if args.checkpoint:
        print(json.dumps(scenario(args.checkpoint)))
        return

    import altclip

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(altclip.write_random_checkpoint("tiny", Path(tmp) / "tiny"))
        run = subprocess.run(
            [sys.executable, __file__, "--label", args.label, "--checkpoint", checkpoint],
            capture_output=True, text=True, timeout=1200, check=True,
        )  # fmt: skip
        cli = command_line(checkpoint, Path(tmp))
    result = {
        "code": str(Path(altclip.__file__).parent),
        "machine": f"{os.cpu_count()} CPUs, {platform.python_version()}, Pillow {Image.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "service": json.loads(run.stdout.strip().splitlines()[-1]),
        "command_line": cli,
    }
    print(json.dumps({args.label: result}, indent=2))
    if args.json:
        report = json.loads(args.json.read_text()) if args.json.exists() else {}
        report[args.label] = result
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
