"""The `tokenize` stage, the token shard reader, `validate_tokens` and `detokenize`."""

import json
import re
import shutil
from dataclasses import replace

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
import torch
import yaml
from PIL import Image

from magvit.commands.detokenize import detokenize
from magvit.formats.clip_shards import clip_frames, iter_clip_rows
from magvit.formats.files import write_table_atomic
from magvit.formats.token_shards import (
    TOKEN_SCHEMA,
    TokenShardError,
    load_token_shards,
    read_token_manifest,
    token_shard_paths,
    tokenizer_fingerprint,
)
from magvit.params import ParamsError, parse_params
from magvit.runtime.gx_suite import ValidationFailed
from magvit.tokenization.actor_pool import (
    actor_threads,
    check_capacity,
    clip_shard_dataset,
    plan_clip_chunks,
    run_tokenize,
)
from models.tokenizer import MagvitTokenizer, TokenizerConfig
from stages.validate_tokens import validate_tokens

from clip_fixtures import write_clip_folder
from conftest import assert_error_line, run_magvit

TINY = {"channels": 8, "norm_groups": 4}
DECODE = {"num_frames": 5, "crop_size": 32, "resize_short_side": 32}


def tiny_tokenizer(directory, seed: int = 0):
    torch.manual_seed(seed)
    config = TokenizerConfig.from_dict({**TokenizerConfig.preset("cpu").to_dict(), **TINY})
    MagvitTokenizer(config).save_pretrained(directory)
    return directory


def params(**tokenize):
    return parse_params({"decode": DECODE, "tokenize": {"actors": 1, **tokenize}})


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, ray_local):
    """Clips (train / val / test, videos and images), a tiny tokenizer, one stage run."""
    root = tmp_path_factory.mktemp("tokenize")
    clips = write_clip_folder(root / "clips", per_split={"train": 6, "val": 2, "test": 2})
    model_dir = tiny_tokenizer(root / "tokenizer")
    manifest = run_tokenize(clips, str(model_dir), params(batch_size=4), root / "tokens")
    return root, manifest


def test_tokens_decode_to_the_models_own_reconstruction(tokenized):
    root, _ = tokenized
    model = MagvitTokenizer.from_pretrained(root / "tokenizer").eval()
    table = load_token_shards(root / "tokens")
    clips = list(iter_clip_rows(root / "clips"))
    assert table["clip_id"].to_pylist() == [c["clip_id"] for c in clips]  # clip shard order
    for row, clip in zip(table.to_pylist(), clips, strict=True):
        video = torch.from_numpy(clip_frames(clip).copy())[None]
        grid = (row["grid_t"], row["grid_h"], row["grid_w"])
        assert grid == model.config.latent_shape(*video.shape[1:4])
        tokens = torch.tensor(row["tokens"]).reshape(1, *grid)
        assert torch.equal(tokens, model.encode(video))
        assert torch.equal(model.decode(tokens), model.decode(model.encode(video)))
        assert (row["video_id"], row["split"], row["label"]) == (
            clip["video_id"], clip["split"], clip["label"],
        )  # fmt: skip


def test_shards_follow_the_schema_and_the_manifest_describes_them(tokenized):
    root, manifest = tokenized
    shards = token_shard_paths(root / "tokens")
    assert {p.parent.name for p in shards} == {"train", "val", "test"}
    assert all(pq.read_schema(p).equals(TOKEN_SCHEMA) for p in shards)
    assert not list((root / "tokens").rglob("*.tmp"))
    saved = json.loads((root / "tokens" / "manifest.json").read_text())
    assert saved["schema_version"] == 1 and saved["complete"] is True
    assert saved["tokenizer"] == {
        "fingerprint": tokenizer_fingerprint(root / "tokenizer"),
        "quantizer": "lfq",
        "bits": 18,
        "codebook_size": 2**18,
        "temporal_factor": 4,
        "spatial_factor": 8,
    }
    assert saved["factorisation"] == {"num_factors": 1, "sub_bits": 18}
    clips = list(iter_clip_rows(root / "clips"))
    images = sum(c["num_frames"] == 1 for c in clips)
    assert saved["shapes"] == [
        {"clip": [1, 32, 32], "grid": [1, 4, 4], "clips": images},
        {"clip": [5, 32, 32], "grid": [2, 4, 4], "clips": len(clips) - images},
    ]
    assert saved["counts"] == {
        s: sum(c["split"] == s for c in clips) for s in ("test", "train", "val")
    }
    assert read_token_manifest(root / "tokens") == manifest


def test_same_inputs_give_identical_shards_whatever_the_pool(tokenized, tmp_path):
    root, manifest = tokenized
    again = run_tokenize(
        root / "clips",
        str(root / "tokenizer"),
        params(actors=2, cpus_per_actor=0.5, batch_size=3),
        tmp_path / "tokens",
    )
    first, second = token_shard_paths(root / "tokens"), token_shard_paths(tmp_path / "tokens")
    assert [p.relative_to(root / "tokens") for p in first] == [
        p.relative_to(tmp_path / "tokens") for p in second
    ]
    for a, b in zip(first, second, strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))
    assert again == manifest


def test_reader_refuses_incomplete_or_inconsistent_folders(tokenized, tmp_path):
    root, _ = tokenized
    tokens = shutil.copytree(root / "tokens", tmp_path / "tokens")
    manifest = json.loads((tokens / "manifest.json").read_text())
    (tokens / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(TokenShardError, match="incomplete"):
        load_token_shards(tokens)
    (tokens / "manifest.json").write_text(json.dumps(manifest))
    token_shard_paths(tokens, "val")[0].unlink()
    with pytest.raises(TokenShardError, match="disagree with the manifest"):
        load_token_shards(tokens)


def test_validate_tokens_passes_good_shards(tokenized, tmp_path):
    root, _ = tokenized
    result = validate_tokens(
        root / "tokens",
        root / "clips",
        tmp_path / "out" / "tokens.json",
        tmp_path / "out" / "tokens_docs",
    )
    assert result.success and result.failures == []
    assert (tmp_path / "out" / "tokens.json").is_file() and result.docs_index.is_file()
    again = validate_tokens(
        root / "tokens", root / "clips", tmp_path / "again.json", tmp_path / "again_docs"
    )
    saved = result.results_path.read_bytes()
    assert again.results_path.read_bytes() == saved  # a DVC dep: a rerun keeps its hash
    assert b"run_id" not in saved and str(tmp_path).encode() not in saved


def test_validate_tokens_fails_a_broken_shard_with_a_readable_summary(tokenized, tmp_path):
    root, _ = tokenized
    tokens = shutil.copytree(root / "tokens", tmp_path / "tokens")
    shard = token_shard_paths(tokens, "train")[0]
    rows = pq.read_table(shard).to_pylist()
    rows[0]["tokens"][3] = 2**18  # out of range for 2^18 codes
    rows[1]["tokens"] = rows[1]["tokens"][:-1]  # one token short of the grid
    rows[2]["clip_id"] = rows[3]["clip_id"]  # duplicate id
    rows[4]["clip_id"] = "stranger:0"  # not a clip of the clip shards
    write_table_atomic(pa.Table.from_pylist(rows, schema=TOKEN_SCHEMA), shard)

    with pytest.raises(ValidationFailed) as error:
        validate_tokens(
            tokens,
            root / "clips",
            tmp_path / "out" / "tokens.json",
            tmp_path / "out" / "tokens_docs",
        )
    message = str(error.value)
    for expected in (
        "expect_column_values_to_be_unique {'column': 'clip_id'",
        "'column': 'token_max'",
        "expect_column_pair_values_to_be_equal {'column_A': 'token_count'",
        "'column': 'in_clip_shards'",
    ):
        assert expected in message, message


def test_stage_errors_name_the_problem(tokenized, tmp_path):
    root, _ = tokenized
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        run_tokenize(root / "clips", str(tmp_path / "no-such-tokenizer"), params(), tmp_path / "t")
    odd = parse_params({"decode": {**DECODE, "crop_size": 28, "resize_short_side": 28}})
    with pytest.raises(ParamsError, match="do not fit the tokenizer"):
        run_tokenize(root / "clips", str(root / "tokenizer"), odd, tmp_path / "t")
    with pytest.raises(ParamsError, match="leaves no CPU"):
        check_capacity(params(actors=2).tokenize)


def test_a_full_disk_stops_the_stage_naming_the_shard_and_a_rerun_completes(
    tokenized, tmp_path, ray_address
):
    """`magvit tokenize-clips` under a file-size limit smaller than a token shard
    (RLIMIT_FSIZE, as on a full disk): one line naming the shard, no traceback, no token
    folder, partial shard or build folder left; run again with room, it writes the shards of
    an uninterrupted run."""
    root, manifest = tokenized
    shutil.copytree(root / "clips", tmp_path / "clips")
    shutil.copytree(root / "tokenizer", tmp_path / "tokenizer")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params().model_dump(mode="json")))
    max_bytes = min(p.stat().st_size for p in token_shard_paths(root / "tokens")) // 2
    args = ["tokenize-clips", "--clips", "clips", "--tokenizer", "tokenizer", "--out", "tokens"]

    result = run_magvit(*args, ray_address=ray_address, max_file_bytes=max_bytes, cwd=tmp_path)
    assert result.returncode == 1
    line = assert_error_line(result.stderr, "tokenize-clips", "File too large")
    assert re.search(r"cannot write tokens/(train|val|test)/part-\d{5}\.parquet: ", line), line
    assert not (tmp_path / "tokens").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens")]

    result = run_magvit(*args, ray_address=ray_address, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    again = read_token_manifest(tmp_path / "tokens")
    assert again.source["input"] == "clips" and replace(again, source=manifest.source) == manifest
    for path in token_shard_paths(root / "tokens"):
        again = tmp_path / "tokens" / path.relative_to(root / "tokens")
        assert pq.read_table(again).equals(pq.read_table(path))


def test_each_actor_runs_torch_on_as_many_threads_as_it_holds_cpus():
    threads = [actor_threads(params(cpus_per_actor=c).tokenize) for c in (0.5, 1, 2.5)]
    assert threads == [1, 1, 2]


def test_clip_rows_reach_the_actors_in_blocks_of_the_batch_size_in_chunk_order(tokenized):
    """Blocks of exactly batch_size clips across shard ends (the last block excepted), so no
    actor gets the slow batches of one or two clips; rows keep the plan's order and chunk."""
    root, _ = tokenized
    chunks = plan_clip_chunks(sorted((root / "clips").glob("*/part-*.parquet")))
    context = ray.data.DataContext.get_current()
    reader_before = context.use_datasource_v2
    dataset = clip_shard_dataset(chunks, 4)
    dataset.context.execution_options.preserve_order = True  # as tokenize_dataset sets
    blocks = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert context.use_datasource_v2 == reader_before  # the reader choice is not left behind
    ids_per_shard = {
        (chunk.index, path): pq.read_table(path, columns=["clip_id"])["clip_id"].to_pylist()
        for chunk in chunks
        for path in chunk.inputs
    }
    assert all(len(ids) % 4 for ids in ids_per_shard.values())  # blocks straddle shard ends
    total = sum(len(ids) for ids in ids_per_shard.values())
    assert [block.num_rows for block in blocks] == [4] * (total // 4) + [total % 4]
    rows = [row for block in blocks for row in block.select(["chunk", "clip_id"]).to_pylist()]
    assert [(row["chunk"], row["clip_id"]) for row in rows] == [
        (index, clip_id) for (index, _), ids in ids_per_shard.items() for clip_id in ids
    ]


def test_detokenize_writes_decodable_videos_and_images(tokenized, tmp_path):
    root, _ = tokenized
    written = detokenize(root / "tokens", tmp_path / "out", str(root / "tokenizer"), fps=8)
    table = load_token_shards(root / "tokens")
    assert len(written) == table.num_rows
    model = MagvitTokenizer.from_pretrained(root / "tokenizer").eval()
    for row in table.to_pylist():
        grid = (1, row["grid_t"], row["grid_h"], row["grid_w"])
        expected = model.decode(torch.tensor(row["tokens"]).reshape(grid))[0].numpy()
        stem = tmp_path / "out" / row["clip_id"].replace(":", "_")
        if row["grid_t"] == 1:
            image = np.asarray(Image.open(stem.with_suffix(".png")).convert("RGB"))
            # PNG is lossless; batched decoding may round a rare pixel the other way
            assert np.abs(image.astype(int) - expected[0]).max() <= 1
        else:
            with av.open(str(stem.with_suffix(".mp4"))) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            assert frames.shape == expected.shape == (5, 32, 32, 3)
            luma = np.array([0.299, 0.587, 0.114])  # yuv420p keeps luma at full resolution
            assert np.abs(frames @ luma - expected @ luma).mean() < 6  # another clip: ~25


def test_detokenize_refuses_another_tokenizer(tokenized, tmp_path):
    root, _ = tokenized
    other = tiny_tokenizer(tmp_path / "other", seed=1)
    with pytest.raises(TokenShardError, match=tokenizer_fingerprint(other)):
        detokenize(root / "tokens", tmp_path / "out", str(other))
