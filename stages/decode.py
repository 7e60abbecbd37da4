"""Stage `decode`: every manifest entry -> fixed-size clips in Parquet shards.

Files are decoded in parallel Ray tasks (magvit.media.clip_decoding); a file that cannot
become clips is recorded in `<clips>/rejects.parquet` and skipped. The clip folder is built
beside the old one and replaces it when complete: a failing run leaves the last one as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from magvit.cli import MANIFEST_CSV, require_path, run_stage
from magvit.formats.corpus_manifest import read_corpus_manifest
from magvit.formats.files import write_text_atomic
from magvit.media.clip_decoding import run_decode
from magvit.params import load_params

log = logging.getLogger("decode")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--manifest", required=True, help="corpus manifest CSV")
    parser.add_argument("--out", required=True, help="clip shard folder (replaced when complete)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    args = parser.parse_args(argv)
    manifest = require_path("--manifest", Path(args.manifest), MANIFEST_CSV, folder=False)
    params = load_params(args.params)
    entries = read_corpus_manifest(manifest)
    metrics = run_decode(entries, params.decode, Path(args.out), inputs=str(manifest))
    write_text_atomic(json.dumps(metrics, indent=2) + "\n", Path(args.metrics))
    log.info("decode: %s", metrics)


if __name__ == "__main__":
    run_stage(main)
