"""Serving under load: throughput and p50/p99 latency with batching on and off, and autoscaling.

    python benchmarks/serve.py [--checkpoint models/emola] [--requests-per-client 8]

For batching on (the inference engine's continuous batching, ``inference.max_batch`` 64)
and off (``inference.max_batch`` 1: one request at a time), one model replica serves
``/v1/analyze`` (emotion task) to 1, 8 and 32 concurrent clients. Each level sends 8
requests per client (at least 48), so the throughput is that of a full load: with fewer
requests than a few per client, a level measures mostly its first wave and its tail.
Then a server allowed 1 to 2 model replicas is loaded with 16
clients and its replica processes are counted every second: up under load, down after.
Needs a trained checkpoint and the landmark cache of ``dvc repro``.

``--images cached`` (the default) sends FABA-Synth test images, whose faces the landmark cache
answers; ``--images photos`` sends real photographs that ship inside installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper, InsightFace's samples), which take the
path a user's photo takes: detection, landmarks and the prior on the face deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import write_results  # noqa: E402
from serve import local  # noqa: E402

TOKENS = 32   # generated tokens per request: the same work for every setting


async def _load(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    """``clients`` concurrent clients send ``requests`` multipart ``/v1/analyze`` requests, each its next one as
    soon as its last is answered.

    The clients share the machine's cores with the server, so they are aiohttp's (Ray Serve's own HTTP
    library): 0.6 ms of CPU per request where httpx's AsyncClient took 2-3 ms, a tenth of all the CPU a
    request costs at 32 clients with batching on (docs/performance.md)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(images[i % len(images)])

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            form = aiohttp.FormData()
            form.add_field("file", queue.get_nowait(), filename="face.jpg", content_type="image/jpeg")
            form.add_field("task", "emotion")
            started = time.perf_counter()
            async with session.post(url + "/v1/analyze", data=form) as response:
                await response.read()
                latencies.append(time.perf_counter() - started)
                errors += response.status != 200

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(clients)])
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": requests, "errors": errors, "throughput_rps": requests / elapsed,
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def _replicas() -> int:
    return len(local.replica_processes("EmolaModel"))


def _common(args) -> list[str]:
    return [f"serve.checkpoint={args.checkpoint}", f"serve.landmark_cache={args.landmarks}",
            f"evaluate.generation.max_new_tokens={TOKENS}", "evaluate.generation.temperature=0.01",
            "serve.num_cpus=0.5"]   # two model replicas, the faces and the ingress fit on 2 cores


def requests_for(args, clients: int) -> int:
    """Requests sent at one level: ``--requests`` when given, else ``--requests-per-client`` per client, at least 48."""
    return args.requests or max(48, args.requests_per_client * clients)


def real_photos() -> list[bytes]:
    """JPEGs of the face photos inside installed packages: none is in the landmark cache."""
    import io

    import insightface
    import matplotlib
    import skimage.data
    from PIL import Image

    def jpeg(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=92)
        return out.getvalue()

    samples = Path(insightface.__file__).parent / "data/images"
    return [jpeg(Image.fromarray(skimage.data.astronaut())),
            (Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg").read_bytes(),
            jpeg(Image.open(samples / "Tom_Hanks_54745.png")), (samples / "t1.jpg").read_bytes()]


def batching(args, images: list[bytes], work: Path) -> dict:
    results = {}
    settings = [s for s in (("batching_off", 1), ("batching_on", 64)) if args.batching in ("both", s[0][9:])]
    for name, size in settings:
        server = local.start(work / name, [*_common(args), f"inference.max_batch={size}", "serve.min_replicas=1",
                                           "serve.max_replicas=1", "serve.max_ongoing_requests=64"])
        try:
            asyncio.run(_load(server.url, images, 2, 4))  # warm-up
            results[name] = [asyncio.run(_load(server.url, images, c, requests_for(args, c))) for c in args.clients]
        finally:
            server.stop()
        for row in results[name]:
            print(f"{name:13s} clients {row['clients']:3d}: {row['throughput_rps']:6.2f} req/s  "
                  f"p50 {row['p50_ms']:8.0f} ms  p99 {row['p99_ms']:8.0f} ms  errors {row['errors']}", flush=True)
    for off, on in zip(results.get("batching_off", []), results.get("batching_on", [])):
        print(f"clients {off['clients']:3d}: batching on/off throughput x{on['throughput_rps'] / off['throughput_rps']:.2f}, "
              f"p50 x{on['p50_ms'] / off['p50_ms']:.2f}, p99 x{on['p99_ms'] / off['p99_ms']:.2f}")
    return results


def autoscaling(args, images: list[bytes], work: Path) -> dict:
    server = local.start(work / "autoscale", [*_common(args), "inference.max_batch=1", "serve.min_replicas=1",
                                              "serve.max_replicas=2", "serve.target_ongoing_requests=2"])
    timeline: list[tuple[float, int]] = []
    try:
        started = time.time()

        async def load_and_watch() -> None:
            task = asyncio.create_task(_load(server.url, images, 16, args.autoscale_requests))
            while not task.done():
                timeline.append((round(time.time() - started, 1), _replicas()))
                await asyncio.sleep(1)
            print(f"autoscaling load: {(await task)['throughput_rps']:.2f} req/s")

        asyncio.run(load_and_watch())
        load_end = time.time() - started
        while time.time() - started < load_end + args.cooldown:
            timeline.append((round(time.time() - started, 1), _replicas()))
            time.sleep(1)
    finally:
        server.stop()
    under_load = max(n for t, n in timeline if t <= load_end)
    after = timeline[-1][1]
    print(f"autoscaling: 1 replica at start, {under_load} under 16 clients, {after} {args.cooldown} s after the load")
    return {"timeline": timeline, "max_under_load": under_load, "after_cooldown": after, "load_end_s": load_end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="models/emola")
    parser.add_argument("--landmarks", default="data/landmarks")
    parser.add_argument("--manifest", default="data/manifests/test.jsonl")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: per client)")
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--autoscale-requests", type=int, default=160)
    parser.add_argument("--cooldown", type=int, default=45)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-autoscaling", action="store_true", help="measure batching only")
    parser.add_argument("--images", choices=["cached", "photos"], default="cached",
                        help="FABA-Synth test images (landmark cache) or real photos (the detector path)")
    parser.add_argument("--batching", choices=["both", "on", "off"], default="both", help="which settings to measure")
    parser.add_argument("--out", default="benchmarks/results/serve.json")
    args = parser.parse_args()
    args.checkpoint, args.landmarks = str(Path(args.checkpoint).resolve()), str(Path(args.landmarks).resolve())

    from emola.data.manifest import read_manifest

    if args.images == "photos":
        images = real_photos()
    else:
        rows = [r for r in read_manifest(Path(args.manifest)) if r.task == "emotion"][:32]
        images = [r.image_path().read_bytes() for r in rows]
    with tempfile.TemporaryDirectory() as work:
        result = {"images": args.images, "batching": batching(args, images, Path(work))}
        if not args.no_autoscaling:
            result["autoscaling"] = autoscaling(args, images, Path(work))
    write_results("serve", result, args.out)


if __name__ == "__main__":
    main()
