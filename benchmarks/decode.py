"""Decode throughput: the stage's per-file path against a bare PyAV loop, and 1 vs 2 workers.

    python benchmarks/decode.py [--manifest data/raw/manifest.csv] [--repeats 3] [--copies 3]

Frames/s counts source frames decoded. FFmpeg runs on one thread per process everywhere:
decoder threading off (`thread_type = "NONE"`) and swscale on one thread (`threads=1`; PyAV's
default starts two helper threads per frame). The bare loop decodes every frame and converts
it to RGB at full size: the machine's limit for PyAV on one core. The stage path
also resamples, resizes and crops; it converts only the frames it keeps. "2 processes" runs
the per-file path in two plain processes at once, each over all the files (no Ray): the most
that two cores give this work, the ceiling for the 2-worker speed-up.

The stage rows run `run_decode` (Ray tasks, gathering in manifest order, zstd shard writes on
the driver, rejects file) with `decode.workers` = 1 and 2 on one local Ray instance of 2 CPUs,
over the corpus's videos taken `--copies` times. Ray's start-up is not timed (it happens once
per process) and a first untimed run starts the worker processes. Configurations are
interleaved, `--repeats` times each; the best and the median are shown.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import av

from magvit.formats.corpus_manifest import ManifestEntry, read_corpus_manifest
from magvit.media.clip_decoding import clip_spec, run_decode
from magvit.media.video_decode import ClipSpec, decode_file
from magvit.params import DecodeParams, load_params
from magvit.runtime.ray_cluster import init_ray

from interleaved_runs import interleaved


def bare_pyav(paths: list[Path]) -> int:
    frames = 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24", threads=1)
                frames += 1
    return frames


def stage_per_file(paths: list[Path], spec: ClipSpec) -> int:
    return sum(decode_file(path, spec).source_frames for path in paths)


def timed_rate(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    frames = fn()
    return frames / (time.perf_counter() - start)


def _per_file_process(paths: list[Path], spec: ClipSpec, start, rates) -> None:
    start.wait()
    rates.put(timed_rate(lambda: stage_per_file(paths, spec)))


def parallel_processes(paths: list[Path], spec: ClipSpec, processes: int) -> float:
    """Frames/s of `processes` plain processes running the per-file path at the same time."""
    context = multiprocessing.get_context("fork")
    start, rates = context.Event(), context.Queue()
    workers = [
        context.Process(target=_per_file_process, args=(paths, spec, start, rates))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    start.set()
    results = [rates.get() for _ in workers]
    for worker in workers:
        worker.join()
    return processes * min(results)  # the slowest process sets the wall time


def stage_rate(corpus: list[ManifestEntry], params: DecodeParams, workers: int) -> float:
    decode = params.model_copy(update={"workers": workers})
    with tempfile.TemporaryDirectory() as tmp:
        return run_decode(corpus, decode, Path(tmp) / "clips")["frames_per_s"]


def show(name: str, rates: list[float], note: str = "") -> None:
    best, median = max(rates), statistics.median(rates)
    print(f"{name:44s} best {best:7.0f}  median {median:7.0f} frames/s{note}")


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
        help="decode the corpus this many times in the Ray runs, so fixed costs (first task, "
        "last shard write) weigh as they would on a real corpus (default 3)",
    )  # fmt: skip
    args = parser.parse_args()

    params = load_params(args.params)
    entries = [e for e in read_corpus_manifest(Path(args.manifest)) if not e.is_image]
    paths = [Path(e.path) for e in entries]
    spec = clip_spec(params.decode)
    print(f"{len(paths)} videos, {bare_pyav(paths)} source frames; FFmpeg: 1 thread per process")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")

    local = interleaved(
        {
            "bare": lambda: timed_rate(lambda: bare_pyav(paths)),
            "per_file": lambda: timed_rate(lambda: stage_per_file(paths, spec)),
            "two_processes": lambda: parallel_processes(paths, spec, 2),
        },
        args.repeats,
    )
    bare, per_file = max(local["bare"]), max(local["per_file"])
    show("bare PyAV decode + rgb24 (1 process)", local["bare"])
    show("stage per-file path (1 process)", local["per_file"], f"   ratio {per_file / bare:.2f}")
    two = max(local["two_processes"])
    show("stage per-file path, 2 processes (no Ray)", local["two_processes"],
         f"   x{two / per_file:.2f} of 1 process")  # fmt: skip

    init_ray(num_cpus=2)
    corpus = [
        replace(e, video_id=f"{e.video_id}-{copy}") for copy in range(args.copies) for e in entries
    ]
    stage_rate(corpus, params.decode, 2)  # starts Ray's worker processes
    ray_runs = interleaved(
        {workers: (lambda w=workers: stage_rate(corpus, params.decode, w)) for workers in (1, 2)},
        args.repeats,
    )
    show("stage with Ray, 1 worker", ray_runs[1])
    speed_up = max(ray_runs[2]) / max(ray_runs[1])
    median_speed_up = statistics.median(ray_runs[2]) / statistics.median(ray_runs[1])
    show("stage with Ray, 2 workers", ray_runs[2],
         f"   speed-up {speed_up:.2f}x (medians {median_speed_up:.2f}x)")  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
