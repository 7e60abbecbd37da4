import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from magvit.formats.clip_shards import CLIP_SCHEMA, REJECT_SCHEMA, clip_frames, iter_clip_rows
from magvit.formats.corpus_manifest import ManifestEntry, read_corpus_manifest, video_id_for
from magvit.media.clip_decoding import (
    TASK_WEIGHT,
    clip_spec,
    file_weight,
    input_sizes,
    plan_tasks,
    run_decode,
)
from magvit.media.video_decode import ClipSpec, RejectedInput, decode_file
from magvit.media.video_encode import write_mp4
from magvit.params import DecodeParams, parse_params

from conftest import assert_error_line, run_magvit
from media import audio_only, index_video, png, textured_video, truncated_copy

SPEC = ClipSpec(fps=8, resize_short_side=72, crop_size=64, num_frames=9, stride=4, max_clips=64)


def grey_levels(frames: np.ndarray) -> np.ndarray:
    """Recover the source frame index from index_video frames (level 8 * i)."""
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / 8).astype(int)


def test_fps_resampling_keeps_every_third_frame(tmp_path):
    video = index_video(tmp_path / "v.mp4", num_frames=30, fps=24)  # 1.25 s
    decoded = decode_file(video, SPEC)
    # 1.25 s at 8 fps -> 10 frames, the source frames shown at k / 8 s: 0, 3, 6, ...
    assert decoded.frames.shape == (10, 64, 64, 3)
    assert list(grey_levels(decoded.frames)) == list(range(0, 30, 3))
    assert decoded.source_frames == 30 and decoded.fps == 8


def test_fps_upsampling_repeats_frames(tmp_path):
    video = index_video(tmp_path / "v.mp4", num_frames=6, fps=4)  # 1.5 s
    spec = ClipSpec(fps=8, resize_short_side=64, crop_size=64, num_frames=9, stride=4, max_clips=4)
    decoded = decode_file(video, spec)
    assert list(grey_levels(decoded.frames)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_clip_count_crop_and_stride_for_a_known_video(tmp_path, ray_local):
    # 48 frames at 24 fps = 2 s -> 16 frames at 8 fps -> clips start at 0 and 4 (8 + 9 > 16)
    frames = np.zeros((48, 96, 160, 3), dtype=np.uint8)
    frames[:, :, :30] = (255, 0, 0)  # a red band on the left that the centre crop removes
    frames[:, :, 30:] = (0, 0, 200)
    frames[:, :, :, 1] = (4 * np.arange(48))[:, None, None]  # frame index in green
    path = tmp_path / "raw" / "known.mp4"
    write_mp4(frames, path, fps=24)
    entry = ManifestEntry(str(path), video_id_for(path, tmp_path / "raw"), 3, "train")

    params = DecodeParams(fps=8, resize_short_side=72, crop_size=64, num_frames=9, stride=4)
    metrics = run_decode([entry], params, tmp_path / "clips")

    rows = list(iter_clip_rows(tmp_path / "clips"))
    assert [r["start_frame"] for r in rows] == [0, 4]
    assert metrics["clips"] == 2 and metrics["source_frames"] == 48 and metrics["rejects"] == 0
    for row in rows:
        assert row["clip_id"] == f"{entry.video_id}:{row['start_frame']}"
        assert (row["num_frames"], row["height"], row["width"]) == (9, 64, 64)
        assert row["label"] == 3 and row["split"] == "train" and row["fps"] == 8
        clip = clip_frames(row)
        assert clip.shape == (9, 64, 64, 3)
        assert clip[..., 0].max() < 60, "the red band should be cropped away"
        green = np.round(clip[..., 1].reshape(9, -1).mean(axis=1) / 4).astype(int)
        expected = 3 * (row["start_frame"] + np.arange(9))  # every third source frame
        assert np.abs(green - expected).max() <= 1


def test_image_becomes_a_single_frame_clip(tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    decoded = decode_file(png(tmp_path / "img.png", array), SPEC)
    assert decoded.is_image and decoded.fps == 0.0
    assert decoded.frames.shape == (1, 64, 64, 3)


def test_shards_follow_the_schema_and_split_by_row_count(tmp_path, ray_local):
    root = tmp_path / "raw"
    entries = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        path = textured_video(root / f"v{i}.mp4", num_frames=48, fps=24)
        entries.append(ManifestEntry(str(path), video_id_for(path, root), None, split))
    image = png(root / "still.png", np.full((70, 70, 3), 90, dtype=np.uint8))
    entries.append(ManifestEntry(str(image), video_id_for(image, root), None, "train"))

    params = DecodeParams(
        fps=8, resize_short_side=64, crop_size=64, num_frames=5, stride=5, clips_per_shard=4
    )
    metrics = run_decode(entries, params, tmp_path / "clips")

    # 16 frames -> starts 0, 5, 10 -> 3 clips per video; the image adds one T = 1 clip
    assert metrics["clips_per_split"] == {"train": 7, "val": 3, "test": 3}
    train_shards = sorted((tmp_path / "clips" / "train").glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in train_shards] == [4, 3]
    for shard in (tmp_path / "clips").glob("*/part-*.parquet"):
        assert pq.read_schema(shard).equals(CLIP_SCHEMA)
    assert not list((tmp_path / "clips").rglob("*.tmp")), "no temporary files left behind"
    rows = list(iter_clip_rows(tmp_path / "clips"))
    assert len({r["clip_id"] for r in rows}) == len(rows) == 13
    assert [r["num_frames"] for r in rows if r["source"] == str(image)] == [1]


def test_more_workers_than_ray_cpus_still_decodes_every_file(tmp_path, ray_local, caplog):
    root = tmp_path / "raw"
    paths = [textured_video(root / f"v{i}.mp4", num_frames=48, fps=24) for i in range(3)]
    entries = [ManifestEntry(str(p), video_id_for(p, root), None, "train") for p in paths]

    metrics = run_decode(entries, DecodeParams(workers=8), tmp_path / "clips")

    assert metrics["clips"] == 6 and metrics["rejects"] == 0
    assert "decode.workers = 8, but the Ray cluster has 2 CPUs" in caplog.text


def test_every_kind_of_bad_file_is_rejected_and_the_rest_decoded(tmp_path, ray_local):
    root = tmp_path / "raw"
    root.mkdir()
    good = textured_video(root / "good.mp4", num_frames=48, fps=24)
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    text = root / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    long_video = textured_video(root / "long.mp4", num_frames=96, fps=24)
    cut = truncated_copy(long_video, root / "cut.mp4", keep=0.6)
    audio = audio_only(root / "audio.mp4")
    short = textured_video(root / "short.mp4", num_frames=6, fps=24)  # 2 frames at 8 fps
    missing = root / "missing.mp4"
    files = [good, empty, text, cut, audio, short, missing]
    entries = [ManifestEntry(str(p), video_id_for(p, root), None, "train") for p in files]

    metrics = run_decode(entries, DecodeParams(), tmp_path / "clips")

    rejects = pq.read_table(tmp_path / "clips" / "rejects.parquet")
    assert rejects.schema.equals(REJECT_SCHEMA)
    reasons = {Path(r["source"]).name: r["error_type"] for r in rejects.to_pylist()}
    assert reasons == {
        "empty.mp4": "empty_file",
        "notes.mp4": "unreadable_container",
        "cut.mp4": "unreadable_container",  # the moov atom sits at the end and was cut off
        "audio.mp4": "no_video_stream",
        "short.mp4": "too_short",
        "missing.mp4": "missing_file",
    }
    assert all(r["stage"] == "decode" and r["message"] for r in rejects.to_pylist())
    assert metrics["rejects"] == 6
    assert {r["source"] for r in iter_clip_rows(tmp_path / "clips")} == {str(good)}


def test_truncated_stream_with_index_up_front_is_rejected(tmp_path):
    frames = np.random.default_rng(2).integers(0, 255, (96, 64, 64, 3), dtype=np.uint8)
    source = tmp_path / "fast.mp4"
    write_mp4(frames, source, fps=24, faststart=True)
    cut = truncated_copy(source, tmp_path / "fast_cut.mp4", keep=0.5)
    with pytest.raises(RejectedInput) as error:
        decode_file(cut, SPEC)
    assert error.value.error_type in {"truncated", "decode_error"}
    assert "fast_cut.mp4" in str(error.value)


def test_small_files_share_a_task_and_a_heavy_file_goes_alone(tmp_path):
    def entry(name: str, size: int) -> ManifestEntry:
        path = tmp_path / name
        path.write_bytes(b"\0" * size)
        return ManifestEntry(str(path), name, None, "train")

    small = [entry(f"small{i}.mp4", 1000) for i in range(12)]
    heavy = entry("heavy.mp4", TASK_WEIGHT)
    missing = ManifestEntry(str(tmp_path / "missing.mp4"), "missing", None, "train")
    entries = [*small[:6], heavy, *small[6:], missing]

    sizes = input_sizes(entries)
    tasks = plan_tasks(entries, sizes)

    assert [e for task in tasks for e in task] == entries  # every entry once, in order
    assert [heavy] in tasks
    assert len(tasks) < len(entries) / 3
    weights = [sum(file_weight(sizes[e.path]) for e in task) for task in tasks if len(task) > 1]
    assert all(weight <= TASK_WEIGHT for weight in weights)


def test_a_full_disk_stops_decode_naming_the_shard_and_a_rerun_completes(
    tmp_path, ray_address, magvit_in_process, monkeypatch
):
    """`magvit decode` under a file-size limit smaller than a shard (RLIMIT_FSIZE, as on a
    full disk): one line naming the shard, no traceback, no partial shard; run again with
    room, it writes every clip."""
    videos = [textured_video(tmp_path / "raw" / f"v{i}.mp4", num_frames=48) for i in range(2)]
    (tmp_path / "raw" / "manifest.csv").write_text("path\nv0.mp4\nv1.mp4\n")  # CSV-relative
    decode = {"num_frames": 5, "crop_size": 32, "resize_short_side": 32, "workers": 1}
    params = parse_params({"decode": decode}).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["decode", "--manifest", "raw/manifest.csv", "--out", "clips", "--metrics", "m.json"]
    max_bytes = 8192  # a clip alone is 5 x 32 x 32 x 3 = 15,360 bytes of noise

    result = run_magvit(*args, ray_address=ray_address, max_file_bytes=max_bytes, cwd=tmp_path)
    assert result.returncode == 1
    shard = Path("clips") / "train" / "part-00000.parquet"
    assert_error_line(result.stderr, "decode", f"cannot write {shard}: File too large")
    assert not list((tmp_path / "clips").rglob("*.parquet"))
    assert not list((tmp_path / "clips").rglob("*.tmp"))
    assert not list(tmp_path.glob(".clips*"))  # nor the folder the shards were written in

    monkeypatch.chdir(tmp_path)
    assert magvit_in_process(*args)[0] == 0
    rows = list(iter_clip_rows(tmp_path / "clips"))
    assert {row["source"] for row in rows} == {f"raw/{video.name}" for video in videos}
    assert json.loads((tmp_path / "m.json").read_text())["clips"] == len(rows) > 2
    assert not list((tmp_path / "clips").rglob("*.tmp"))


def test_a_decode_that_rejects_every_file_is_one_line_and_keeps_the_last_clips(
    tmp_path, ray_local, magvit_in_process, monkeypatch
):
    """Every input rejected: one line naming the inputs, the reasons and a file listing the
    rejects, no traceback; the clips of the last good run stay as they were, with no
    temporary folder beside them."""
    monkeypatch.chdir(tmp_path)
    textured_video(tmp_path / "raw" / "good.mp4", num_frames=48)
    textured_video(tmp_path / "raw" / "short.mp4", num_frames=6)  # 2 frames at 8 fps
    (tmp_path / "raw" / "empty.mp4").write_bytes(b"")
    decode = {"num_frames": 5, "crop_size": 32, "resize_short_side": 32, "workers": 1}
    params = parse_params({"decode": decode}).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["decode", "--manifest", "raw/manifest.csv", "--out", "clips", "--metrics", "m.json"]
    (tmp_path / "raw" / "manifest.csv").write_text("path\ngood.mp4\n")
    assert magvit_in_process(*args)[0] == 0
    clips = {p: p.read_bytes() for p in (tmp_path / "clips").rglob("*") if p.is_file()}

    (tmp_path / "raw" / "manifest.csv").write_text("path\nshort.mp4\nempty.mp4\n")
    status, _, stderr = magvit_in_process(*args)
    assert status == 1
    line = assert_error_line(
        stderr,
        "decode",
        "no clips: all 2 input files of raw/manifest.csv were rejected (",
        "too_short 1",
        "empty_file 1",
        "raw/short.mp4: 2 frames at 8 fps, fewer than one clip of 5 frames",
        "; clips is left as it was",
    )
    kept = Path(re.search(r"the rejects are listed in (\S+\.parquet);", line).group(1))
    try:
        rejects = pq.read_table(kept)
        assert rejects.schema.equals(REJECT_SCHEMA)
        assert rejects["source"].to_pylist() == ["raw/short.mp4", "raw/empty.mp4"]
    finally:
        kept.unlink()
    assert {p: p.read_bytes() for p in (tmp_path / "clips").rglob("*") if p.is_file()} == clips
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "m.json", "params.yaml", "raw"]


def test_inputs_named_by_file_uris_decode_as_their_paths_do(tmp_path, ray_local):
    """A manifest may name its files by URI (pyarrow's filesystems: file://, s3://, gs://),
    kept as written; they decode to the clips their paths give, and a URI naming nothing is
    a missing_file reject."""
    root = tmp_path / "raw"
    video = textured_video(root / "v.mp4", num_frames=48, fps=24)
    image = png(root / "still.png", np.full((70, 70, 3), 90, dtype=np.uint8))
    gone = (root / "gone.mp4").as_uri()
    manifest = tmp_path / "manifest.csv"
    rows = [f"{video.as_uri()},train", f"{image.as_uri()},val", f"{gone},train"]
    manifest.write_text("path,split\n" + "\n".join(rows) + "\n")
    entries = read_corpus_manifest(manifest)
    assert [e.path for e in entries] == [video.as_uri(), image.as_uri(), gone]
    assert entries[0].video_id != video_id_for(video, root)  # the URI's own id

    params = DecodeParams(fps=8, resize_short_side=64, crop_size=64, num_frames=5, stride=5)
    metrics = run_decode(entries, params, tmp_path / "clips")
    assert metrics["rejects"] == 1
    rejects = pq.read_table(tmp_path / "clips" / "rejects.parquet").to_pylist()
    assert [(r["source"], r["error_type"]) for r in rejects] == [(gone, "missing_file")]
    by_source = {}
    for row in iter_clip_rows(tmp_path / "clips"):
        by_source.setdefault(row["source"], []).append(clip_frames(row))
    spec = clip_spec(params)
    for path in (video, image):
        frames = decode_file(path, spec).frames
        clips = by_source[path.as_uri()]
        assert np.array_equal(clips[0], frames[: len(clips[0])]), path.name
