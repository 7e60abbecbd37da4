"""Clip shards on disk: the Parquet schema of docs/contracts.md, atomic writes, and readers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from magvit.formats.files import shard_paths

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


def keep_rejects(rejects: pa.Table, stage: str) -> Path:
    """Write the rejects of a failed run, whose output folder is discarded (the last good
    one stays), to a new Parquet file in the system's temporary folder; returns its path."""
    handle, path = tempfile.mkstemp(prefix=f"{stage}-rejects-", suffix=".parquet")
    os.close(handle)
    pq.write_table(rejects, path)
    return Path(path)


def clip_frames(row: dict) -> np.ndarray:
    """The uint8 frames [T, H, W, 3] of one clip row."""
    shape = (row["num_frames"], row["height"], row["width"], 3)
    return np.frombuffer(row["frames"], dtype=np.uint8).reshape(shape)


def iter_clip_rows(clips_dir: Path, split: str | None = None) -> Iterator[dict]:
    for path in shard_paths(clips_dir, split):
        yield from pq.read_table(path).to_pylist()


# the kinds of clip evaluated separately: labelled synthetic videos, real footage, images
CLIP_KINDS = {
    "synthetic": lambda r: r["label"] is not None and r["num_frames"] > 1,
    "real": lambda r: r["label"] is None and r["num_frames"] > 1,
    "image": lambda r: r["num_frames"] == 1,
}


def load_clips(clips_dir: Path, split: str, where=None, limit: int | None = None) -> list[dict]:
    """Rows of one split (frames decoded), in shard order, filtered by `where(row)`."""
    rows = []
    for path in shard_paths(clips_dir, split):
        for row in pq.read_table(path).to_pylist():
            if where is None or where(row):
                rows.append(row)
                if limit and len(rows) >= limit:
                    return rows
    return rows


def held_out_sets(clips_dir: Path, split: str) -> dict[str, np.ndarray]:
    """uint8 clip arrays of a split, by kind: synthetic (labelled), real videos, images."""
    sets = {}
    for name, where in CLIP_KINDS.items():
        rows = load_clips(clips_dir, split, where)
        if rows:
            sets[name] = np.stack([clip_frames(r) for r in rows])
    return sets


def evenly_spaced(total: int, count: int | None) -> np.ndarray:
    """Indices of at most `count` items spread evenly over `total` (all when count is None).

    Clips of one video are adjacent in the shards, so this spreads a pick over videos."""
    if count is None or count >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def labelled_clips(
    clips_dir: Path, splits: tuple[str, ...], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips [N, T, H, W, 3] and labels [N] of the labelled videos of `splits`,
    at most `limit` of them, evenly spaced."""
    rows = [r for split in splits for r in load_clips(clips_dir, split, CLIP_KINDS["synthetic"])]
    if not rows:
        raise ValueError(f"no labelled video clips in {'/'.join(splits)} under {clips_dir}")
    picks = evenly_spaced(len(rows), limit)
    clips = np.stack([clip_frames(rows[i]) for i in picks])
    return clips, np.array([rows[i]["label"] for i in picks])
