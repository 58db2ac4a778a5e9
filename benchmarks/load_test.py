"""A bounded load test of `altclip serve`, on loopback only; it stops by itself.

    python benchmarks/load_test.py [--seconds 10] [--clients 8] [--overload-clients 64] [--checkpoint DIR]

Starts the service (a tiny random checkpoint unless --checkpoint is given) on 127.0.0.1 and runs two phases of
closed-loop clients, each sending text and image embedding requests back to back:

1. below capacity: fewer clients than the requests the server serves at once (``--max-queue``), so every request
   must succeed;
2. above capacity: many more clients than that, so the excess must get 429 at once, never a 5xx or a hang (every
   request has a 30 s client timeout).

Prints requests/s, p50/p99 latency, status counts and the mean model batch size reached (from /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

PHOTOS = Path(__file__).parent.parent / "examples" / "photos"


async def _client(url: str, deadline: float, rng: random.Random, images: list[str], results: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        while time.monotonic() < deadline:
            if rng.random() < 0.5:
                path, body = (
                    "/v1/embed/text",
                    {"texts": [f"a photo number {rng.randint(0, 10**6)}" for _ in range(rng.randint(1, 4))]},
                )
            else:
                path, body = "/v1/embed/image", {"images": rng.sample(images, rng.randint(1, 2))}
            start = time.perf_counter()
            try:
                status = (await c.post(path, json=body)).status_code
            except httpx.TimeoutException:
                status = "timeout"
            results.append((status, time.perf_counter() - start))
            if status == 429:
                await asyncio.sleep(0.05)  # a polite client backs off


def batch_stats(url: str) -> tuple[float, float]:
    """(model calls, items) summed over both modalities, from /metrics."""
    calls = items = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("altclip_batch_size_count"):
            calls += float(line.split()[-1])
        elif line.startswith("altclip_batch_size_sum"):
            items += float(line.split()[-1])
    return calls, items


def run_phase(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    images = [base64.b64encode(p.read_bytes()).decode() for p in sorted(PHOTOS.glob("*.jpg"))[:4]]
    results: list = []
    calls0, items0 = batch_stats(url)
    deadline = time.monotonic() + seconds
    start = time.perf_counter()

    async def main() -> None:
        await asyncio.gather(
            *(_client(url, deadline, random.Random(rng.random()), images, results) for _ in range(clients))
        )

    asyncio.run(main())
    elapsed = time.perf_counter() - start
    calls1, items1 = batch_stats(url)
    ok = sorted(t for s, t in results if s == 200)
    statuses = Counter(str(s) for s, _ in results)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 1),
        "ok_per_s": round(len(ok) / elapsed, 1),
        "statuses": dict(statuses),
        "p50_ms": round(1000 * ok[len(ok) // 2], 1) if ok else None,
        "p99_ms": round(1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))], 1) if ok else None,
        "mean_batch_size": round((items1 - items0) / (calls1 - calls0), 2) if calls1 > calls0 else None,
    }


def wait_ready(url: str, process, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import subprocess

    import altclip
    from serving import free_port

    assert args.clients <= args.max_queue, "--clients must not exceed --max-queue for the first phase"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or altclip.write_random_checkpoint("tiny", Path(tmp) / "ckpt")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "altclip", "serve", "--model", str(checkpoint), "--port", str(port),
             "--max-queue", str(args.max_queue), "--max-batch-size", "32", "--max-wait-ms", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(url, server)
            below = run_phase(url, args.clients, args.seconds)  # below capacity: every client's request is admitted
            above = run_phase(url, args.overload_clients, args.seconds, seed=1)
            alive = httpx.get(url + "/healthz").status_code == 200
        finally:
            server.terminate()
            server.wait(30)
    result = {
        "below_capacity": below,
        "above_capacity": above,
        "server_alive_after": alive,
        "max_queue": args.max_queue,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failures = []
    if set(below["statuses"]) != {"200"}:
        failures.append(f"below capacity: {below['statuses']}")
    if set(above["statuses"]) - {"200", "429"}:
        failures.append(f"above capacity: {above['statuses']}")
    if failures or not alive:
        raise SystemExit("FAILED: " + "; ".join(failures or ["server died"]))


if __name__ == "__main__":
    main()
