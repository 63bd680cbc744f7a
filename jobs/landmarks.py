"""Stage ``landmarks``: landmarks and prior vectors of every manifest image, on Ray Data.

    python -m jobs.landmarks [--params params.yaml] [landmarks.backend=dlib-68 ...]

Runs on a local Ray instance, or on the cluster named by RAY_ADDRESS (``ray job submit``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from emola import preflight
from emola.landmarks.pipeline import run_landmark_job
from jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job_args(__doc__.splitlines()[0], argv)
    manifests = [Path(cfg.data.manifests) / name for name in ("train.jsonl", "test.jsonl")]
    try:
        for manifest in manifests:
            preflight.require_file(manifest, "data.manifests", "manifest")
        preflight.require_output(cfg.landmarks.cache, "landmarks.cache")
        preflight.require_some_images(manifests)
    except preflight.JobInputError as err:
        print(f"landmarks: error: {err}", file=sys.stderr)
        return 2
    run_landmark_job(manifests, cfg.landmarks, max_pixels=cfg.data.max_image_pixels)
    print(f"landmarks: summary in {Path(cfg.landmarks.cache) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
