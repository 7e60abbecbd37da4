"""`tokenize_corpus`: `magvit tokenize` (bulk tokenisation) as a flow for other teams.

The command is resumable (finished shards are kept), so a retry continues where the failed
attempt stopped. The summary is read from the output files: token rows per split, rejects,
shards, and the throughput of this run (rows it added per second).
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from magvit.formats.files import shard_paths
from pipelines.shell import stream_command

REJECTS = "rejects"


class TokenizeFailed(RuntimeError):
    """`magvit tokenize` exited non-zero; the message quotes the end of its output."""


def shard_rows(output: Path) -> dict[str, int]:
    """Rows per folder of `OUTPUT/<folder>/part-*.parquet` (the splits, and `rejects`)."""
    if not output.is_dir():
        return {}
    return {
        folder.name: sum(pq.ParquetFile(path).metadata.num_rows for path in shards)
        for folder in sorted(output.iterdir())
        if folder.is_dir() and (shards := shard_paths(output, folder.name))
    }


@task(cache_policy=NO_CACHE, task_run_name="magvit tokenize")
def run_tokenize(
    input_path: str, output: Path, tokenizer: str, repo: Path, params: str, timeout_s: float
) -> None:
    cmd = ["magvit", "tokenize", input_path, str(output), "--tokenizer", tokenizer]
    cmd += ["--params", params]
    result = stream_command(cmd, repo, timeout_s, get_run_logger())
    if result.returncode:
        raise TokenizeFailed(f"`magvit tokenize` exited {result.returncode}:\n{result.output}")


def summary_rows(before: dict[str, int], after: dict[str, int]) -> list[dict]:
    return [
        {"folder": name, "rows": after[name], "added this run": after[name] - before.get(name, 0)}
        for name in after
    ]


@flow(name="tokenize_corpus")
def tokenize_corpus(
    input_path: str,
    output_path: str,
    tokenizer: str = "models:/magvit2-tokenizer@champion",
    repo_dir: str = ".",
    params: str = "params.yaml",
    retries: int = 2,
    retry_delay_s: float = 30,
    timeout_s: float = 24 * 3600,
) -> dict:
    """Tokenize `input_path` (videos, images or clip shards) into token shards.

    `tokenizer` is a model folder or an MLflow model URI; `params` (decode and tokenize
    sections) and relative paths are read from `repo_dir`.
    """
    repo = Path(repo_dir).resolve()
    out = repo / output_path
    before = shard_rows(out)
    started = time.monotonic()
    run_tokenize.with_options(retries=retries, retry_delay_seconds=retry_delay_s)(
        input_path, out, tokenizer, repo, params, timeout_s
    )
    seconds = time.monotonic() - started
    after = shard_rows(out)
    rows = summary_rows(before, after)
    tokens = sum(row["rows"] for row in rows if row["folder"] != REJECTS)
    added = sum(row["added this run"] for row in rows if row["folder"] != REJECTS)
    summary = {
        "output": str(out),
        "clips": tokens,
        "rejects": after.get(REJECTS, 0),
        "splits": {name: count for name, count in after.items() if name != REJECTS},
        "seconds": round(seconds, 1),
        "clips_per_s": round(added / seconds, 2) if seconds > 0 else 0.0,
    }
    create_table_artifact(
        rows,
        key="tokenize-corpus",
        description=(
            f"{tokens} clips tokenized into {out}, {summary['rejects']} rejects; this run "
            f"added {added} in {seconds:.0f} s ({summary['clips_per_s']} clips/s)"
        ),
    )
    get_run_logger().info("tokenize_corpus summary: %s", summary)
    return summary
