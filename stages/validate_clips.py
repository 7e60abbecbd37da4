"""Stage `validate_clips`: a Great Expectations suite over the clip shards.

The suite checks the schema and dtypes, ids, the shape columns against the frame bytes,
labels, that every split holds clips, and that pixels are not constant. The stage fails
with a summary of the failed expectations; results and Data Docs go to artifacts/validation/.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from magvit.cli import CLIP_FOLDER, require_path, run_stage
from magvit.formats.clip_shards import CLIP_SCHEMA, clip_frames, shard_paths
from magvit.formats.corpus_manifest import SPLITS
from magvit.logs import configure_logging
from magvit.params import ValidateClipsParams, load_params
from magvit.runtime.gx_suite import SuiteResult, ValidationFailed, run_suite

log = logging.getLogger("validate_clips")

PANDAS_DTYPES = {pa.string(): "str", pa.int32(): "int32", pa.float32(): "float32"}


def clip_summary_frame(clips_dir: Path) -> pd.DataFrame:
    """One row per clip: the shard columns (frames replaced by derived statistics).

    `schema_matches` is 1 for rows from a shard whose Arrow schema is exactly CLIP_SCHEMA.
    """
    shards = shard_paths(clips_dir)
    if not shards:
        raise ValidationFailed(f"no clip shards found under {clips_dir}/<split>/part-*.parquet")
    frames = []
    for path in shards:
        table = pq.read_table(path)
        frame = table.drop_columns(["frames"]).to_pandas(
            types_mapper={pa.int32(): pd.Int32Dtype()}.get
        )
        frame["shard"] = path.name
        frame["schema_matches"] = int(table.schema.equals(CLIP_SCHEMA))
        rows = table.to_pylist()
        frame["frame_bytes"] = [len(r["frames"] or b"") for r in rows]
        frame["expected_bytes"] = [
            (r["num_frames"] or 0) * (r["height"] or 0) * (r["width"] or 0) * 3 for r in rows
        ]
        frame["pixel_std"] = [_pixel_std(r) for r in rows]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _pixel_std(row: dict) -> float:
    try:
        return float(np.std(clip_frames(row)))
    except (ValueError, TypeError):  # shape columns disagree with the bytes: reported elsewhere
        return float("nan")


def clip_expectations(params: ValidateClipsParams) -> list:
    import great_expectations as gx

    E = gx.expectations
    columns = [f.name for f in CLIP_SCHEMA if f.name != "frames"]
    expectations = [
        E.ExpectColumnValuesToBeInSet(column="schema_matches", value_set=[1]),
        E.ExpectTableColumnsToMatchSet(
            column_set=columns
            + ["shard", "schema_matches", "frame_bytes", "expected_bytes", "pixel_std"],
            exact_match=True,
        ),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for field in CLIP_SCHEMA:
        if field.name != "frames":
            expectations.append(
                E.ExpectColumnValuesToBeOfType(column=field.name, type_=PANDAS_DTYPES[field.type])
            )
    for column in (
        "clip_id",
        "video_id",
        "source",
        "split",
        "start_frame",
        "num_frames",
        "height",
        "width",
        "fps",
    ):
        expectations.append(E.ExpectColumnValuesToNotBeNull(column=column))
    expectations += [
        E.ExpectColumnValuesToBeUnique(column="clip_id"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeBetween(
            column="label", min_value=0, max_value=params.num_classes - 1
        ),
        E.ExpectColumnValuesToBeBetween(column="start_frame", min_value=0),
        E.ExpectColumnValuesToBeBetween(column="num_frames", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="fps", min_value=0),
        E.ExpectColumnPairValuesToBeEqual(column_A="frame_bytes", column_B="expected_bytes"),
        E.ExpectColumnValuesToNotBeNull(column="pixel_std"),
        E.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=params.min_pixel_std),
    ]
    return expectations


def validate_clips(
    clips_dir: Path, params: ValidateClipsParams, results_path: Path, docs_dir: Path
) -> SuiteResult:
    frame = clip_summary_frame(clips_dir)
    log.info("validating %d clips from %d shards", len(frame), frame["shard"].nunique())
    return run_suite(frame, "clips", clip_expectations(params), results_path, docs_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", required=True, help="clip shard folder")
    parser.add_argument("--results", required=True, help="validation results JSON to write")
    parser.add_argument("--docs", required=True, help="folder of the Data Docs site (replaced)")
    args = parser.parse_args(argv)
    configure_logging()
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    params = load_params(args.params)
    validate_clips(clips, params.validate_clips, Path(args.results), Path(args.docs))


if __name__ == "__main__":
    run_stage(main)
