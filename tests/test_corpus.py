import csv
from pathlib import Path

import numpy as np
import pytest

from magvit.formats.corpus_manifest import read_corpus_manifest
from magvit.media.synthetic import CLASS_NAMES, ShapeVideoSpec, render_shape_video
from magvit.params import CorpusParams, SyntheticParams
from stages import corpus

from media import textured_video

SMALL = CorpusParams(
    synthetic=SyntheticParams(
        videos_per_class=3, num_frames=24, size=48, val_per_class=1, test_per_class=1
    ),
    real_test=["bikes.mp4"],
    images=["coffee", "camera", "astronaut"],
    image_val=["camera"],
    image_test=["astronaut"],
)


def test_embedded_corpus_has_labelled_real_and_image_items(tmp_path):
    entries = corpus.build_embedded_corpus(SMALL, seed=0, out=tmp_path / "raw")
    synthetic = [e for e in entries if "/synthetic/" in e.path]
    real = [e for e in entries if "/real/" in e.path]
    images = [e for e in entries if e.is_image]

    assert len(CLASS_NAMES) >= 8
    assert sorted({e.label for e in synthetic}) == list(range(len(CLASS_NAMES)))
    assert {e.split for e in synthetic} == {"train", "val", "test"}
    assert len(real) >= 1 and all(e.label is None for e in real)
    assert [e.split for e in real if e.path.endswith("bikes.mp4")] == ["test"]
    assert {e.split for e in images} == {"train", "val", "test"}
    assert len({e.video_id for e in entries}) == len(entries)
    for entry in entries:
        assert (tmp_path / "raw").joinpath(entry.path.split("raw/", 1)[1]).stat().st_size > 0


def test_synthetic_videos_are_deterministic_by_seed():
    a = render_shape_video(ShapeVideoSpec(label=5, num_frames=12, size=48, seed=7))
    b = render_shape_video(ShapeVideoSpec(label=5, num_frames=12, size=48, seed=7))
    c = render_shape_video(ShapeVideoSpec(label=5, num_frames=12, size=48, seed=8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 10 and not np.array_equal(a[0], a[-1]), "frames move and are not flat"


def test_synthetic_mp4s_are_the_same_bytes_every_build(tmp_path):
    """x264 reads heap bytes it never wrote; without a fixed fill, rebuilding the corpus in
    one process gave other bytes for most videos."""
    builds = [corpus.build_synthetic_videos(SMALL, seed=0, out=tmp_path / str(i)) for i in range(3)]
    contents = [[Path(entry.path).read_bytes() for entry in build] for build in builds]
    assert contents[0] == contents[1] == contents[2]


def test_manifest_is_written_and_read_back(in_tmp):
    (in_tmp / "params.yaml").write_text(
        "corpus:\n  synthetic: {videos_per_class: 2, num_frames: 12, size: 32, "
        "val_per_class: 0, test_per_class: 1}\n  images: [coffee]\n"
    )
    written = corpus.run("params.yaml", in_tmp / "data" / "raw")
    read = read_corpus_manifest(
        in_tmp / "data" / "raw" / "manifest.csv", root=in_tmp / "data" / "raw"
    )
    assert [(e.video_id, e.label, e.split) for e in read] == [
        (e.video_id, e.label, e.split) for e in written
    ]
    # the files were written in a new folder that then became data/raw: the paths say data/raw
    assert [e.path for e in read] == [e.path for e in written]
    assert sorted(p.name for p in (in_tmp / "data").iterdir()) == ["raw"]


def test_user_folder_and_glob_are_used_in_place(tmp_path):
    folder = tmp_path / "mine"
    a = textured_video(folder / "a.mp4")
    b = textured_video(folder / "sub" / "b.mp4")
    (folder / "readme.txt").write_text("not media")
    entries = corpus.collect_user_corpus(str(folder))
    assert [e.path for e in entries] == [str(a), str(b)]
    assert all(e.label is None and e.split == "train" for e in entries)
    globbed = corpus.collect_user_corpus(str(folder / "**" / "*.mp4"))
    assert [e.video_id for e in globbed] == [e.video_id for e in entries]


def test_user_manifest_csv_keeps_labels_and_splits(tmp_path):
    video = textured_video(tmp_path / "clip.mp4")
    manifest = tmp_path / "list.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "split"], ["clip.mp4", "4", "val"]])
    (entry,) = corpus.collect_user_corpus(str(manifest))
    assert (entry.path, entry.label, entry.split) == (str(video), 4, "val")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["clip.mp4", "1", "holdout"], "split must be one of"),
        (["clip.mp4", "-2", "train"], "label"),
    ],
)
def test_bad_manifest_rows_name_the_line(tmp_path, row, message):
    manifest = tmp_path / "list.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "split"], row])
    with pytest.raises(ValueError, match=f"list.csv:2: {message}"):
        read_corpus_manifest(manifest)


def test_bad_sources_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="not 'embedded', a folder, a glob or a manifest"):
        corpus.collect_user_corpus(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="matches no video or image"):
        corpus.collect_user_corpus(str(tmp_path / "*.mp4"))


def test_manifest_paths_resolve_against_the_csv_folder_not_the_current_one(in_tmp):
    """A relative path in a user's CSV names a file beside the CSV, even when the current
    folder holds a file of that name; the manifest the corpus stage writes for it reads
    back to the same files, from any current folder."""
    beside = textured_video(in_tmp / "videos" / "clip.mp4")
    (in_tmp / "clip.mp4").write_bytes(b"a decoy in the current folder")
    (in_tmp / "videos" / "list.csv").write_text("path,label\nclip.mp4,3\nsub/../clip.mp4,4\n")
    (in_tmp / "params.yaml").write_text("corpus:\n  source: videos/list.csv\n")

    written = corpus.run("params.yaml", Path("data/raw"))
    assert [(e.path, e.label) for e in written] == [("videos/clip.mp4", 3), ("videos/clip.mp4", 4)]
    with (in_tmp / "data" / "raw" / "manifest.csv").open(newline="") as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == ["../../videos/clip.mp4"] * 2
    assert read_corpus_manifest(Path("data/raw/manifest.csv")) == written
    elsewhere = read_corpus_manifest(in_tmp / "data" / "raw" / "manifest.csv")
    assert all(Path(e.path).samefile(beside) for e in elsewhere)
    assert [e.video_id for e in elsewhere] == [e.video_id for e in written]
