"""Files on disk: write-then-rename, and the one layout of shard folders.

Write-then-rename: a reader sees either the old file or the complete new one, never part.
The temporary file sits in the target's folder (same filesystem, so the rename is atomic)
under a hidden, unique name, and is removed when writing fails.

Shards: `<folder>/<split>/part-*.parquet`, the layout of clip and token shards alike.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file (zstd) atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


SHARD_GLOB = "part-*.parquet"


def shard_paths(folder: str | Path, split: str | None = None) -> list[Path]:
    """The shard files of one split (`split`) or of every split folder, sorted."""
    return sorted(Path(folder).glob(f"{split or '*'}/{SHARD_GLOB}"))
