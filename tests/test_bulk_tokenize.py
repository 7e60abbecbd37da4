"""`magvit tokenize`: bulk tokenisation of media files and clip shards, resumable."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_tokenize import DECODE, tiny_tokenizer

from magvit.commands.bulk_tokenize import BulkTokenizeError, main, run_bulk
from magvit.formats.clip_shards import clip_frames, iter_clip_rows
from magvit.formats.corpus_manifest import ManifestEntry, video_id_for
from magvit.formats.token_shards import (
    BULK_TOKEN_SCHEMA,
    TokenShardError,
    load_token_shards,
    read_token_manifest,
    token_shard_paths,
    tokenizer_fingerprint,
)
from magvit.media.clip_decoding import clip_spec, clips_from_entry
from magvit.params import parse_params
from models.tokenizer import MagvitTokenizer

from clip_fixtures import write_clip_folder
from media import index_video, png, textured_video

PARAMS = parse_params(
    {"decode": {**DECODE, "workers": 1}, "tokenize": {"actors": 1, "files_per_shard": 2}}
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Five files in nested folders, in three chunks of two: videos, images, a corrupt file."""
    root = tmp_path_factory.mktemp("bulk")
    media = root / "media"
    (media / "clips").mkdir(parents=True)
    textured_video(media / "a.mp4", num_frames=48)
    index_video(media / "clips" / "b.mp4", num_frames=48, fps=24)
    c, e = (np.random.default_rng(seed) for seed in (1, 2))
    png(media / "stills" / "c.png", c.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    (media / "d.mp4").write_bytes(b"this is not a video")
    png(media / "stills" / "more" / "e.png", e.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(PARAMS.model_dump(mode="json")))
    return root, media, tiny_tokenizer(root / "tokenizer")


@pytest.fixture(scope="module")
def full_run(corpus, ray_local):
    root, media, tokenizer = corpus
    summary = run_bulk(str(media), root / "full", str(tokenizer), PARAMS)
    return root / "full", summary


def tables(out_dir):
    return {p.relative_to(out_dir): pq.read_table(p) for p in sorted(out_dir.rglob("*.parquet"))}


def test_bulk_writes_the_token_schema_rejects_and_manifest(corpus, full_run):
    root, media, tokenizer = corpus
    out, summary = full_run
    assert summary == {"chunks": 3, "clips": summary["clips"], "rejects": 1, "remaining": 0}
    assert [p.relative_to(out).as_posix() for p in token_shard_paths(out)] == [
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
    ]
    rejects = pq.read_table(out / "rejects" / "part-00001.parquet").to_pylist()
    assert [(r["source"], r["stage"], r["error_type"]) for r in rejects] == [
        (str((media / "d.mp4").resolve()), "decode", "unreadable_container")
    ]
    manifest = read_token_manifest(out)
    assert manifest.complete and manifest.fingerprint == tokenizer_fingerprint(tokenizer)
    assert manifest.source["files_per_shard"] == 2 and manifest.source["chunks"] == 3

    # every token row is the model's encoding of the clip the decode stage makes of that
    # file, and names the file by its path under INPUT
    table = load_token_shards(out)
    assert table.schema.equals(BULK_TOKEN_SCHEMA)
    assert all(pq.read_schema(p).equals(BULK_TOKEN_SCHEMA) for p in token_shard_paths(out))
    model = MagvitTokenizer.from_pretrained(tokenizer).eval()
    expected = []
    for name in ("a.mp4", "clips/b.mp4", "stills/c.png", "stills/more/e.png"):
        path = (media / name).resolve()
        entry = ManifestEntry(str(path), video_id_for(path, media.resolve()), None, "train")
        for clip in clips_from_entry(entry, clip_spec(PARAMS.decode)).table.to_pylist():
            tokens = model.encode(torch.from_numpy(clip_frames(clip).copy())[None])
            expected.append((clip["clip_id"], "train", None, tokens.flatten().tolist(), name))
    rows = table.select(["clip_id", "split", "label", "tokens", "source_path"]).to_pylist()
    assert [tuple(r.values()) for r in rows] == expected
    assert summary["clips"] == len(expected) > 5


def test_an_interrupted_job_finishes_on_rerun_without_redoing_shards(corpus, full_run, tmp_path):
    root, media, tokenizer = corpus
    full, _ = full_run
    out = tmp_path / "tokens"
    first = run_bulk(str(media), out, str(tokenizer), PARAMS, max_chunks=1)
    assert first["chunks"] == 1 and first["remaining"] == 2
    with pytest.raises(TokenShardError, match="incomplete"):
        load_token_shards(out)
    done = out / "train" / "part-00000.parquet"
    finished_at = done.stat().st_mtime_ns
    (out / "train" / ".part-00001.parquet.0123.tmp").write_bytes(b"half a shard")  # a killed write

    second = run_bulk(str(media), out, str(tokenizer), PARAMS)
    assert second["chunks"] == 2 and second["remaining"] == 0
    assert done.stat().st_mtime_ns == finished_at  # not redone
    assert not list(out.rglob("*.tmp"))
    resumed, uninterrupted = tables(out), tables(full)
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[k].equals(uninterrupted[k]) for k in resumed)
    ids = load_token_shards(out)["clip_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert read_token_manifest(out) == read_token_manifest(full)


def test_an_output_of_another_tokenizer_is_refused(corpus, full_run, tmp_path, capsys):
    root, media, tokenizer = corpus
    full, _ = full_run
    other = tiny_tokenizer(tmp_path / "other", seed=1)
    before = tables(full)
    with pytest.raises(SystemExit) as error:
        main(
            [
                str(media),
                str(full),
                "--tokenizer",
                str(other),
                "--params",
                str(root / "params.yaml"),
            ]
        )
    message = str(error.value)
    assert tokenizer_fingerprint(tokenizer) in message and tokenizer_fingerprint(other) in message
    assert tables(full).keys() == before.keys()
    with pytest.raises(BulkTokenizeError, match="files-per-shard"):
        run_bulk(str(media), full, str(tokenizer), PARAMS.model_copy(
            update={"tokenize": PARAMS.tokenize.model_copy(update={"files_per_shard": 3})}
        ))  # fmt: skip


def test_a_wrong_tokenizer_path_is_named(corpus, tmp_path):
    root, media, _ = corpus
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(SystemExit, match="no-such-tokenizer"):
        main(
            [
                str(media),
                str(tmp_path / "out"),
                "--tokenizer",
                str(missing),
                "--params",
                str(root / "params.yaml"),
            ]
        )
    assert not (tmp_path / "out").exists()


def test_clip_shards_keep_their_split(corpus, ray_local, tmp_path):
    root, _, tokenizer = corpus
    clips = write_clip_folder(tmp_path / "clips", per_split={"train": 2, "val": 1, "test": 1})
    summary = run_bulk(str(clips), tmp_path / "tokens", str(tokenizer), PARAMS)
    assert summary["rejects"] == 0 and summary["remaining"] == 0
    table = load_token_shards(tmp_path / "tokens")
    rows = list(iter_clip_rows(clips))
    assert table["clip_id"].to_pylist() == [r["clip_id"] for r in rows]
    assert table["split"].to_pylist() == [r["split"] for r in rows]
    assert table["label"].to_pylist() == [r["label"] for r in rows]
    assert table["source_path"].to_pylist() == [r["source"] for r in rows]
    for split in ("train", "val", "test"):
        assert set(load_token_shards(tmp_path / "tokens", split)["split"].to_pylist()) == {split}
