"""`magvit detokenize` on the command line: file names and collisions, a full disk (a bad
TOKENS folder: tests/test_cli.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from test_tokenize import tiny_tokenizer

from magvit.formats.files import write_table_atomic
from magvit.formats.token_shards import (
    BULK_TOKEN_SCHEMA,
    TOKEN_SCHEMA,
    completed_manifest,
    new_manifest,
    tokenizer_fingerprint,
    write_token_manifest,
)
from models.tokenizer import MagvitTokenizer

from conftest import assert_error_line, file_size_limit

MAGVIT = Path(sys.executable).parent / "magvit"
VIDEO, IMAGE = (2, 4, 4), (1, 4, 4)  # token grids of a 5 x 32 x 32 clip and a 32 x 32 image

# (clip_id, source_path, grid) -> the file it must become; shard 0 is a bulk shard, shard 1
# one without source paths (as the DVC stage writes, or a bulk job resumed across versions)
BULK_ROWS = [
    ("v1:0", "cars/red.mp4", VIDEO, "cars__red_0.mp4"),
    ("v1:4", "cars/red.mp4", VIDEO, "cars__red_4.mp4"),
    ("v2:0", "cars__red.mov", VIDEO, "cars__red_0-2.mp4"),  # same name as the first
    ("v3:0", "stills/a.b.png", IMAGE, "stills__a.b_0.png"),  # a dot in the name
    ("v4:0", "stills/a.b.jpg", IMAGE, "stills__a.b_0-2.png"),
]
PLAIN_ROWS = [
    ("d207297c8e7bc1dd:0", None, VIDEO, "d207297c8e7bc1dd_0.mp4"),
    ("x_0", None, IMAGE, "x_0.png"),
    ("x:0", None, IMAGE, "x_0-2.png"),  # the clip id made filename-safe meets the one above
]


def token_row(clip_id: str, grid: tuple[int, int, int], rng: np.random.Generator) -> dict:
    t, h, w = grid
    return {
        "clip_id": clip_id, "video_id": clip_id.partition(":")[0], "split": "train",
        "label": None, "grid_t": t, "grid_h": h, "grid_w": w,
        "tokens": rng.integers(0, 2**18, t * h * w).tolist(),
    }  # fmt: skip


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """A finished token folder of BULK_ROWS and PLAIN_ROWS, its tokenizer, and its rows."""
    root = tmp_path_factory.mktemp("detokenize")
    tokenizer = tiny_tokenizer(root / "tokenizer")
    tokens = root / "tokens"
    rng = np.random.default_rng(0)
    bulk = [{**token_row(c, g, rng), "source_path": s} for c, s, g, _ in BULK_ROWS]
    plain = [token_row(c, g, rng) for c, _, g, _ in PLAIN_ROWS]
    table = pa.Table.from_pylist(bulk, schema=BULK_TOKEN_SCHEMA)
    write_table_atomic(table, tokens / "train" / "part-00000.parquet")
    write_table_atomic(
        pa.Table.from_pylist(plain, schema=TOKEN_SCHEMA), tokens / "train" / "part-00001.parquet"
    )
    config = MagvitTokenizer.from_pretrained(tokenizer).config
    manifest = new_manifest(config, tokenizer_fingerprint(tokenizer), 1, {"input": "test"})
    write_token_manifest(completed_manifest(manifest, tokens), tokens)
    return tokens, tokenizer, bulk + plain


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAGVIT, "detokenize", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_files_are_named_after_their_source_uniquely(token_folder, tmp_path):
    tokens, tokenizer, rows = token_folder
    out = tmp_path / "decoded"
    result = run_cli(tokens, out, "--tokenizer", tokenizer, "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    expected = [name for *_, name in BULK_ROWS + PLAIN_ROWS]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert len(expected) == len(rows)

    # each name holds its own row's clip, the first of two rows keeping the plain name
    model = MagvitTokenizer.from_pretrained(tokenizer).eval()
    for row, name in zip(rows, expected, strict=True):
        grid = (1, row["grid_t"], row["grid_h"], row["grid_w"])
        if name.endswith(".png"):
            decoded = model.decode(torch.tensor(row["tokens"]).reshape(grid))[0, 0].numpy()
            image = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
            assert np.abs(image - decoded).max() <= 1, name
        else:
            assert (out / name).stat().st_size > 0


def test_a_full_disk_leaves_no_partial_file_and_names_the_file(token_folder, tmp_path):
    """Under a file-size limit smaller than any decoded file (RLIMIT_FSIZE, as on a full
    disk): one line naming the file, exit status 1, and no partial or temporary file."""
    tokens, tokenizer, _ = token_folder
    out = tmp_path / "decoded"
    result = subprocess.run(
        [MAGVIT, "detokenize", tokens, out, "--tokenizer", tokenizer],
        preexec_fn=file_size_limit(256),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    first = BULK_ROWS[0][-1]  # the first row is decoded first
    assert_error_line(result.stderr, "detokenize", f"cannot write {out / first}: File too large")
    assert list(out.iterdir()) == []
