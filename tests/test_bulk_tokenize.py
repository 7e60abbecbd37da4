"""`magvit tokenize`: bulk tokenisation of media files and clip shards, resumable, one job
per output folder, and stopped cleanly by a full disk."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_tokenize import DECODE, tiny_tokenizer

from magvit.commands.bulk_tokenize import LOCK_FILE, BulkTokenizeError, run_bulk
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
from conftest import MAGVIT, assert_error_line, run_magvit
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


def same_files(out: Path, full: Path) -> None:
    """`out` holds what the uninterrupted run wrote, file for file and row for row, with no
    duplicate clip, no temporary file and no lock left."""
    resumed, uninterrupted = tables(out), tables(full)
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[k].equals(uninterrupted[k]) for k in resumed)
    ids = load_token_shards(out)["clip_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert read_token_manifest(out) == read_token_manifest(full)
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet") == [
        "manifest.json"
    ]


def read_until(stream: IO[str], text: str) -> str:
    """Read `stream` until `text` has appeared (or the stream ends); returns what was read."""
    seen = ""
    while text not in seen:
        char = stream.read(1)
        if not char:
            break
        seen += char
    return seen


def test_a_killed_job_resumes_to_the_uninterrupted_output(
    corpus, full_run, ray_address, tmp_path, caplog
):
    """A job SIGKILLed mid-run, after a first chunk was finished: the rerun takes over the
    dead job's lock, keeps the finished shard, removes a killed write's temporary file and
    ends with exactly the files of an uninterrupted run."""
    root, media, tokenizer = corpus
    full, _ = full_run
    out = tmp_path / "tokens"
    first = run_bulk(str(media), out, str(tokenizer), PARAMS, max_chunks=1)
    assert first["chunks"] == 1 and first["remaining"] == 2
    with pytest.raises(TokenShardError, match="incomplete"):
        load_token_shards(out)
    done = out / "train" / "part-00000.parquet"
    finished_at = done.stat().st_mtime_ns

    args = [media, out, "--tokenizer", tokenizer, "--params", root / "params.yaml"]
    job = subprocess.Popen(
        [MAGVIT, "tokenize", *map(str, args)],
        env={**os.environ, "RAY_ADDRESS": ray_address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the shard progress bar: the job holds the lock and streams chunks 1 and 2 through Ray
    log = read_until(job.stderr, "0/2 [")
    assert "0/2 [" in log and job.poll() is None, log
    job.kill()
    assert job.wait() == -signal.SIGKILL
    job.stderr.close()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == job.pid  # left behind
    assert not (out / "train" / "part-00001.parquet").exists()  # killed before chunk 1 ended
    (out / "train" / ".part-00001.parquet.0123.tmp").write_bytes(b"half a shard")

    with caplog.at_level(logging.WARNING):
        second = run_bulk(str(media), out, str(tokenizer), PARAMS)
    assert second["chunks"] == 2 and second["remaining"] == 0
    assert f"taking over the stale lock of pid {job.pid} on {socket.gethostname()}" in caplog.text
    assert done.stat().st_mtime_ns == finished_at  # not redone
    same_files(out, full)


def test_a_second_job_is_refused_while_a_first_holds_the_output(
    corpus, tmp_path, magvit_in_process
):
    """A live job's lock (a real process holding it) keeps a second job out before it
    touches anything: the first job's temporary file and the lock stay as they were."""
    root, media, tokenizer = corpus
    out = tmp_path / "tokens"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        in_flight = out / "train" / ".part-00000.parquet.0123.tmp"
        in_flight.parent.mkdir(parents=True)
        in_flight.write_bytes(b"the first job's shard, being written")
        lock = (out / LOCK_FILE).read_text()

        status, _, err = magvit_in_process(
            "tokenize", media, out, "--tokenizer", tokenizer, "--params", root / "params.yaml"
        )
        assert status == 1
        assert err.count("\n") == 1
        assert_error_line(
            err,
            "tokenize",
            f"{out} is in use by another job (pid {holder.pid} on {socket.gethostname()} since ",
            f"lock file: {out / LOCK_FILE}",
        )
        assert in_flight.read_bytes() == b"the first job's shard, being written"
        assert (out / LOCK_FILE).read_text() == lock
        assert not (out / "manifest.json").exists()
    finally:
        holder.stdin.close()  # the holder ends and removes its lock
        assert holder.wait() == 0
    assert not (out / LOCK_FILE).exists()


# a process that holds OUTPUT's lock until its stdin closes
HOLD_LOCK = f"""
import sys
from pathlib import Path
from magvit.formats.output_lock import output_lock
with output_lock(Path(sys.argv[1]), {LOCK_FILE!r}):
    print("locked", flush=True)
    sys.stdin.read()
"""

# a file-size limit that the manifest and lock pass and the first token shard does not
MAX_FILE_BYTES = 2048


def test_a_full_disk_stops_the_job_naming_the_shard_and_a_rerun_completes(
    corpus, full_run, ray_address, tmp_path
):
    """A shard write that fails for want of room (RLIMIT_FSIZE) ends the job with one line
    naming the shard, no traceback, no partial file and the lock released; the same
    command with room finishes the job as if nothing had happened."""
    root, media, tokenizer = corpus
    full, _ = full_run
    shard = Path("train") / "part-00000.parquet"
    assert (full / shard).stat().st_size > MAX_FILE_BYTES > (full / "manifest.json").stat().st_size
    out = tmp_path / "tokens"
    args = ["tokenize", media, out, "--tokenizer", tokenizer, "--params", root / "params.yaml"]

    result = run_magvit(*args, ray_address=ray_address, max_file_bytes=MAX_FILE_BYTES)
    assert result.returncode == 1
    assert_error_line(result.stderr, "tokenize", f"cannot write {out / shard}: File too large")
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("*.tmp"))
    assert not (out / LOCK_FILE).exists()

    assert run_bulk(str(media), out, str(tokenizer), PARAMS)["remaining"] == 0
    same_files(out, full)


def test_an_output_of_another_tokenizer_is_refused(corpus, full_run, tmp_path, magvit_in_process):
    root, media, tokenizer = corpus
    full, _ = full_run
    other = tiny_tokenizer(tmp_path / "other", seed=1)
    before = tables(full)
    status, _, err = magvit_in_process(
        "tokenize", media, full, "--tokenizer", other, "--params", root / "params.yaml"
    )
    assert status == 2 and err.count("\n") == 1
    assert_error_line(
        err, "tokenize", tokenizer_fingerprint(tokenizer), tokenizer_fingerprint(other)
    )
    assert tables(full).keys() == before.keys()
    with pytest.raises(BulkTokenizeError, match="files-per-shard"):
        run_bulk(str(media), full, str(tokenizer), PARAMS.model_copy(
            update={"tokenize": PARAMS.tokenize.model_copy(update={"files_per_shard": 3})}
        ))  # fmt: skip


def test_a_wrong_tokenizer_path_is_named(corpus, tmp_path, magvit_in_process):
    root, media, _ = corpus
    missing = tmp_path / "no-such-tokenizer"
    status, _, err = magvit_in_process(
        "tokenize", media, tmp_path / "out", "--tokenizer", missing,
        "--params", root / "params.yaml",
    )  # fmt: skip
    assert status == 2 and err.count("\n") == 1
    assert_error_line(err, "tokenize", f"tokenizer checkpoint {missing} not found")
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
