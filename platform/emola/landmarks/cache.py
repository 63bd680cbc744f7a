"""The landmark cache: a parquet data set keyed by image content hash and backend version.

One row per (image, backend version): status and reason, image size, every face's box,
score and points, and the selected face's prior vector. Files are only ever added
(``part-*.parquet``, each written aside and renamed into place), so an interrupted run
leaves the cache as it was, and a re-run computes only the keys it lacks.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emola.landmarks.backend import FaceResult

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("image_sha256", pa.string()),
    ("backend", pa.string()),          # name@version
    ("status", pa.string()),
    ("reason", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ("scores", pa.list_(pa.float32())),
    ("points", pa.list_(pa.list_(pa.float32()))),  # per face: x0, y0, x1, y1, ... in pixels
    ("prior", pa.list_(pa.float32())),             # selected face; empty unless status is ok
])


def cache_key(image_sha256: str, backend_key: str) -> str:
    return f"{image_sha256}|{backend_key}"


def result_rows(shas: Iterable[str], backend_key: str, results: Iterable[FaceResult]) -> pa.Table:
    """Cache rows of a batch of results."""
    rows = []
    for sha, r in zip(shas, results):
        rows.append({
            "key": cache_key(sha, backend_key), "image_sha256": sha, "backend": backend_key,
            "status": r.status, "reason": r.reason, "width": r.width, "height": r.height,
            "boxes": [list(map(float, f.box)) for f in r.faces],
            "scores": [float(f.score) for f in r.faces],
            "points": [np.asarray(f.points, np.float32).reshape(-1).tolist() for f in r.faces],
            "prior": [] if r.prior is None else np.asarray(r.prior, np.float32).tolist(),
        })
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class LandmarkCache:
    """A folder of parquet parts with the :data:`SCHEMA` columns."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))

    def keys(self) -> set[str]:
        """Every key in the cache (reads the key column only)."""
        keys: set[str] = set()
        for part in self.parts():
            keys.update(pq.read_table(part, columns=["key"]).column("key").to_pylist())
        return keys

    def read(self, backend_key: str | None = None) -> pa.Table:
        """All rows, or the rows of one backend version; the last written wins on duplicate keys."""
        parts = self.parts()
        if not parts:
            return SCHEMA.empty_table()
        table = pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in parts)
        if backend_key is not None:
            table = table.filter(pc.equal(table["backend"], backend_key))
        keys = table.column("key").to_pylist()
        last = {k: i for i, k in enumerate(keys)}
        if len(last) != len(keys):
            table = table.take(sorted(last.values()))
        return table

    def read_ok(self, backend_key: str) -> pa.Table:
        """The rows of one backend version whose status is ``ok`` (each has a face and a prior)."""
        table = self.read(backend_key)
        return table.filter(pc.equal(table["status"], "ok"))

    def append(self, table: pa.Table) -> Path | None:
        """Add rows as a new part, written aside and renamed into place."""
        if table.num_rows == 0:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"part-{len(self.parts()):05d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.root / f".{name}.tmp"
        try:
            pq.write_table(table.cast(SCHEMA), tmp)
            os.replace(tmp, self.root / name)
        finally:
            tmp.unlink(missing_ok=True)
        return self.root / name


def prior_vectors(cache_root: Path | str, backend_key: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
    """Prior vectors of images with status ok, by content hash (what training reads)."""
    table = LandmarkCache(cache_root).read_ok(backend_key)
    wanted = set(shas)
    return {sha: np.asarray(prior, np.float32) for sha, prior in
            zip(table.column("image_sha256").to_pylist(), table.column("prior").to_pylist()) if sha in wanted}
