"""`magvit tokenize`: bulk, resumable tokenisation of a folder of videos, images or clip shards.

INPUT is a folder or glob of video/image files, or a folder of clip shards
(`<split>/part-*.parquet` or `part-*.parquet`). The inputs, sorted, are cut into fixed chunks
of `--files-per-shard` files; each chunk streams through Ray Data (decode with the `decode`
params -> the tokenizer actor pool of the `tokenize` stage) and becomes one token shard,
`OUTPUT/<split>/part-<chunk>.parquet` (split `train` for plain files), written atomically.
Each token row names its input in `source_path`: the file's path relative to INPUT (for clip
shards, the clip's own `source`), so `magvit detokenize` can name its output after it.
Files that cannot be decoded or tokenized go to `OUTPUT/rejects/part-<chunk>.parquet`.

Run it again after an interruption (even a SIGKILL) and it does only the chunks whose shard
is missing. `OUTPUT/manifest.json` names the tokenizer's fingerprint and the chunking: a
different tokenizer or chunking is refused rather than mixed into the same folder.
`OUTPUT/tokenize.lock` (pid, host, start time) keeps a second job out of OUTPUT while one
runs; the lock of a job that was killed is taken over (magvit.formats.output_lock).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray.data

from magvit.cli import run_stage
from magvit.errors import UsageError
from magvit.formats.clip_shards import CLIP_SCHEMA
from magvit.formats.corpus_manifest import ManifestEntry, find_media, video_id_for
from magvit.formats.files import SHARD_GLOB, shard_paths
from magvit.formats.output_lock import output_lock
from magvit.formats.token_shards import (
    MANIFEST_FILE,
    TokenManifest,
    TokenShardError,
    completed_manifest,
    new_manifest,
    read_token_manifest,
    token_shard_paths,
    tokenizer_fingerprint,
    write_token_manifest,
)
from magvit.logs import configure_logging
from magvit.media.clip_decoding import clip_spec, clips_from_entry
from magvit.media.video_decode import ClipSpec
from magvit.params import Params, check_clip_shape, load_params, parse_params
from magvit.runtime.mlflow_models import model_dir_from_uri
from magvit.runtime.ray_cluster import init_ray
from magvit.tokenization.actor_pool import (
    CLIP_COLUMNS,
    RESULT_SCHEMA,
    Chunk,
    clip_shard_dataset,
    local_cpus,
    plan_clip_chunks,
    plan_hash,
    read_checkpoint,
    tokenize_dataset,
    tokenizer_config,
    write_chunks,
)

log = logging.getLogger("bulk_tokenize")

LOCK_FILE = "tokenize.lock"

# decoded clip rows (or one reject row per bad file), as the tokenizer actors read them
DECODED_SCHEMA = pa.schema(
    [CLIP_SCHEMA.field(name) for name in [*CLIP_COLUMNS, "frames"]]
    + [RESULT_SCHEMA.field(name) for name in ("chunk", "stage", "error_type", "message")]
)


class BulkTokenizeError(ValueError):
    """The inputs or the output folder do not allow the job (the message says why)."""


def find_inputs(source: str) -> tuple[str, list[Path], Path]:
    """("clips", shards, root) for a folder of clip shards, else ("media", files, root)."""
    folder = Path(source)
    if folder.is_dir():
        shards = shard_paths(folder) or sorted(folder.glob(SHARD_GLOB))
        if shards:
            return "clips", shards, folder
    try:
        files, root = find_media(source)
    except ValueError:
        raise BulkTokenizeError(
            f"INPUT {source!r} holds no clip shards (part-*.parquet) and no video or image files"
        ) from None
    return "media", files, root


def plan_media_chunks(files: list[Path], files_per_shard: int) -> list[Chunk]:
    paths = [str(f.resolve()) for f in files]
    return [
        Chunk(i, "train", tuple(paths[start : start + files_per_shard]))
        for i, start in enumerate(range(0, len(paths), files_per_shard))
    ]


def decode_files(batch: pa.Table, spec: ClipSpec, root: str) -> pa.Table:
    """Ray Data task: media files (path, chunk) -> clip rows, or one reject row per bad file.
    The driver listed every path, so one missing here is a row of UNREACHABLE_INPUT, which
    stops the job (write_chunks) where a reject would be recorded."""
    tables = []
    for item in batch.to_pylist():
        entry = ManifestEntry(
            item["path"], video_id_for(Path(item["path"]), Path(root)), None, "train"
        )
        result = clips_from_entry(entry, spec, driver_sees=True)
        if result.reject:
            rows = [{**result.reject, "split": entry.split, "chunk": item["chunk"]}]
        else:
            rows = [{**row, "chunk": item["chunk"]} for row in result.table.to_pylist()]
        tables.append(pa.Table.from_pylist(rows, schema=DECODED_SCHEMA))
    return pa.concat_tables(tables) if tables else DECODED_SCHEMA.empty_table()


def media_dataset(chunks: list[Chunk], root: Path, spec: ClipSpec) -> ray.data.Dataset:
    items = [{"path": path, "chunk": chunk.index} for chunk in chunks for path in chunk.inputs]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        decode_files,
        fn_kwargs={"spec": spec, "root": str(root.resolve())},
        batch_size=1,
        batch_format="pyarrow",
    )


def source_paths(kind: str, inputs: list[Path], root: Path) -> dict[str, str]:
    """Media inputs: each file's row `source` (its resolved path) -> its path relative to
    INPUT, POSIX style (find_media's files all lie under root as written). Clip shard rows
    need no entry: their source path is their own `source`."""
    if kind == "clips":
        return {}
    return {str(path.resolve()): path.relative_to(root).as_posix() for path in inputs}


def prepare_output(output: Path, manifest: TokenManifest) -> None:
    """Refuse an OUTPUT made by another tokenizer or chunking; clear partial files; (re)start."""
    if (output / MANIFEST_FILE).exists():
        previous = read_token_manifest(output)
        if previous.fingerprint != manifest.fingerprint:
            raise BulkTokenizeError(
                f"{output} holds tokens from tokenizer {previous.fingerprint}, but --tokenizer "
                f"has fingerprint {manifest.fingerprint}; use a new OUTPUT folder rather than "
                "mix tokens of two tokenizers"
            )
        if previous.source.get("plan") != manifest.source["plan"]:
            raise BulkTokenizeError(
                f"{output} was started from {previous.source.get('input')!r} with "
                f"--files-per-shard {previous.source.get('files_per_shard')}; resume with the "
                "same INPUT and --files-per-shard, or use a new OUTPUT folder"
            )
    elif token_shard_paths(output):
        raise BulkTokenizeError(
            f"{output} holds token shards but no {MANIFEST_FILE}, so their tokenizer is unknown; "
            "use a new OUTPUT folder"
        )
    for partial in output.rglob(".*.tmp"):  # left by a killed writer
        partial.unlink()
    write_token_manifest(manifest, output)


@dataclass(frozen=True)
class BulkPlan:
    """What a job will do: its inputs, their chunks, and the manifest its OUTPUT must have."""

    kind: str  # "clips" or "media"
    inputs: list[Path]
    root: Path
    chunks: list[Chunk]
    manifest: TokenManifest
    model_dir: Path


def plan_bulk(source: str, tokenizer: str, params: Params) -> BulkPlan:
    """Find the inputs of `source` and cut them into chunks; check them against the model."""
    model_dir = model_dir_from_uri(tokenizer)
    config = tokenizer_config(model_dir)
    kind, inputs, root = find_inputs(source)
    per_shard = params.tokenize.files_per_shard
    if kind == "clips":
        chunks = plan_clip_chunks(inputs, per_shard)
    else:
        check_clip_shape(params, config)
        chunks = plan_media_chunks(inputs, per_shard)
    plan = {"input": source, "kind": kind, "files_per_shard": per_shard, "chunks": len(chunks)}
    manifest = new_manifest(
        config,
        tokenizer_fingerprint(model_dir),
        params.tokenize.num_factors,
        {**plan, "plan": plan_hash(chunks, root.resolve())},
    )
    return BulkPlan(kind, inputs, root, chunks, manifest, model_dir)


def run_bulk(
    source: str,
    output: Path,
    tokenizer: str,
    params: Params,
    max_chunks: int | None = None,
) -> dict:
    """Tokenize the chunks of `source` that `output` lacks (at most `max_chunks` of them),
    holding OUTPUT's lock from before its temporary files are cleared until the end."""
    plan = plan_bulk(source, tokenizer, params)
    with output_lock(output, LOCK_FILE):
        prepare_output(output, plan.manifest)
        return tokenize_pending(plan, output, params, max_chunks)


def tokenize_pending(
    plan: BulkPlan, output: Path, params: Params, max_chunks: int | None = None
) -> dict:
    """Write the shards `output` lacks (at most `max_chunks`); the manifest once all exist."""
    chunks = plan.chunks
    pending = [chunk for chunk in chunks if not chunk.shard(output).exists()]
    log.info(
        "%s: %d %s files in %d chunks, %d done, %d to do",
        plan.manifest.source["input"], len(plan.inputs), plan.kind, len(chunks),
        len(chunks) - len(pending), len(pending),
    )  # fmt: skip
    pending = pending[:max_chunks] if max_chunks is not None else pending
    counts = {"chunks": 0, "clips": 0, "rejects": 0}
    if pending:
        init_ray(num_cpus=local_cpus(params.tokenize, params.decode.workers))
        if plan.kind == "clips":
            clips = clip_shard_dataset(pending, params.tokenize.batch_size)
        else:
            clips = media_dataset(pending, plan.root, clip_spec(params.decode))
        results = tokenize_dataset(clips, read_checkpoint(plan.model_dir), params.tokenize)
        sources = source_paths(plan.kind, plan.inputs, plan.root)
        counts = write_chunks(results, pending, output, sources)
    remaining = sum(not chunk.shard(output).exists() for chunk in chunks)
    if not remaining:
        write_token_manifest(completed_manifest(plan.manifest, output), output)
    log.info("this run: %s; chunks left: %d", counts, remaining)
    return {**counts, "remaining": remaining}


def with_overrides(params: Params, **tokenize: int | None) -> Params:
    """`params` with the `tokenize` values given on the command line, validated like the file."""
    raw = params.model_dump()
    raw["tokenize"].update({k: v for k, v in tokenize.items() if v is not None})
    return parse_params(raw, "the command line")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Interrupted? Run the same command again: finished shards are kept.",
    )
    parser.add_argument("input", help="folder or glob of videos/images, or a clip shard folder")
    parser.add_argument("output", help="token shard folder (created, or resumed)")
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer checkpoint folder or MLflow model URI (models:/magvit2-tokenizer@champion)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (decode, tokenize)")
    parser.add_argument(
        "--batch-size", type=int, help="clips per encode call (tokenize.batch_size)"
    )
    parser.add_argument("--actors", type=int, help="tokenizer actors (tokenize.actors)")
    parser.add_argument(
        "--files-per-shard",
        type=int,
        help="input files per output shard, the unit of resume (tokenize.files_per_shard)",
    )
    parser.add_argument(
        "--max-chunks", type=int, help="stop after this many chunks (resume later); default all"
    )
    args = parser.parse_args(argv)
    configure_logging()
    params = with_overrides(
        load_params(args.params),
        batch_size=args.batch_size,
        actors=args.actors,
        files_per_shard=args.files_per_shard,
    )
    try:
        run_bulk(args.input, Path(args.output), args.tokenizer, params, args.max_chunks)
    except (BulkTokenizeError, TokenShardError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None


if __name__ == "__main__":
    run_stage(main)
