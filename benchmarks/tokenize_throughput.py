"""Tokenize throughput: the stage's Ray Data path at 1 and 2 actors against a plain loop.

    python benchmarks/tokenize_throughput.py [--clips data/clips] [--tokenizer DIR]
                                             [--copies 4] [--repeats 3]

Clips/s over the same clip shards with the same model. The plain loop reads the shards in
this process and calls `model.encode` on batches of `tokenize.batch_size` clips of one shape.
Thread budgets match: the plain loop runs torch at 1 thread (the budget of one actor of one
CPU) and at 2 threads (both cores in one process, beside 2 actors); every actor runs torch
at 1 thread (`cpus_per_actor` = 1). The plain loop's figure excludes loading the model.

The stage rows run `tokenize_dataset` + `write_chunks` (Ray Data read, actor pool, ordered
token shard writes) with `tokenize.actors` = 1 and 2 on one local Ray instance of 3 logical
CPUs (the actors plus one for the read tasks), over the corpus once and over `--copies`
copies of its shards (same clips, more of them). Every stage run starts its actor pool: new
worker processes import torch and load the model before the first batch, a fixed cost that
the larger workload spreads over more clips. "start-up" is that cost, estimated from the two
workloads; "steady" is the extra clips divided by the extra time. Ray's own start-up is not
timed. Configurations are interleaved, `--repeats` times each, and the fastest run of each
is used. Without --tokenizer an untrained model of the `tokenizer` params is used: speed
does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from magvit.formats.clip_shards import clip_frames, shard_paths
from magvit.params import Params, load_params
from magvit.runtime.ray_cluster import init_ray
from magvit.tokenization.actor_pool import actor_threads, run_tokenize
from models.tokenizer import MagvitTokenizer

from interleaved_runs import interleaved


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


def stage_run(clips_dir: Path, model_dir: Path, params: Params, out: Path) -> int:
    """The `tokenize` stage (`run_tokenize`) into `out`, removed afterwards; clips written."""
    manifest = run_tokenize(clips_dir, str(model_dir), params, out)
    shutil.rmtree(out)
    return sum(manifest.counts.values())


def copied(clips_dir: Path, copies: int, folder: Path) -> Path:
    """A clip folder holding every shard of `clips_dir` `copies` times: more clips, same
    contents."""
    shards = shard_paths(clips_dir)
    for copy in range(copies):
        for index, path in enumerate(shards):
            target = folder / path.parent.name / f"part-{copy:02d}{index:03d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return folder


def with_pool(params: Params, actors: int) -> Params:
    """`params` with a pool of `actors` tokenizer actors of one CPU each."""
    pool = params.tokenize.model_copy(update={"actors": actors, "cpus_per_actor": 1})
    return params.model_copy(update={"tokenize": pool})


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
    parser.add_argument("--copies", type=int, default=4, help="copies of the corpus (>= 2)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.copies < 2:
        parser.error(f"--copies must be at least 2 (got {args.copies})")

    params = load_params(args.params)
    shards = shard_paths(Path(args.clips))
    if not shards:
        raise SystemExit(f"no clip shards under {args.clips}; run `magvit corpus && magvit decode`")
    batch = params.tokenize.batch_size
    pools = {actors: with_pool(params, actors) for actors in (1, 2)}
    workloads = {1: Path(args.clips)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.tokenizer) if args.tokenizer else Path(tmp) / "tokenizer"
        if not args.tokenizer:
            torch.manual_seed(params.seed)
            MagvitTokenizer(params.tokenizer.config()).save_pretrained(model_dir)
        model = MagvitTokenizer.from_pretrained(model_dir).eval()
        workloads[args.copies] = copied(Path(args.clips), args.copies, Path(tmp) / "copies")
        out = Path(tmp) / "tokens"
        init_ray(num_cpus=3)  # 2 actors + 1 CPU for the read tasks (logical CPUs)
        print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
        configs: dict[str, Callable[[], int]] = {
            "plain 1": lambda: plain_loop(model, shards, batch, threads=1),
            "plain 2": lambda: plain_loop(model, shards, batch, threads=2),
        }
        for actors, pool in pools.items():
            for copies, clips_dir in workloads.items():
                configs[f"stage {actors} x{copies}"] = partial(
                    stage_run, clips_dir, model_dir, pool, out
                )
        runs = interleaved(
            {name: partial(timed, run) for name, run in configs.items()}, args.repeats
        )
        best = fastest(runs)
        load = os.getloadavg()[0]

    clips = best["plain 1"][0]
    print(f"{clips} clips in {len(shards)} shards, batch size {batch}, {model_dir}")
    print(
        f"actors: {actor_threads(pools[1].tokenize)} torch thread each; best of {args.repeats} runs"
    )
    plain = {threads: clips / best[f"plain {threads}"][1] for threads in (1, 2)}
    for threads, rate in plain.items():
        print(f"{f'plain in-process loop, {threads} thread(s)':42s} {rate:8.1f} clips/s")
    print("stage: clips/s end-to-end (ratio to the plain loop at as many threads as actors)")
    rate = {}
    for actors in (1, 2):
        for copies in workloads:
            n, seconds = best[f"stage {actors} x{copies}"]
            rate[actors, copies] = n / seconds
            print(
                f"{f'stage, {actors} actor(s), corpus x{copies} ({n} clips)':42s} "
                f"{n / seconds:8.1f} clips/s (ratio {n / seconds / plain[actors]:.2f})"
            )
        (n1, t1), (nk, tk) = (best[f"stage {actors} x{c}"] for c in workloads)
        steady = (nk - n1) / (tk - t1)
        print(
            f"{f'stage, {actors} actor(s), steady':42s} {steady:8.1f} clips/s "
            f"(ratio {steady / plain[actors]:.2f}), start-up {t1 - n1 / steady:.1f} s per run"
        )
    print(
        "2 actors / 1 actor: "
        + ", ".join(f"{rate[2, c] / rate[1, c]:.2f}x on corpus x{c}" for c in workloads)
    )
    print(f"load average at end: {load:.2f}")


if __name__ == "__main__":
    main()
