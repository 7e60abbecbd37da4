"""Token shards on disk: the Parquet schema (docs/contracts.md), the manifest, the reader.

A token folder holds `<split>/part-*.parquet` (TOKEN_SCHEMA; BULK_TOKEN_SCHEMA from bulk
runs) and `manifest.json`, which names the tokenizer that made the tokens (a fingerprint of
its files), its vocabulary, the token factorisation the MLM uses, the clip and grid shapes and
the counts per split. Downstream code reads tokens with `load_token_shards`, which checks
all of that against the shards.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from magvit.formats.files import shard_paths, write_text_atomic
from models.pretrained import CONFIG_FILE, WEIGHTS_FILE
from models.tokenizer import TokenizerConfig

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"

TOKEN_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int32()),
        ("grid_t", pa.int32()),
        ("grid_h", pa.int32()),
        ("grid_w", pa.int32()),
        ("tokens", pa.list_(pa.int32())),  # raster order (t, h, w)
    ]
)
# bulk runs (`magvit tokenize`) add where each row came from: the input file's path relative
# to INPUT, POSIX style (for clip shard inputs, the clip's own `source`); the DVC stage's
# shards keep TOKEN_SCHEMA
BULK_TOKEN_SCHEMA = TOKEN_SCHEMA.append(pa.field("source_path", pa.string()))
SHARD_SCHEMAS = (TOKEN_SCHEMA, BULK_TOKEN_SCHEMA)


class TokenShardError(ValueError):
    """A token folder is missing, incomplete, or disagrees with its manifest."""


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's config.json and model.safetensors bytes."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = Path(model_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer checkpoint: {path} does not exist")
        digest.update(name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def codebook_bits(config: TokenizerConfig) -> int:
    """Bits per token: LFQ's `bits`, or enough bits for a VQ codebook."""
    return config.bits if config.quantizer == "lfq" else (config.codebook_size - 1).bit_length()


def check_factorisation(config: TokenizerConfig, num_factors: int) -> None:
    """Factorised sub-tokens (models.lfq.factorize_indices) need equal bit groups."""
    bits = codebook_bits(config)
    if bits % num_factors or (num_factors > 1 and config.codebook_size != 2**bits):
        raise ValueError(
            f"num_factors={num_factors} must divide the tokenizer's {bits} bits "
            f"(and a codebook of 2^bits entries when > 1; this one has {config.codebook_size})"
        )


def token_shard_paths(tokens_dir: str | Path, split: str | None = None) -> list[Path]:
    """Token shards of one split or of all (bulk runs keep rejects in `rejects/`: not tokens)."""
    return [p for p in shard_paths(tokens_dir, split) if p.parent.name != "rejects"]


@dataclass(frozen=True)
class TokenManifest:
    """The contents of `manifest.json` (see the module docstring)."""

    tokenizer: dict  # fingerprint, quantizer, bits, codebook_size, temporal/spatial factor
    factorisation: dict  # num_factors, sub_bits: sub-token j = bits [j*sub_bits, (j+1)*sub_bits)
    source: dict  # how the shards were made (input, chunking), to resume or refuse a mix
    shapes: list[dict] = field(default_factory=list)  # {"clip": [T,H,W], "grid": [t,h,w], ...}
    counts: dict[str, int] = field(default_factory=dict)  # clips per split
    complete: bool = False  # false while a (bulk) job is still writing shards
    schema_version: int = SCHEMA_VERSION

    @property
    def fingerprint(self) -> str:
        return self.tokenizer["fingerprint"]

    @property
    def codebook_size(self) -> int:
        return self.tokenizer["codebook_size"]

    @property
    def grids(self) -> list[tuple[int, int, int]]:
        return [tuple(shape["grid"]) for shape in self.shapes]


def new_manifest(
    config: TokenizerConfig, fingerprint: str, num_factors: int, source: dict
) -> TokenManifest:
    check_factorisation(config, num_factors)
    bits = codebook_bits(config)
    tokenizer = {
        "fingerprint": fingerprint,
        "quantizer": config.quantizer,
        "bits": bits,
        "codebook_size": config.codebook_size,
        "temporal_factor": config.temporal_factor,
        "spatial_factor": config.spatial_factor,
    }
    factorisation = {"num_factors": num_factors, "sub_bits": bits // num_factors}
    return TokenManifest(tokenizer, factorisation, source)


def completed_manifest(manifest: TokenManifest, tokens_dir: str | Path) -> TokenManifest:
    """`manifest` with shapes and counts taken from the shards now in `tokens_dir`."""
    paths = token_shard_paths(tokens_dir)
    columns = ["split", "grid_t", "grid_h", "grid_w"]
    table = pq.read_table(paths, columns=columns) if paths else pa.table({c: [] for c in columns})
    counts = Counter(table["split"].to_pylist())
    grids = Counter(
        zip(*(table[c].to_pylist() for c in ("grid_t", "grid_h", "grid_w")), strict=True)
    )
    tf, sf = manifest.tokenizer["temporal_factor"], manifest.tokenizer["spatial_factor"]
    shapes = [
        {"clip": [1 + tf * (t - 1), h * sf, w * sf], "grid": [t, h, w], "clips": n}
        for (t, h, w), n in sorted(grids.items())
    ]
    return TokenManifest(
        manifest.tokenizer,
        manifest.factorisation,
        manifest.source,
        shapes=shapes,
        counts=dict(sorted(counts.items())),
        complete=True,
    )


def write_token_manifest(manifest: TokenManifest, tokens_dir: str | Path) -> Path:
    path = Path(tokens_dir) / MANIFEST_FILE
    write_text_atomic(json.dumps(asdict(manifest), indent=2) + "\n", path)
    return path


def read_token_manifest(tokens_dir: str | Path) -> TokenManifest:
    path = Path(tokens_dir) / MANIFEST_FILE
    if not path.is_file():
        raise TokenShardError(f"{path} does not exist: not a token folder (or not finished)")
    try:
        data = json.loads(path.read_text())
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise TokenShardError(
                f"{path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        return TokenManifest(**data)
    except (json.JSONDecodeError, TypeError, AttributeError) as error:
        raise TokenShardError(f"{path} is not a token manifest: {error}") from None


def load_token_shards(tokens_dir: str | Path, split: str | None = None) -> pa.Table:
    """All token rows of a finished token folder (one split or all), in shard order.

    The table has BULK_TOKEN_SCHEMA when any shard has a `source_path` column (null in
    shards written without one, e.g. before a bulk job was resumed), else TOKEN_SCHEMA.
    Raises TokenShardError when the folder is incomplete, a shard's schema is neither, or
    the row counts disagree with the manifest.
    """
    manifest = read_token_manifest(tokens_dir)
    if not manifest.complete:
        raise TokenShardError(
            f"{tokens_dir} is incomplete (an interrupted job): run it again to finish"
        )
    paths = token_shard_paths(tokens_dir, split)
    schemas = [pq.read_schema(path) for path in paths]
    for path, schema in zip(paths, schemas, strict=True):
        if not any(schema.equals(known) for known in SHARD_SCHEMAS):
            raise TokenShardError(f"{path}: schema {schema} is not the token shard schema")
    bulk = any(schema.equals(BULK_TOKEN_SCHEMA) for schema in schemas)
    schema = BULK_TOKEN_SCHEMA if bulk else TOKEN_SCHEMA
    table = pq.read_table(paths, schema=schema) if paths else schema.empty_table()
    counts = Counter(table["split"].to_pylist())
    expected = {s: n for s, n in manifest.counts.items() if split in (None, s) and n}
    if dict(counts) != expected:
        raise TokenShardError(
            f"{tokens_dir}: clips per split {dict(counts)} disagree with the manifest {expected}"
        )
    return table
