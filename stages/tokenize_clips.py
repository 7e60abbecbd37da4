"""Stage `tokenize_clips`: clip shards -> token shards with a pool of tokenizer actors.

Ray Data reads `<clips>/<split>/part-*.parquet`; a fixed pool of tokenizer actors
(magvit.tokenization.actor_pool) encodes them; one token shard per clip shard is written to
`<out>/<split>/part-NNNNN.parquet`, then `<out>/manifest.json`. Same clips and checkpoint ->
the same shards, row for row. Bulk tokenisation of other corpora is `magvit tokenize`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from magvit.cli import CLIP_FOLDER, require_path, run_stage
from magvit.errors import UsageError
from magvit.params import load_params
from magvit.tokenization.actor_pool import run_tokenize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", required=True, help="clip shard folder")
    parser.add_argument("--out", required=True, help="token shard folder (replaced when complete)")
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer checkpoint folder or MLflow model URI "
        "(e.g. models:/magvit2-tokenizer@champion)",
    )
    args = parser.parse_args(argv)
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    try:
        run_tokenize(clips, args.tokenizer, load_params(args.params), Path(args.out))
    except FileNotFoundError as error:  # a --tokenizer folder without a checkpoint, no shards
        raise UsageError(str(error)) from None


if __name__ == "__main__":
    run_stage(main)
