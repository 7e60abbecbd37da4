"""Stage `validate_tokens`: a Great Expectations suite over the token shards.

The suite checks the Arrow schema, that no value is null, that `clip_id` is unique and its
set equals the clip shards' ids, that every token lies in [0, codebook size), that each token
list holds grid_t x grid_h x grid_w tokens, and that grids and counts match the manifest. The
stage fails with a summary of the failed expectations; results and Data Docs go to
artifacts/validation/ (tokens.json, tokens_docs/).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from magvit.cli import CLIP_FOLDER, TOKEN_FOLDER, require_path, run_stage
from magvit.formats.clip_shards import shard_paths
from magvit.formats.token_shards import (
    TOKEN_SCHEMA,
    TokenManifest,
    TokenShardError,
    read_token_manifest,
    token_shard_paths,
)
from magvit.logs import configure_logging
from magvit.runtime.gx_suite import SuiteResult, ValidationFailed, run_suite

log = logging.getLogger("validate_tokens")
SCALAR_COLUMNS = [f.name for f in TOKEN_SCHEMA if f.name != "tokens"]


def token_list_stats(tokens: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """Per row: list length, smallest and largest token, null tokens (NaN for empty lists)."""
    lists = tokens.combine_chunks()
    count = len(lists)
    values = pa.table({"row": pc.list_parent_indices(lists), "value": pc.list_flatten(lists)})
    grouped = values.group_by("row").aggregate(
        [("value", "min"), ("value", "max"), ("value", "count", pc.CountOptions(mode="only_null"))]
    )
    rows = grouped["row"].to_numpy()
    stats = {"token_count": pc.list_value_length(lists).to_numpy(zero_copy_only=False)}
    for name, column in (("token_min", "value_min"), ("token_max", "value_max")):
        stats[name] = np.full(count, np.nan)
        stats[name][rows] = grouped[column].to_numpy(zero_copy_only=False)
    stats["null_tokens"] = np.zeros(count)
    stats["null_tokens"][rows] = grouped["value_count"].to_numpy()
    return stats


def token_summary_frame(tokens_dir: Path, clip_ids: set[str]) -> pd.DataFrame:
    """One row per token row: the scalar columns plus statistics of its token list."""
    shards = token_shard_paths(tokens_dir)
    if not shards:
        raise ValidationFailed(f"no token shards found under {tokens_dir}/<split>/part-*.parquet")
    frames = []
    for path in shards:
        table = pq.read_table(path)
        frame = table.select([c for c in SCALAR_COLUMNS if c in table.column_names]).to_pandas(
            types_mapper={pa.int32(): pd.Int32Dtype()}.get
        )
        frame["shard"] = f"{path.parent.name}/{path.name}"
        frame["schema_matches"] = int(table.schema.equals(TOKEN_SCHEMA))
        if "tokens" in table.column_names:
            for name, values in token_list_stats(table["tokens"]).items():
                frame[name] = values
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["expected_count"] = frame["grid_t"] * frame["grid_h"] * frame["grid_w"]
    frame["grid"] = [f"{t}x{h}x{w}" for t, h, w in zip(*_grid_columns(frame), strict=True)]
    frame["in_clip_shards"] = frame["clip_id"].isin(clip_ids).astype(int)
    return frame


def _grid_columns(frame: pd.DataFrame) -> list:
    return [frame[c].tolist() for c in ("grid_t", "grid_h", "grid_w")]


def token_expectations(manifest: TokenManifest, clip_count: int) -> list:
    import great_expectations as gx

    E = gx.expectations
    grids = [f"{t}x{h}x{w}" for t, h, w in manifest.grids]
    expectations = [
        E.ExpectColumnValuesToBeInSet(column="schema_matches", value_set=[1]),
        E.ExpectTableRowCountToEqual(value=clip_count),
        E.ExpectTableRowCountToEqual(value=sum(manifest.counts.values())),
        E.ExpectColumnValuesToBeUnique(column="clip_id"),
        E.ExpectColumnValuesToBeInSet(column="in_clip_shards", value_set=[1]),
    ]
    for column in SCALAR_COLUMNS + ["token_count", "token_min", "token_max"]:
        if column != "label":
            expectations.append(E.ExpectColumnValuesToNotBeNull(column=column))
    expectations += [
        E.ExpectColumnValuesToBeInSet(column="null_tokens", value_set=[0]),
        E.ExpectColumnValuesToBeBetween(column="token_min", min_value=0),
        E.ExpectColumnValuesToBeBetween(column="token_max", max_value=manifest.codebook_size - 1),
        E.ExpectColumnPairValuesToBeEqual(column_A="token_count", column_B="expected_count"),
        E.ExpectColumnValuesToBeInSet(column="grid", value_set=grids),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=sorted(manifest.counts)),
    ]
    return expectations


def clip_ids_of(clips_dir: Path) -> set[str]:
    shards = shard_paths(clips_dir)
    if not shards:
        raise ValidationFailed(f"no clip shards found under {clips_dir}/<split>/part-*.parquet")
    return set(pq.read_table(shards, columns=["clip_id"])["clip_id"].to_pylist())


def validate_tokens(
    tokens_dir: Path, clips_dir: Path, results_path: Path, docs_dir: Path
) -> SuiteResult:
    try:
        manifest = read_token_manifest(tokens_dir)
    except TokenShardError as error:
        raise ValidationFailed(str(error)) from None
    clip_ids = clip_ids_of(clips_dir)
    frame = token_summary_frame(tokens_dir, clip_ids)
    log.info("validating %d token rows from %d shards", len(frame), frame["shard"].nunique())
    return run_suite(
        frame, "tokens", token_expectations(manifest, len(clip_ids)), results_path, docs_dir
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", required=True, help="token shard folder")
    parser.add_argument("--clips", required=True, help="clip shard folder they came from")
    parser.add_argument("--results", required=True, help="validation results JSON to write")
    parser.add_argument("--docs", required=True, help="folder of the Data Docs site (replaced)")
    args = parser.parse_args(argv)
    tokens = require_path("--tokens", Path(args.tokens), TOKEN_FOLDER)
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    configure_logging()
    validate_tokens(tokens, clips, Path(args.results), Path(args.docs))


if __name__ == "__main__":
    run_stage(main)
