"""What hostile image requests cost the service, and what the reduced decoding of large images changes.

    python benchmarks/service_limits.py [--json PATH]

Each scenario runs in a process of its own (a tiny random checkpoint, the service on loopback in that process), so
that its peak memory is its own: the growth over the scenario of the peak resident memory of that process and its
children (the decoding processes), sampled every 50 ms, is reported.

- ``amplification``: issue 12's request, 16 single-colour 6000x6500 PNGs (39 Mpx each, 2 MB of body) in one request;
- ``admitted``: the most image work the default limits admit, 8 concurrent requests of two such PNGs each (78 Mpx
  per request, under ``max_request_pixels``), with ``decode_workers`` 1, 2 and 4: memory follows the workers, not
  the requests;
- ``jpeg``: a 4032x3024 JPEG photo (a phone's 12 Mpx), decoded and prepared by the exact path and by the service's
  reduced path (DCT scaling), in this process: time, and how far the pixels are from the exact path's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from hostile_decoding import PeakSampler, tree_rss_mb  # noqa: E402  (beside this script)


def big_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (6000, 6500), (10, 20, 30)).save(out, "PNG", compress_level=9)
    return out.getvalue()


def serve_scenario(name: str, checkpoint: str, workers: int) -> dict:
    """Runs one service scenario in this process."""
    import httpx

    import altclip
    from altclip.inference import Embedder
    from altclip.server import ServerSettings
    from serving import running_server

    model, processor = altclip.load(checkpoint)
    embedder = Embedder(model, processor, "tiny")
    png = base64.b64encode(big_png()).decode()
    with running_server(ServerSettings(decode_workers=workers), embedder) as url:
        httpx.post(url + "/v1/embed/text", json={"texts": ["warm"]})
        sampler = PeakSampler()
        before, start = tree_rss_mb(os.getpid()), time.perf_counter()
        sampler.start()
        if name == "amplification":
            r = httpx.post(url + "/v1/embed/image", json={"images": [png] * 16}, timeout=300)
            statuses = [r.status_code]
        else:

            async def requests() -> list[int]:
                async with httpx.AsyncClient(base_url=url, timeout=300) as c:
                    answers = await asyncio.gather(
                        *(c.post("/v1/embed/image", json={"images": [png] * 2}) for _ in range(8))
                    )
                    return [a.status_code for a in answers]

            statuses = asyncio.run(requests())
        seconds = time.perf_counter() - start
        sampler.running = False
        sampler.join()
        return {
            "statuses": statuses,
            "seconds": round(seconds, 2),
            "peak_memory_growth_mb": round(sampler.peak - before),
        }


def jpeg_scenario(checkpoint: str) -> dict:
    import dataclasses

    import altclip
    from altclip.processing import decoding

    _, processor = altclip.load(checkpoint)
    exact = processor.image_processor
    reduced = dataclasses.replace(exact.preparation, reduce=True)  # the service's preparation with draft = true
    photo = Image.open(ROOT / "examples" / "photos" / "coffee.jpg").convert("RGB").resize((4032, 3024), Image.BICUBIC)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=92)
    data = out.getvalue()

    def timed(fn, runs: int = 5) -> tuple[np.ndarray, float]:
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        return result, best

    exact_pixels, exact_s = timed(lambda: exact.prepare(data))
    reduced_pixels, reduced_s = timed(lambda: decoding.prepare(data, reduced))
    diff = np.abs(exact_pixels.astype(np.int16) - reduced_pixels.astype(np.int16))
    return {
        "image": "4032x3024 JPEG",
        "exact_ms": round(exact_s * 1000, 1),
        "reduced_ms": round(reduced_s * 1000, 1),
        "decoded_pixels": decoding.pixels_to_decode(data, reduced),
        "mean_pixel_difference": round(float(diff.mean()), 2),
        "max_pixel_difference": int(diff.max()),
    }


def in_subprocess(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--scenario", *args], capture_output=True, text=True, timeout=900, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scenario", nargs=3, help=argparse.SUPPRESS)  # NAME CHECKPOINT WORKERS, in a subprocess
    args = parser.parse_args()
    if args.scenario:
        name, checkpoint, workers = args.scenario
        result = jpeg_scenario(checkpoint) if name == "jpeg" else serve_scenario(name, checkpoint, int(workers))
        print(json.dumps(result))
        return

    import altclip

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(altclip.write_random_checkpoint("tiny", Path(tmp) / "tiny"))
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
            "amplification": in_subprocess("amplification", checkpoint, "2"),
            "admitted": {f"decode_workers={w}": in_subprocess("admitted", checkpoint, str(w)) for w in (1, 2, 4)},
            "jpeg": in_subprocess("jpeg", checkpoint, "1"),
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
