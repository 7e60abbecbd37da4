"""Stage `tokenize`: clip shards -> token shards with a pool of tokenizer actors on Ray Data.

Ray Data reads `data/clips/<split>/part-*.parquet`; a fixed pool of `tokenize.actors` actors
(each loads the checkpoint once; one GPU each when `tokenize.use_gpu`) encodes batches of
`tokenize.batch_size` clips; the driver receives the token rows in input order and writes one
token shard per clip shard to `data/tokens/<split>/part-NNNNN.parquet`, then
`data/tokens/manifest.json`, all in a new folder that replaces `data/tokens` when complete (a
failing run leaves the last one). Same clips and checkpoint -> the same shards, row for row.

The actor class and the chunk writer here are shared with bulk tokenisation (`magvit tokenize`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from tqdm import tqdm

from magvit.formats.clip_shards import REJECT_SCHEMA, clip_frames, keep_rejects, shard_paths
from magvit.formats.files import atomic_folder, write_table_atomic
from magvit.formats.token_shards import (
    BULK_TOKEN_SCHEMA,
    TOKEN_SCHEMA,
    TokenManifest,
    completed_manifest,
    new_manifest,
    tokenizer_fingerprint,
    write_token_manifest,
)
from magvit.params import Params, ParamsError, TokenizeParams, check_clip_shape
from magvit.runtime.ray_cluster import (
    UNREACHABLE_INPUT,
    UnreachableInput,
    driver_table_dataset,
    init_ray,
    joined_cluster,
)
from models.pretrained import CONFIG_FILE, WEIGHTS_FILE
from models.tokenizer import MagvitTokenizer, TokenizerConfig

log = logging.getLogger("tokenize")

# the columns a clip row brings to the actors, besides the clip shard columns it reads
CLIP_COLUMNS = ["clip_id", "video_id", "source", "split", "label", "num_frames", "height", "width"]
# what the actors return: token rows, plus the chunk they belong to and, for a clip that
# could not be tokenized (or decoded, in bulk runs), its reject record (error_type not null)
RESULT_SCHEMA = pa.schema(
    list(TOKEN_SCHEMA)
    + [("chunk", pa.int32())]
    + [f for f in REJECT_SCHEMA if f.name in ("source", "stage", "error_type", "message")]
)


def tokenizer_config(model_dir: Path) -> TokenizerConfig:
    """The config of a checkpoint directory; a clear error naming a wrong path."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file() or not (Path(model_dir) / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"tokenizer checkpoint {model_dir} not found: expected {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} in that folder"
        )
    return MagvitTokenizer.from_pretrained(model_dir).config


class TokenizeBatch:
    """Ray Data callable class: clip rows -> token rows. The model is loaded once per actor.

    The checkpoint travels as bytes, so workers on other nodes need no shared filesystem.
    A batch may mix clip shapes (videos and T = 1 images); each shape is encoded separately.
    torch uses `num_threads` threads: the actor's CPUs, whatever OMP_NUM_THREADS says, so a
    pool of actors never runs more threads than the CPUs it holds.
    """

    def __init__(self, checkpoint: dict[str, bytes], use_gpu: bool = False, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in checkpoint.items():
                (Path(tmp) / name).write_bytes(data)
            self.model = MagvitTokenizer.from_pretrained(tmp, map_location=self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict] = [{} for _ in rows]
        by_shape: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            if row.get("error_type"):  # rejected upstream: pass the record through
                out[i] = _result(row, error=(row["stage"], row["error_type"], row["message"]))
            else:
                by_shape[(row["num_frames"], row["height"], row["width"])].append(i)
        for shape, indices in by_shape.items():
            try:
                grid = self.model.config.latent_shape(*shape)
            except ValueError as error:
                for i in indices:
                    out[i] = _result(rows[i], error=("tokenize", "unsupported_shape", str(error)))
                continue
            tokens = self.encode(np.stack([clip_frames(rows[i]) for i in indices]))
            for i, clip_tokens in zip(indices, tokens, strict=True):
                out[i] = _result(rows[i], grid=grid, tokens=clip_tokens)
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> int32 [B, t*h*w] in raster order (t, h, w)."""
        tokens = self.model.encode(torch.from_numpy(frames).to(self.device))
        return tokens.flatten(1).to(torch.int32).cpu().numpy()


def _result(row: dict, grid=(None, None, None), tokens=None, error=(None, None, None)) -> dict:
    keep = ("clip_id", "video_id", "split", "label", "source")
    return {
        **{k: row.get(k) for k in keep},
        "chunk": row["chunk"],
        **dict(zip(("grid_t", "grid_h", "grid_w"), grid, strict=True)),
        "tokens": None if tokens is None else tokens.tolist(),
        **dict(zip(("stage", "error_type", "message"), error, strict=True)),
    }


def read_checkpoint(model_dir: Path) -> dict[str, bytes]:
    return {name: (Path(model_dir) / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


def check_capacity(params: TokenizeParams) -> None:
    """The pool must fit the Ray instance and leave a CPU for the read (and decode) tasks;
    otherwise Ray Data waits for resources that never come. A joined cluster may grow (an
    autoscaler adds nodes when the pool asks), so there a shortfall is only a warning."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    taken = params.actors * params.cpus_per_actor
    problems = []
    if taken + 1 > cpus:
        problems.append(
            f"tokenize.actors x tokenize.cpus_per_actor = {taken:g} CPUs leaves no CPU of the "
            f"Ray cluster's {cpus:g} for reading clips; lower tokenize.actors or cpus_per_actor"
        )
    if params.use_gpu and params.actors > gpus:
        problems.append(
            f"tokenize.use_gpu needs one GPU per actor ({params.actors}); the Ray cluster has "
            f"{gpus:g}: lower tokenize.actors or set use_gpu: false"
        )
    for problem in problems:
        if not joined_cluster():
            raise ParamsError(problem)
        log.warning("%s (waiting for the cluster to grow)", problem)


def local_cpus(params: TokenizeParams, other_workers: int = 1) -> int:
    """Logical CPUs for a local Ray instance: the actors plus the read/decode workers."""
    return math.ceil(params.actors * params.cpus_per_actor) + other_workers


def actor_threads(params: TokenizeParams) -> int:
    """torch threads per tokenizer actor: its whole CPUs, at least one."""
    return max(1, math.floor(params.cpus_per_actor))


def tokenize_dataset(
    ds: ray.data.Dataset, checkpoint: dict[str, bytes], params: TokenizeParams
) -> ray.data.Dataset:
    """Clip rows (CLIP_COLUMNS, frames, chunk) -> RESULT_SCHEMA rows, in input order."""
    check_capacity(params)
    results = ds.map_batches(
        TokenizeBatch,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "use_gpu": params.use_gpu,
            "num_threads": actor_threads(params),
        },
        batch_size=params.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=params.actors),
        num_cpus=params.cpus_per_actor,
        num_gpus=1 if params.use_gpu else 0,
    )
    results.context.execution_options.preserve_order = True  # deterministic shards
    results.context.enable_progress_bars = False  # the driver shows one bar per job instead
    return results


@dataclass(frozen=True)
class Chunk:
    """A fixed group of inputs that becomes one token shard: `<split>/part-<index>.parquet`."""

    index: int
    split: str
    inputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def shard(self, out_dir: Path) -> Path:
        return out_dir / self.split / self.name

    def rejects(self, out_dir: Path) -> Path:
        return out_dir / "rejects" / self.name


def plan_hash(chunks: list[Chunk], root: Path) -> str:
    """Identifies a chunking of the inputs (paths relative to `root`) for resumed runs."""
    digest = hashlib.sha256()
    for chunk in chunks:
        relative = [Path(p).relative_to(root).as_posix() for p in chunk.inputs]
        digest.update(repr((chunk.index, chunk.split, relative)).encode())
    return digest.hexdigest()[:16]


def plan_clip_chunks(shards: list[Path], files_per_shard: int = 1, start: int = 0) -> list[Chunk]:
    """Clip shards, in sorted order, grouped `files_per_shard` at a time within each split."""
    by_split: dict[str, list[str]] = defaultdict(list)
    for path in sorted(shards):
        by_split[_shard_split(path)].append(str(path.resolve()))  # workers' cwd may differ
    chunks = []
    for split, paths in by_split.items():
        for i in range(0, len(paths), files_per_shard):
            chunks.append(Chunk(start + len(chunks), split, tuple(paths[i : i + files_per_shard])))
    return chunks


def _shard_split(path: Path) -> str:
    splits = set(pq.read_table(path, columns=["split"])["split"].to_pylist())
    if len(splits) > 1:
        raise ValueError(f"{path} mixes splits {sorted(splits)}; a clip shard holds one split")
    return splits.pop() if splits else path.parent.name


def clip_shard_dataset(chunks: list[Chunk], rows_per_block: int) -> ray.data.Dataset:
    """Clip rows of the chunks' shards with their chunk index, in chunk order.

    The rows are cut into blocks of exactly `rows_per_block` clips (the last one excepted):
    the actor pool works on blocks, so a shard read as one block would keep all but one
    actor idle, and blocks of other sizes leave batches of one or two clips, which torch
    encodes several times slower per clip (a single clip misses the oneDNN convolution).
    """
    chunk_of = {path: chunk.index for chunk in chunks for path in chunk.inputs}
    with first_parquet_reader():
        ds = driver_table_dataset(list(chunk_of), [*CLIP_COLUMNS, "frames"], include_paths=True)

    def add_chunk(batch: pa.Table) -> pa.Table:
        chunk = [chunk_of[path] for path in batch["path"].to_pylist()]
        return batch.drop_columns(["path"]).append_column("chunk", pa.array(chunk, pa.int32()))

    # batches of rows_per_block here too, not whole shards: the blocks then stream to the
    # actors as they are cut (measured: whole shards cost 2 actors about 10 % of their clips/s)
    ds = ds.map_batches(add_chunk, batch_format="pyarrow", batch_size=rows_per_block)
    return ds.repartition(target_num_rows_per_block=rows_per_block, strict=True)


@contextmanager
def first_parquet_reader() -> Iterator[None]:
    """Ray Data's first Parquet reader for the reads started inside the block.

    The default reader of recent Ray versions (`DataContext.use_datasource_v2`) starts a
    pool of 32 footer-reading actors for every read: 2-3 s before the first clip on a quiet
    2-core machine, far more on a busy one, and about 1 CPU-second, to list a few local
    shards. The first reader lists them in the driver; the rows read are the same.
    """
    context = ray.data.DataContext.get_current()
    default = getattr(context, "use_datasource_v2", False)
    context.use_datasource_v2 = False
    try:
        yield
    finally:
        context.use_datasource_v2 = default


def rows_by_chunk(batches: Iterable[pa.Table], chunks: list[Chunk]) -> Iterator[pa.Table]:
    """One table per planned chunk, in plan order (empty when a chunk produced no rows).

    Rows arrive in input order (preserve_order), so a chunk is complete when the next begins.
    """
    order = {chunk.index: i for i, chunk in enumerate(chunks)}
    pending: list[pa.Table] = []
    done = 0  # chunks yielded so far
    for batch in batches:
        for index in dict.fromkeys(batch["chunk"].to_pylist()):
            position = order[index]
            if position < done:
                raise RuntimeError(f"rows of chunk {index} arrived after the chunk was written")
            while done < position:
                yield _concat(pending)
                pending, done = [], done + 1
            pending.append(batch.filter(pc.equal(batch["chunk"], index)))
    while done < len(chunks):
        yield _concat(pending)
        pending, done = [], done + 1


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


def write_chunk(
    table: pa.Table, chunk: Chunk, out_dir: Path, source_paths: dict[str, str] | None = None
) -> tuple[int, int]:
    """Write a chunk's rejects (if any), then its token shard (the mark of a finished chunk).

    With `source_paths` (bulk jobs) each token row also gets `source_path`: its `source`
    looked up there, or the `source` itself (BULK_TOKEN_SCHEMA). Returns (clips, rejects).
    """
    failed = pc.is_valid(table["error_type"])
    rejects = table.filter(failed).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
    tokens, schema = table.filter(pc.invert(failed)), TOKEN_SCHEMA
    if source_paths is not None:
        paths = [source_paths.get(source, source) for source in tokens["source"].to_pylist()]
        tokens = tokens.append_column("source_path", pa.array(paths, pa.string()))
        schema = BULK_TOKEN_SCHEMA
    tokens = tokens.select(schema.names).cast(schema)
    wrong_split = set(tokens["split"].to_pylist()) - {chunk.split}
    if wrong_split:
        raise RuntimeError(f"chunk {chunk.index} ({chunk.split}) holds rows of {wrong_split}")
    if rejects.num_rows:
        write_table_atomic(rejects, chunk.rejects(out_dir))
    write_table_atomic(tokens, chunk.shard(out_dir))
    return tokens.num_rows, rejects.num_rows


def write_chunks(
    results: ray.data.Dataset,
    chunks: list[Chunk],
    out_dir: Path,
    source_paths: dict[str, str] | None = None,
) -> dict:
    """Drive the dataset and write each chunk as it completes (write_chunk); returns
    clip/reject counts."""
    counts = {"chunks": 0, "clips": 0, "rejects": 0}
    batches = results.iter_batches(batch_size=None, batch_format="pyarrow")
    tables = zip(chunks, rows_by_chunk(batches, chunks), strict=True)
    progress = tqdm(tables, total=len(chunks), unit="shard")
    for chunk, table in progress:
        unreachable = table.filter(pc.equal(table["error_type"], UNREACHABLE_INPUT))
        if unreachable.num_rows:  # a worker without the driver's files: stop, record nothing
            raise UnreachableInput(unreachable["message"][0].as_py())
        clips, rejects = write_chunk(table, chunk, out_dir, source_paths)
        for reject in table.filter(pc.is_valid(table["error_type"])).to_pylist():
            log.warning("rejected %s: %s", reject["source"], reject["message"])
        counts["chunks"] += 1
        counts["clips"] += clips
        counts["rejects"] += rejects
        progress.set_postfix(clips=counts["clips"], rejects=counts["rejects"])
    return counts


def run_tokenize(clips_dir: Path, tokenizer: str, params: Params, out_dir: Path) -> TokenManifest:
    """Tokenize every clip shard under `clips_dir` into `out_dir`, built beside it and swapped
    in when complete: a failing run leaves the last `out_dir` as it was."""
    # imported here, not at the top: the actors import this module, and mlflow would add
    # seconds to each actor's start
    from magvit.runtime.mlflow_models import model_dir_from_uri

    model_dir = model_dir_from_uri(str(tokenizer))
    config = tokenizer_config(model_dir)
    check_clip_shape(params, config)
    shards = shard_paths(clips_dir)
    if not shards:
        raise FileNotFoundError(f"no clip shards under {clips_dir}/<split>/part-*.parquet")
    chunks = plan_clip_chunks(shards)
    source = {
        "input": str(clips_dir),
        "files_per_shard": 1,
        "plan": plan_hash(chunks, clips_dir.resolve()),
    }
    manifest = new_manifest(
        config, tokenizer_fingerprint(model_dir), params.tokenize.num_factors, source
    )
    init_ray(num_cpus=local_cpus(params.tokenize))
    log.info("tokenizing %d clip shards from %s with %s", len(shards), clips_dir, model_dir)
    clips = clip_shard_dataset(chunks, params.tokenize.batch_size)
    results = tokenize_dataset(clips, read_checkpoint(model_dir), params.tokenize)
    with atomic_folder(out_dir) as building:  # replaces out_dir when complete
        counts = write_chunks(results, chunks, building)
        if counts["rejects"]:
            kept = keep_rejects(pq.read_table(building / "rejects"), "tokenize")
            raise RuntimeError(
                f"{counts['rejects']} clips could not be tokenized (listed in {kept}); "
                f"{out_dir} is left as it was"
            )
        manifest = completed_manifest(manifest, building)
        write_token_manifest(manifest, building)
    log.info("wrote %d token shards, clips per split %s", counts["chunks"], manifest.counts)
    return manifest
