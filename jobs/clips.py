"""Stage ``clips``: FABA-Synth expression clips (neutral, onset, apex, offset) with per-frame labels.

    python -m jobs.clips [--params params.yaml] [video.clips.count=50 ...]

Writes ``video.clips.count`` clips and their label files into ``video.input``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from emola.fileio import replace_dir
from emola.synth.clips import generate_clips
from jobs.common import parse_job_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job_args(__doc__.splitlines()[0], argv)
    c, target = cfg.video.clips, Path(cfg.video.input)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:   # the old clips are replaced only once every new one is written
        generate_clips(staging, c.count, c.seed, c.size, c.fps, c.seconds)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"clips: {c.count} clips of {c.seconds:g} s at {c.fps:g} fps, {c.size} px -> {target}/ "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
