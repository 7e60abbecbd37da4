"""Tokenize throughput: the stage's Ray Data path at 1 and 2 actors against a plain loop.

    python benchmarks/tokenize_throughput.py [--clips data/clips] [--tokenizer DIR] [--repeats 2]

Clips/s over the same clip shards with the same model. The plain loop reads the shards in
this process and calls `model.encode` on batches of `tokenize.batch_size` clips of one shape
(torch using every core). The stage rows run `tokenize_dataset` + `write_chunks` (Ray Data
read, actor pool, ordered token shard writes) with `tokenize.actors` = 1 and 2 on one local
Ray instance; each actor is one CPU. The ratio is stage / plain loop: the pipeline's overhead
(below 1) or its gain from parallel actors (above 1). Without --tokenizer an untrained model
of the `tokenizer` params is used: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from models.tokenizer import MagvitTokenizer
from stages.clip_shards import clip_frames, shard_paths
from stages.params import load_params
from stages.ray_runtime import init_ray
from stages.tokenize import (
    clip_shard_dataset,
    plan_clip_chunks,
    read_checkpoint,
    tokenize_dataset,
    write_chunks,
)


def plain_loop(model: MagvitTokenizer, shards: list[Path], batch_size: int) -> int:
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


def stage_path(model_dir: Path, shards: list[Path], params, out_dir: Path) -> int:
    chunks = plan_clip_chunks(shards)
    results = tokenize_dataset(
        clip_shard_dataset(chunks, params.batch_size), read_checkpoint(model_dir), params
    )
    return write_chunks(results, chunks, out_dir)["clips"]


def best_rate(fn, repeats: int) -> tuple[float, int]:
    best, clips = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        clips = fn()
        best = max(best, clips / (time.perf_counter() - start))
    return best, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default="data/clips", help="clip shards (`magvit decode`)")
    parser.add_argument("--tokenizer", help="checkpoint folder (default: untrained, from params)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    params = load_params(args.params)
    shards = shard_paths(Path(args.clips))
    if not shards:
        raise SystemExit(f"no clip shards under {args.clips}; run `magvit corpus && magvit decode`")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.tokenizer) if args.tokenizer else Path(tmp) / "tokenizer"
        if not args.tokenizer:
            torch.manual_seed(params.seed)
            MagvitTokenizer(params.tokenizer.config()).save_pretrained(model_dir)
        model = MagvitTokenizer.from_pretrained(model_dir).eval()
        batch = params.tokenize.batch_size
        plain, clips = best_rate(lambda: plain_loop(model, shards, batch), args.repeats)
        print(f"{clips} clips in {len(shards)} shards, batch size {batch}, {model_dir}")
        print(f"{'plain in-process encode loop':36s} {plain:8.1f} clips/s")

        init_ray(num_cpus=3)  # 2 actors + 1 CPU for the read tasks (logical CPUs)
        for actors in (1, 2):
            pool = params.tokenize.model_copy(update={"actors": actors, "cpus_per_actor": 1})
            out = Path(tmp) / f"tokens-{actors}"
            run = partial(stage_path, model_dir, shards, pool, out)
            rate, _ = best_rate(run, args.repeats)
            print(
                f"{f'stage, {actors} actor(s)':36s} {rate:8.1f} clips/s   ratio {rate / plain:.2f}"
            )


if __name__ == "__main__":
    main()
