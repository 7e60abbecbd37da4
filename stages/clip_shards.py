"""Clip shards on disk: the Parquet schema of DESIGN.md, atomic writes, and readers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLIP_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("label", pa.int32()),
        ("start_frame", pa.int32()),
        ("num_frames", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("fps", pa.float32()),
        ("frames", pa.binary()),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet (zstd) to a temporary name in the same folder, then rename into place.

    A reader never sees a partial shard: either the old state or the complete file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clip_frames(row: dict) -> np.ndarray:
    """The uint8 frames [T, H, W, 3] of one clip row."""
    shape = (row["num_frames"], row["height"], row["width"], 3)
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(shape)


def shard_paths(clips_dir: Path, split: str | None = None) -> list[Path]:
    pattern = f"{split}/part-*.parquet" if split else "*/part-*.parquet"
    return sorted(Path(clips_dir).glob(pattern))


def iter_clip_rows(clips_dir: Path, split: str | None = None) -> Iterator[dict]:
    for path in shard_paths(clips_dir, split):
        yield from pq.read_table(path).to_pylist()
