"""Landmark job throughput: Ray Data actor pool vs a plain loop, and incremental re-runs.

    python benchmarks/landmarks.py [--images 300] [--actors 2]     # -> benchmarks/results/landmarks.json

1. dlib-68 over ``--images`` distinct face photos (variants of the real photos shipped
   in installed packages: crops, flips, brightness), run (a) as a plain single-process
   loop and (b) as the Ray Data job with an actor pool; prints images/s and the ratio.
2. The same with the ``annotation`` backend over FABA-Synth (1,500 images): the per-image
   work is tiny there, so this shows the fixed cost of the Ray path.
3. Incremental: a full run over the photos, then the same set plus 1% new images;
   prints both times and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from harness import write_results  # noqa: E402  (also puts the package on the path)

from emola.config import load_config  # noqa: E402
from emola.data.manifest import ManifestRow  # noqa: E402
from emola.landmarks.pipeline import run_landmark_job  # noqa: E402
from emola.fileio import atomic_write_lines  # noqa: E402
from emola.imaging import sha256_bytes  # noqa: E402


def photo_variants(n: int, out: Path) -> list[str]:
    import insightface
    import matplotlib
    import skimage.data

    sources = [Image.fromarray(skimage.data.astronaut()),
               Image.open(Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg").convert("RGB"),
               Image.open(Path(insightface.__file__).parent / "data/images/t1.jpg").convert("RGB")]
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        image = sources[i % len(sources)]
        w, h = image.size
        dx, dy = rng.integers(0, w // 12), rng.integers(0, h // 12)
        variant = image.crop((dx, dy, w - rng.integers(0, w // 12), h - rng.integers(0, h // 12)))
        variant = ImageEnhance.Brightness(variant).enhance(rng.uniform(0.8, 1.2))
        if rng.random() < 0.5:
            variant = variant.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        names.append(f"v{i:05d}.jpg")
        variant.save(out / names[-1], quality=90)
    return names


def write_manifest(path: Path, root: Path, names: list[str], landmarks: list[str] | None = None) -> Path:
    rows = [ManifestRow(uid=f"emotion/test/{n}", id=n, task="emotion", split="test", root=str(root), image=n,
                        image_sha256=sha256_bytes((root / n).read_bytes()), question="q", answer="a",
                        landmark=landmarks[i] if landmarks else None,
                        landmark_layout="ibug68" if landmarks else None) for i, n in enumerate(names)]
    atomic_write_lines(path, (r.model_dump_json() for r in rows))
    return path


def timed(manifest: Path, cfg, use_ray: bool) -> tuple[float, dict]:
    started = time.perf_counter()
    summary = run_landmark_job([manifest], cfg, use_ray=use_ray, log=lambda *_: None)
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--out", help="results file (default benchmarks/results/landmarks.json)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from emola.runtime import init_ray

    init_ray()  # started once, outside the timings, as a cluster would be
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        names = photo_variants(args.images, photos)
        manifest = write_manifest(tmp / "photos.jsonl", photos, names)

        def cfg(cache: str, backend: str):
            return load_config("params.yaml", {"landmarks.backend": backend, "landmarks.cache": str(tmp / cache),
                                               "landmarks.actors": args.actors, "landmarks.cpus_per_actor": 0.5}).landmarks

        print(f"1. dlib-68 over {len(names)} photos ({args.actors} actors x 0.5 CPU)")
        loop_s, s = timed(manifest, cfg("loop", "dlib-68"), use_ray=False)
        ray_s, _ = timed(manifest, cfg("ray", "dlib-68"), use_ray=True)
        n = s["images"]
        print(f"   plain loop : {loop_s:6.1f} s  {n / loop_s:6.1f} images/s   status {s['status']}")
        print(f"   Ray Data   : {ray_s:6.1f} s  {n / ray_s:6.1f} images/s")
        print(f"   ratio Ray / loop throughput: {loop_s / ray_s:.2f}x")
        results = {"dlib68": {"images": n, "loop_s": round(loop_s, 2), "ray_s": round(ray_s, 2),
                              "ray_over_loop": round(loop_s / ray_s, 2)}}

        release = Path("data/release")
        if (Path("data/manifests/train.jsonl")).is_file():
            synth = [Path("data/manifests/train.jsonl"), Path("data/manifests/test.jsonl")]
            print("2. annotation backend over the FABA-Synth manifests")
            for label, use_ray in (("plain loop", False), ("Ray Data  ", True)):
                started = time.perf_counter()
                summary = run_landmark_job(synth, cfg(f"synth-{use_ray}", "annotation"), use_ray=use_ray, log=lambda *_: None)
                seconds = time.perf_counter() - started
                print(f"   {label} : {seconds:6.1f} s  {summary['images'] / seconds:6.1f} images/s")
                results.setdefault("annotation", {"images": summary["images"]})["ray_s" if use_ray else "loop_s"] = \
                    round(seconds, 2)
        else:
            print(f"2. skipped: no manifests under data/ (run dvc repro first; {release} missing)")

        print("3. incremental re-run with 1% new images (dlib-68, Ray Data)")
        extra = max(1, len(names) // 100)
        rng = np.random.default_rng(1)
        new_names = []
        for i in range(extra):
            image = Image.open(photos / names[i]).convert("RGB")
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
            new_names.append(f"new{i:04d}.jpg")
            image.save(photos / new_names[-1], quality=88)
        grown = write_manifest(tmp / "grown.jsonl", photos, names + new_names)
        rerun_s, s2 = timed(grown, cfg("ray", "dlib-68"), use_ray=True)
        print(f"   full run   : {ray_s:6.1f} s  ({n} images processed)")
        print(f"   re-run +1% : {rerun_s:6.1f} s  ({s2['processed']} images processed of {s2['images']})")
        print(f"   ratio full / re-run: {ray_s / rerun_s:.1f}x")
        results["incremental"] = {"full_s": round(ray_s, 2), "rerun_s": round(rerun_s, 2),
                                  "processed": s2["processed"], "images": s2["images"]}
    write_results("landmarks", results, args.out)


if __name__ == "__main__":
    main()
