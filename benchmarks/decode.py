"""Decode throughput: the stage's per-file path against a bare PyAV loop, and 1 vs 2 workers.

    python benchmarks/decode.py [--manifest data/raw/manifest.csv] [--repeats 3]

Frames/s counts source frames decoded. The bare loop decodes every frame and converts it
to RGB at full size: the machine's limit for PyAV. The stage path also resamples, resizes
and crops; it converts only the frames it keeps. The stage rows run `run_decode` (Ray tasks,
shard writing) with `decode.workers` = 1 and 2 on one local Ray instance of 2 CPUs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av

from stages.decode import clip_spec, run_decode
from stages.manifest import read_manifest
from stages.params import load_params
from stages.ray_runtime import init_ray
from stages.video_decode import decode_file


def bare_pyav(paths: list[Path]) -> int:
    frames = 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                frames += 1
    return frames


def stage_per_file(paths: list[Path], spec) -> int:
    return sum(decode_file(path, spec).source_frames for path in paths)


def best_rate(fn, repeats: int) -> tuple[float, int]:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        frames = fn()
        best = max(best, frames / (time.perf_counter() - start))
    return best, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest",
        default="data/raw/manifest.csv",
        help="corpus manifest (run `magvit corpus` first)",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--copies", type=int, default=3,
        help="decode the corpus this many times in the Ray runs, so fixed start-up costs "
        "(first task, shard writing) weigh as they would on a real corpus (default 3)",
    )  # fmt: skip
    args = parser.parse_args()

    params = load_params(args.params)
    entries = [e for e in read_manifest(Path(args.manifest)) if not e.is_image]
    paths = [Path(e.path) for e in entries]
    spec = clip_spec(params.decode)

    bare, frames = best_rate(lambda: bare_pyav(paths), args.repeats)
    ours, _ = best_rate(lambda: stage_per_file(paths, spec), args.repeats)
    print(f"{len(paths)} videos, {frames} source frames")
    print(f"{'bare PyAV decode + rgb24 (1 core)':40s} {bare:9.1f} frames/s")
    print(f"{'stage per-file path (1 core)':40s} {ours:9.1f} frames/s   ratio {ours / bare:.2f}")

    init_ray(num_cpus=2)
    corpus = [
        replace(e, video_id=f"{e.video_id}-{copy}") for copy in range(args.copies) for e in entries
    ]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 1, 2):  # the first run warms up Ray's worker processes
            decode = params.decode.model_copy(update={"workers": workers})
            rates[workers] = max(
                run_decode(corpus, decode, Path(tmp) / "clips")["frames_per_s"]
                for _ in range(args.repeats)
            )
    print(f"{'stage with Ray, 1 worker':40s} {rates[1]:9.1f} frames/s")
    print(
        f"{'stage with Ray, 2 workers':40s} {rates[2]:9.1f} frames/s"
        f"   speed-up {rates[2] / rates[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
