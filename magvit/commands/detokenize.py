"""`magvit detokenize`: token shards -> MP4 videos (T > 1) and PNG images (T = 1).

Each clip becomes `OUTPUT/<name>.mp4` or `.png`. Rows of bulk runs (`magvit tokenize`) are
named after their input file: its path relative to INPUT, `/` replaced by `__` and the
extension dropped, then `_` and the clip's start frame (`cars/red.mp4`, clip `...:8` ->
`cars__red_8.mp4`). Rows without a source path (the DVC pipeline's `data/tokens`) are named
after their clip id (`d207297c8e7bc1dd:0` -> `d207297c8e7bc1dd_0.mp4`). Characters outside
[A-Za-z0-9._-] become `_`. Names are unique within a run: when two rows would share one, the
later row (in shard order) gets `-2`, `-3`, ...; nothing written in the run is overwritten.
The tokenizer must be the one that made the tokens (the manifest's fingerprint is checked).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from tqdm import tqdm

from magvit.cli import require_path, run_stage
from magvit.errors import UsageError
from magvit.formats.files import atomic_path
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

PROG = "magvit detokenize"


def safe_name(clip_id: str) -> str:
    """A filename for a clip id: every character outside [A-Za-z0-9._-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", clip_id)


def clip_stem(clip_id: str, source_path: str | None) -> str:
    """The file stem of one clip (see the module docstring), before making it unique."""
    parts = [part for part in PurePosixPath(source_path or "").parts if part != "/"]
    if not parts:
        return safe_name(clip_id)
    *folders, name = parts
    extension = PurePosixPath(name).suffix
    parts = [*folders, name[: -len(extension)] if extension else name]
    return safe_name(f"{'__'.join(parts)}_{clip_id.rpartition(':')[2]}")


def unique_stems(stems: list[str]) -> list[str]:
    """`stems` with repeats made unique: the first keeps its name, later ones get -2, -3, ...

    Compared case-insensitively, so two names cannot meet on a case-insensitive filesystem.
    """
    taken: set[str] = set()
    unique = []
    for stem in stems:
        candidate, n = stem, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def output_stems(table: pa.Table) -> list[str]:
    """A unique, deterministic file stem for each row of `table`, in row order."""
    clip_ids = table["clip_id"].to_pylist()
    if "source_path" in table.column_names:
        sources = table["source_path"].to_pylist()
    else:
        sources = [None] * len(clip_ids)
    return unique_stems([clip_stem(c, s) for c, s in zip(clip_ids, sources, strict=True)])


def write_clip(frames: np.ndarray, output: Path, stem: str, fps: float) -> Path:
    """uint8 [T, H, W, 3] -> `output/<stem>.png` when T = 1, else an H.264 `<stem>.mp4`.

    The extension is appended, not swapped in with `with_suffix`, which would cut a stem with
    a dot in it (`a.v2_0` -> `a.png`) and let two clips share one file. Each file is
    written under a temporary name and renamed when complete: a full disk leaves no partial
    file, and stops the command with one line naming the file."""
    if len(frames) == 1:
        path = output / f"{stem}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(frames[0]).save(tmp, format="PNG")
    else:
        path = output / f"{stem}.mp4"
        write_mp4(frames, path, fps)  # through atomic_path too
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
    batches = list(grid_batches(table, output_stems(table), batch_size))
    for stems, tokens in tqdm(batches, unit="batch"):
        for stem, frames in zip(stems, model.decode(tokens).numpy(), strict=True):
            written.append(write_clip(frames, output, stem, fps))
    log.info("wrote %d files to %s", len(written), output)
    return written


def grid_batches(
    table: pa.Table, stems: list[str], batch_size: int
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(file stems, int64 tokens [B, t, h, w]) batches, each of one grid shape."""
    by_grid: dict[tuple[int, int, int], list[tuple[str, dict]]] = defaultdict(list)
    for stem, row in zip(stems, table.to_pylist(), strict=True):
        by_grid[(row["grid_t"], row["grid_h"], row["grid_w"])].append((stem, row))
    for grid, rows in by_grid.items():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            tokens = torch.tensor([row["tokens"] for _, row in batch], dtype=torch.int64)
            yield [stem for stem, _ in batch], tokens.reshape(len(batch), *grid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    tokens, output = Path(args.tokens), Path(args.output)
    check_paths(tokens, output)
    try:
        detokenize(tokens, output, args.tokenizer, args.fps, args.batch_size, args.limit)
    except (TokenShardError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


def check_paths(tokens: Path, output: Path) -> None:
    """TOKENS must be a folder and OUTPUT a folder or a new path: say which is wrong."""
    require_path("TOKENS", tokens, "a token shard folder")
    if output.exists() and not output.is_dir():
        raise UsageError(f"OUTPUT {output} exists and is not a folder")


if __name__ == "__main__":
    run_stage(main)
