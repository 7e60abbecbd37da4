"""Tokenize throughput: the stage's Ray Data path at 1 and 2 actors against a plain loop.

    python benchmarks/tokenize_throughput.py [--clips data/clips] [--tokenizer DIR] [--repeats 3]

Clips/s over the same clip shards with the same model. The plain loop reads the shards in
this process and calls `model.encode` on batches of `tokenize.batch_size` clips of one shape.
Thread budgets match: the plain loop runs torch at 1 thread (the budget of one actor of one
CPU) and at 2 threads (both cores in one process, beside 2 actors); every actor runs torch
at 1 thread (`cpus_per_actor` = 1). The plain loop's figure excludes loading the model.

The stage rows run `tokenize_dataset` + `write_chunks` (Ray Data read, actor pool, ordered
token shard writes) with `tokenize.actors` = 1 and 2 on one local Ray instance of 3 logical
CPUs (the actors plus one for the read tasks). Every stage run starts its actor pool: new
worker processes import torch and load the model before the first batch. "end-to-end" is
clips / the whole run; "steady" leaves that fixed start-up out: the stage also runs over the
shards taken twice, and the extra clips are divided by the extra time. Ray's own start-up is
not timed. Configurations are interleaved, `--repeats` times each, and the fastest run of
each is used. Without --tokenizer an untrained model of the `tokenizer` params is used:
speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from models.tokenizer import MagvitTokenizer
from stages.clip_shards import clip_frames, shard_paths
from stages.params import TokenizeParams, load_params
from stages.ray_runtime import init_ray
from stages.tokenize import (
    actor_threads,
    clip_shard_dataset,
    plan_clip_chunks,
    read_checkpoint,
    tokenize_dataset,
    write_chunks,
)


def plain_loop(model: MagvitTokenizer, shards: list[Path], batch_size: int, threads: int) -> int:
    torch.set_num_threads(threads)
    clips = 0
    for path in shards:
        by_shape = defaultdict(list)
        for row in pq.read_table(path).to_pylist():
            by_shape[(row["num_frames"], row["height"], row["width"])].append(clip_frames(row))
        for frames in by_shape.values():
            for start in range(0, len(frames), batch_size):
                batch = torch.from_numpy(np.stack(frames[start : start + batch_size]))
                clips += len(model.encode(batch).flatten(1).to(torch.int32))
    return clips


def stage_path(model_dir: Path, shards: list[Path], params: TokenizeParams, out: Path) -> int:
    chunks = plan_clip_chunks(shards)
    results = tokenize_dataset(
        clip_shard_dataset(chunks, params.batch_size), read_checkpoint(model_dir), params
    )
    clips = write_chunks(results, chunks, out)["clips"]
    shutil.rmtree(out)
    return clips


def doubled(shards: list[Path], folder: Path) -> list[Path]:
    """Every clip shard twice (as copies under `folder`): twice the clips, same contents."""
    copies = []
    for copy in range(2):
        for index, path in enumerate(shards):
            target = folder / path.parent.name / f"part-{copy:02d}{index:03d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            copies.append(Path(shutil.copyfile(path, target)))
    return copies


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    clips = fn()
    return clips, time.perf_counter() - start


def fastest(runs: dict[str, list[tuple[int, float]]]) -> dict[str, tuple[int, float]]:
    return {name: min(results, key=lambda r: r[1]) for name, results in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="data/clips", help="clip shards (`magvit decode`)")
    parser.add_argument("--tokenizer", help="checkpoint folder (default: untrained, from params)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    params = load_params(args.params)
    shards = shard_paths(Path(args.clips))
    if not shards:
        raise SystemExit(f"no clip shards under {args.clips}; run `magvit corpus && magvit decode`")
    batch = params.tokenize.batch_size
    pools = {
        actors: params.tokenize.model_copy(update={"actors": actors, "cpus_per_actor": 1})
        for actors in (1, 2)
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.tokenizer) if args.tokenizer else Path(tmp) / "tokenizer"
        if not args.tokenizer:
            torch.manual_seed(params.seed)
            MagvitTokenizer(params.tokenizer.config()).save_pretrained(model_dir)
        model = MagvitTokenizer.from_pretrained(model_dir).eval()
        twice = doubled(shards, Path(tmp) / "twice")
        out = Path(tmp) / "tokens"
        init_ray(num_cpus=3)  # 2 actors + 1 CPU for the read tasks (logical CPUs)
        print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        configs: dict[str, Callable[[], int]] = {
            "plain 1": lambda: plain_loop(model, shards, batch, threads=1),
            "plain 2": lambda: plain_loop(model, shards, batch, threads=2),
        }
        for actors, pool in pools.items():
            configs[f"stage {actors}"] = lambda p=pool: stage_path(model_dir, shards, p, out)
            configs[f"stage {actors} x2"] = lambda p=pool: stage_path(model_dir, twice, p, out)
        runs: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for _ in range(args.repeats):
            for name, fn in configs.items():
                runs[name].append(timed(fn))
        best = fastest(runs)
        load = os.getloadavg()[0]

    clips = best["plain 1"][0]
    print(f"{clips} clips in {len(shards)} shards, batch size {batch}, {model_dir}")
    print(f"actors: {actor_threads(pools[1])} torch thread each; best of {args.repeats} runs")
    plain = {threads: clips / best[f"plain {threads}"][1] for threads in (1, 2)}
    for threads, rate in plain.items():
        print(f"{f'plain in-process loop, {threads} thread(s)':40s} {rate:8.1f} clips/s")
    print("stage ratios: against the plain loop at as many threads as actors")
    steady = {}
    for actors in (1, 2):
        (n, once), (n2, twice_s) = best[f"stage {actors}"], best[f"stage {actors} x2"]
        steady[actors] = (n2 - n) / (twice_s - once)
        start_up = once - n / steady[actors]
        print(
            f"{f'stage, {actors} actor(s)':40s} {n / once:8.1f} clips/s end-to-end "
            f"(ratio {n / once / plain[actors]:.2f}), {steady[actors]:.1f} steady "
            f"(ratio {steady[actors] / plain[actors]:.2f}), start-up {start_up:.1f} s"
        )
    print(f"2 actors / 1 actor: {steady[2] / steady[1]:.2f}x steady, "
          f"{best['stage 1'][1] / best['stage 2'][1]:.2f}x end-to-end")  # fmt: skip
    print(f"load average at end: {load:.2f}")


if __name__ == "__main__":
    main()
