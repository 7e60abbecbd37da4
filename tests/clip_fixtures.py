"""Small clip shard folders written straight from synthetic videos (no decode run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from magvit.formats.clip_shards import CLIP_SCHEMA
from magvit.formats.files import write_table_atomic
from magvit.media.synthetic import ShapeVideoSpec, render_shape_video


def clip_row(video_id: str, split: str, frames: np.ndarray, label: int | None) -> dict:
    t, h, w, _ = frames.shape
    return {
        "clip_id": f"{video_id}:0", "video_id": video_id, "source": f"/synthetic/{video_id}.mp4",
        "split": split, "label": label, "start_frame": 0, "num_frames": t, "height": h,
        "width": w, "fps": 8.0 if t > 1 else 0.0, "frames": frames.tobytes(),
    }  # fmt: skip


def write_clip_folder(root: Path, frames: int = 5, size: int = 32, per_split=None) -> Path:
    """train / val / test shards of moving-shape clips, plus T = 1 images and unlabelled clips."""
    per_split = per_split or {"train": 16, "val": 4, "test": 4}
    for split, count in per_split.items():
        rows = []
        for i in range(count):
            seed = hash((split, i)) % 10_000
            video = render_shape_video(ShapeVideoSpec(i % 8, frames, size, seed=seed))
            rows.append(clip_row(f"{split}{i}", split, video, label=i % 8))
        still = render_shape_video(ShapeVideoSpec(0, 1, size, seed=99))
        rows.append(clip_row(f"{split}-image", split, still, label=None))
        rows.append(clip_row(f"{split}-image2", split, still[:, ::-1].copy(), label=None))
        real = render_shape_video(ShapeVideoSpec(3, frames, size, seed=7))[..., ::-1].copy()
        rows.append(clip_row(f"{split}-real", split, real, label=None))
        table = pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)
        write_table_atomic(table, root / split / "part-00000.parquet")
    return root
