"""`magvit detokenize`: token shards -> MP4 videos (T > 1) and PNG images (T = 1).

Each clip becomes `OUTPUT/<clip_id>.mp4` or `.png`, the clip id made filename-safe. The
tokenizer must be the one that made the tokens (the manifest's fingerprint is checked).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from tqdm import tqdm

from magvit.cli import run_stage
from magvit.formats.token_shards import (
    TokenShardError,
    load_token_shards,
    read_token_manifest,
    tokenizer_fingerprint,
)
from magvit.logs import configure_logging
from magvit.media.video_encode import write_mp4
from magvit.runtime.mlflow_models import model_dir_from_uri
from magvit.tokenization.actor_pool import tokenizer_config
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("detokenize")


def safe_name(clip_id: str) -> str:
    """A filename for a clip id: every character outside [A-Za-z0-9._-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", clip_id)


def write_clip(frames: np.ndarray, path_stem: Path, fps: float) -> Path:
    """uint8 [T, H, W, 3] -> PNG when T = 1, else H.264 MP4."""
    if len(frames) == 1:
        path = path_stem.with_suffix(".png")
        Image.fromarray(frames[0]).save(path)
    else:
        path = path_stem.with_suffix(".mp4")
        write_mp4(frames, path, fps)
    return path


def detokenize(
    tokens_dir: Path,
    output: Path,
    tokenizer: str,
    fps: float = 8.0,
    batch_size: int = 8,
    limit: int | None = None,
) -> list[Path]:
    """Decode the clips of `tokens_dir` (the first `limit`) into files under `output`."""
    model_dir = model_dir_from_uri(tokenizer)
    tokenizer_config(model_dir)  # a clear error for a wrong path
    made_by, given = read_token_manifest(tokens_dir).fingerprint, tokenizer_fingerprint(model_dir)
    if made_by != given:
        raise TokenShardError(
            f"{tokens_dir} was made by tokenizer {made_by}, but --tokenizer has fingerprint "
            f"{given}: decoding with another tokenizer gives meaningless pixels"
        )
    table = load_token_shards(tokens_dir)
    table = table.slice(0, limit) if limit is not None else table
    model = MagvitTokenizer.from_pretrained(model_dir).eval()
    output.mkdir(parents=True, exist_ok=True)
    written = []
    batches = list(grid_batches(table, batch_size))
    for clip_ids, tokens in tqdm(batches, unit="batch"):
        for clip_id, frames in zip(clip_ids, model.decode(tokens).numpy(), strict=True):
            written.append(write_clip(frames, output / safe_name(clip_id), fps))
    log.info("wrote %d files to %s", len(written), output)
    return written


def grid_batches(table: pa.Table, batch_size: int):
    """(clip ids, int64 tokens [B, t, h, w]) batches, each of one grid shape."""
    by_grid: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        by_grid[(row["grid_t"], row["grid_h"], row["grid_w"])].append(row)
    for grid, rows in by_grid.items():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            tokens = torch.tensor([r["tokens"] for r in batch], dtype=torch.int64)
            yield [r["clip_id"] for r in batch], tokens.reshape(len(batch), *grid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("tokens", help="token shard folder (with manifest.json)")
    parser.add_argument("output", help="folder for the .mp4 / .png files")
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="the tokenizer that made the tokens: checkpoint folder or MLflow model URI",
    )
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the MP4s")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per decode call")
    parser.add_argument("--limit", type=int, help="decode only the first N clips")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        detokenize(
            Path(args.tokens), Path(args.output), args.tokenizer, args.fps, args.batch_size,
            args.limit,
        )  # fmt: skip
    except (TokenShardError, FileNotFoundError) as error:
        raise SystemExit(f"magvit detokenize: {error}") from None


if __name__ == "__main__":
    run_stage(main)
