import json

import numpy as np
import pyarrow as pa
import pytest

from magvit.formats.clip_shards import CLIP_SCHEMA
from magvit.formats.files import write_table_atomic
from magvit.params import ValidateClipsParams
from magvit.runtime.gx_suite import ValidationFailed
from stages.validate_clips import clip_expectations, validate_clips

PARAMS = ValidateClipsParams(min_pixel_std=1.0, num_classes=8)


def clip_row(video: str, start: int, split: str, label: int | None = 1, seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    return {
        "clip_id": f"{video}:{start}", "video_id": video, "source": f"/videos/{video}.mp4",
        "split": split, "label": label, "start_frame": start, "num_frames": 5,
        "height": 16, "width": 16, "fps": 8.0, "frames": frames.tobytes(),
    }  # fmt: skip


def good_rows() -> list[dict]:
    rows = [clip_row("a", s, "train", seed=s) for s in (0, 4, 8)]
    return rows + [clip_row("b", 0, "val", label=None), clip_row("c", 0, "test", label=7)]


def write_split_shards(clips_dir, rows, schema=CLIP_SCHEMA):
    for split in {r["split"] for r in rows}:
        part = [r for r in rows if r["split"] == split]
        write_table_atomic(
            pa.Table.from_pylist(part, schema=schema), clips_dir / split / "part-00000.parquet"
        )


def test_good_shards_pass_and_write_results_and_docs(tmp_path):
    write_split_shards(tmp_path / "clips", good_rows())
    result = validate_clips(
        tmp_path / "clips", PARAMS, tmp_path / "out" / "clips.json", tmp_path / "out" / "clips_docs"
    )
    assert result.success and result.failures == []
    saved = json.loads(result.results_path.read_text())
    assert saved["success"] is True and saved["statistics"]["evaluated_expectations"] >= 20
    assert result.docs_index.is_file() and "<html" in result.docs_index.read_text().lower()


def test_broken_shard_fails_with_a_readable_summary(tmp_path):
    rows = good_rows()
    rows[1]["clip_id"] = rows[0]["clip_id"]  # duplicate id
    rows[2]["frames"] = rows[2]["frames"][:-10]  # bytes disagree with the shape columns
    rows[3]["frames"] = bytes(len(rows[3]["frames"]))  # an all-black clip
    rows[4]["label"] = 12  # out of range for 8 classes
    write_split_shards(tmp_path / "clips", rows)

    with pytest.raises(ValidationFailed) as error:
        validate_clips(
            tmp_path / "clips",
            PARAMS,
            tmp_path / "out" / "clips.json",
            tmp_path / "out" / "clips_docs",
        )
    message = str(error.value)
    for expected in (
        "expect_column_values_to_be_unique {'column': 'clip_id'",
        "expect_column_pair_values_to_be_equal",
        "'column': 'pixel_std'",
        "'column': 'label'",
    ):
        assert expected in message
    saved = json.loads((tmp_path / "out" / "clips.json").read_text())
    assert saved["success"] is False


def test_missing_split_and_wrong_schema_fail(tmp_path):
    rows = [r for r in good_rows() if r["split"] != "test"]
    loose = pa.schema([f.with_type(pa.int64()) if f.name == "label" else f for f in CLIP_SCHEMA])
    write_split_shards(tmp_path / "clips", rows, schema=loose)
    with pytest.raises(ValidationFailed) as error:
        validate_clips(
            tmp_path / "clips",
            PARAMS,
            tmp_path / "out" / "clips.json",
            tmp_path / "out" / "clips_docs",
        )
    message = str(error.value)
    assert "expect_column_distinct_values_to_contain_set {'column': 'split'" in message
    assert "'column': 'schema_matches'" in message


def validate_into(clips_dir, out_dir) -> bytes:
    """Validate, passing or not, and return the bytes of the results JSON."""
    try:
        validate_clips(clips_dir, PARAMS, out_dir / "clips.json", out_dir / "clips_docs")
    except ValidationFailed:
        pass
    return (out_dir / "clips.json").read_bytes()


RUN_DEPENDENT = ("run_id", "run_time", "validation_time", "ge_load_time", "exception_traceback")


def test_results_json_is_byte_identical_for_the_same_data(tmp_path):
    """The results JSON is a DVC dep of training: a rerun must not change its hash."""
    write_split_shards(tmp_path / "clips", good_rows())
    first = validate_into(tmp_path / "clips", tmp_path / "first")
    second = validate_into(tmp_path / "clips", tmp_path / "second")
    assert first == second
    text = first.decode()
    assert str(tmp_path) not in text
    assert not [key for key in RUN_DEPENDENT if f'"{key}"' in text]
    saved = json.loads(text)
    assert saved["success"] is True
    assert [r["expectation_config"]["type"] for r in saved["results"]] == [
        e.expectation_type for e in clip_expectations(PARAMS)
    ]  # in the suite's order, not GX's metric order
    assert all("id" not in r["expectation_config"] for r in saved["results"])


def test_results_json_of_bad_data_is_identical_and_records_the_failures(tmp_path):
    rows = good_rows()
    rows[1]["clip_id"] = rows[0]["clip_id"]  # duplicate id
    rows[4]["label"] = 12  # out of range for 8 classes
    write_split_shards(tmp_path / "clips", rows)
    first = validate_into(tmp_path / "clips", tmp_path / "first")
    assert first == validate_into(tmp_path / "clips", tmp_path / "second")
    saved = json.loads(first)
    failed = [r["expectation_config"]["kwargs"] for r in saved["results"] if not r["success"]]
    assert saved["success"] is False and saved["statistics"]["unsuccessful_expectations"] == 2
    assert [kwargs.get("column") for kwargs in failed] == ["clip_id", "label"]


def test_no_shards_is_a_clear_failure(tmp_path):
    with pytest.raises(ValidationFailed, match="no clip shards"):
        validate_clips(
            tmp_path / "clips",
            PARAMS,
            tmp_path / "out" / "clips.json",
            tmp_path / "out" / "clips_docs",
        )
