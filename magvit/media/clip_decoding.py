"""Stage `decode`: every manifest entry -> fixed-size clips in Parquet shards.

Files are decoded in parallel Ray tasks, small files grouped into one task (a local
instance, or the cluster in RAY_ADDRESS); the driver gathers their clips in manifest order
and writes the shards, so output is deterministic and no worker needs a shared filesystem.
A file that cannot become clips is recorded in `data/clips/rejects.parquet` and skipped.
The shards are written into a new folder that replaces `data/clips` only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import accumulate, islice
from pathlib import Path

import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm import tqdm

from magvit.errors import UserInputError
from magvit.formats.clip_shards import CLIP_SCHEMA, REJECT_SCHEMA, keep_rejects
from magvit.formats.corpus_manifest import SPLITS, ManifestEntry
from magvit.formats.files import atomic_folder, input_size, is_uri, write_table_atomic
from magvit.media.video_decode import ClipSpec, RejectedInput, clip_starts, decode_file
from magvit.params import DecodeParams
from magvit.runtime.ray_cluster import (
    UNREACHABLE_INPUT,
    init_ray,
    raise_if_unreachable,
    unreachable_message,
)

log = logging.getLogger("decode")


def clip_spec(params: DecodeParams) -> ClipSpec:
    return ClipSpec(
        fps=params.fps,
        resize_short_side=params.resize_short_side,
        crop_size=params.crop_size,
        num_frames=params.num_frames,
        stride=params.stride,
        max_clips=params.max_clips_per_video,
    )


@dataclass
class FileResult:
    source: str
    split: str
    table: pa.Table | None = None
    source_frames: int = 0
    reject: dict | None = None
    clips: int = 0


def clip_rows(
    entry: ManifestEntry, spec: ClipSpec, folder: str = "", driver_sees: bool = False
) -> tuple[list[dict], FileResult]:
    """Decode one manifest entry: its clip rows (CLIP_SCHEMA) and its result without a table.

    A relative entry path is read from `folder` (the driver's working folder: a worker of a
    cluster joined through RAY_ADDRESS has another one); `source` keeps the path as given.
    A file that cannot become clips gives no rows and a result with its reject record. A file
    missing here that the driver saw (`driver_sees`) is a worker on a host without the
    driver's files: its record has error_type UNREACHABLE_INPUT, which the driver raises as
    UnreachableInput (`raise_if_unreachable`) rather than lose a good file.
    """
    try:
        decoded = decode_file(entry.path if is_uri(entry.path) else Path(folder, entry.path), spec)
    except RejectedInput as error:
        error_type, message = error.error_type, str(error)
        if error_type == "missing_file" and driver_sees:
            error_type, message = UNREACHABLE_INPUT, unreachable_message(entry.path)
        return [], FileResult(
            entry.path, entry.split, reject=_reject(entry.path, error_type, message)
        )
    except Exception as error:  # noqa: BLE001 - one odd file must not stop the corpus
        return [], FileResult(
            entry.path, entry.split, reject=_reject(entry.path, type(error).__name__, str(error))
        )
    length = 1 if decoded.is_image else spec.num_frames
    starts = [0] if decoded.is_image else clip_starts(len(decoded.frames), spec)
    rows = [
        {
            "clip_id": f"{entry.video_id}:{start}",
            "video_id": entry.video_id,
            "source": entry.path,
            "split": entry.split,
            "label": entry.label,
            "start_frame": start,
            "num_frames": length,
            "height": spec.crop_size,
            "width": spec.crop_size,
            "fps": decoded.fps,
            "frames": decoded.frames[start : start + length].tobytes(),
        }
        for start in starts
    ]
    return rows, FileResult(
        entry.path, entry.split, source_frames=decoded.source_frames, clips=len(rows)
    )


def clips_from_entry(entry: ManifestEntry, spec: ClipSpec, driver_sees: bool = False) -> FileResult:
    """Decode one manifest entry into a table of clips, or a reject record."""
    rows, result = clip_rows(entry, spec, driver_sees=driver_sees)
    if result.reject:
        return result
    return replace(result, table=pa.Table.from_pylist(rows, schema=CLIP_SCHEMA))


def _reject(source: str, error_type: str, message: str) -> dict:
    return {"source": source, "stage": "decode", "error_type": error_type, "message": message}


# Planning tasks: a Ray task costs a few ms of CPU (driver, raylet, worker), as much as
# decoding a small video, so small files travel in groups. A file weighs its size in bytes
# plus FILE_WEIGHT: on the embedded corpus decoding costs about 0.5 ms per kB of H.264 plus
# 7 ms per file, the price of 16 kB. Files are grouped in manifest order up to TASK_WEIGHT,
# about 0.1 s of work on one core: Ray's share stays at a few % and the last tasks are short.
FILE_WEIGHT = 16 << 10
TASK_WEIGHT = 256 << 10


def input_sizes(entries: list[ManifestEntry]) -> dict[str, int | None]:
    """Each entry's size in bytes, None where the driver does not find it: one look per input
    (a request for a URI) serves both the task plan and the set of inputs the driver saw."""
    return {entry.path: input_size(entry.path) for entry in entries}


def file_weight(size: int | None) -> int:
    # a file missing here (size None) weighs FILE_WEIGHT: it becomes a reject
    return (size or 0) + FILE_WEIGHT


def plan_tasks(
    entries: list[ManifestEntry], sizes: dict[str, int | None]
) -> list[list[ManifestEntry]]:
    """Consecutive groups of entries of about TASK_WEIGHT each (a heavy file goes alone);
    `sizes` as input_sizes gives them."""
    tasks: list[list[ManifestEntry]] = []
    weight = 0
    for entry in entries:
        entry_weight = file_weight(sizes[entry.path])
        if not tasks or weight + entry_weight > TASK_WEIGHT:
            tasks.append([])
            weight = 0
        tasks[-1].append(entry)
        weight += entry_weight
    return tasks


def clips_from_entries(
    entries: list[ManifestEntry], spec: ClipSpec, folder: str = "", seen: frozenset = frozenset()
) -> tuple[pa.Table, list[FileResult]]:
    """Decode a group of entries: the clips of all of them in one table, entry after entry,
    and per entry its result without a table (`clips` says how many of the rows are its).
    `seen`: the entry paths the driver found (clip_rows' `driver_sees`).

    One table per task, not one per file, keeps Ray's per-object work small.
    """
    rows: list[dict] = []
    results: list[FileResult] = []
    for entry in entries:
        entry_rows, result = clip_rows(entry, spec, folder, entry.path in seen)
        rows += entry_rows
        results.append(result)
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA), results


def with_tables(table: pa.Table, results: list[FileResult]) -> list[FileResult]:
    """The results of `clips_from_entries`, each with its slice of the group's table."""
    offsets = accumulate((result.clips for result in results), initial=0)
    return [
        replace(result, table=table.slice(offset, result.clips)) if result.clips else result
        for result, offset in zip(results, offsets, strict=False)  # offsets has one more
    ]


_clips_from_entries_task = ray.remote(num_cpus=1)(clips_from_entries)


def decode_in_order(
    entries: list[ManifestEntry], spec: ClipSpec, workers: int
) -> Iterator[FileResult]:
    """Decode `entries` in Ray tasks, `workers` at a time, yielding results in manifest order.

    The tasks run in a placement group of `workers` CPUs with one more task queued per
    worker, so a worker starts its next task as soon as one ends instead of waiting for the
    driver. Results that finish early wait in `done` for their turn.
    """
    sizes = input_sizes(entries)
    tasks = enumerate(plan_tasks(entries, sizes))
    spec_ref, folder = ray.put(spec), os.getcwd()  # relative paths are the driver's
    seen = frozenset(path for path, size in sizes.items() if size is not None)
    running: dict[ray.ObjectRef, int] = {}  # -> index of the task in the plan
    done: dict[int, list[FileResult]] = {}
    emitted = 0
    with reserved_cpus(workers) as strategy:
        decode_task = _clips_from_entries_task.options(scheduling_strategy=strategy)

        def submit() -> None:
            for index, group in islice(tasks, 2 * workers - len(running)):
                group_seen = seen.intersection(entry.path for entry in group)
                running[decode_task.remote(group, spec_ref, folder, group_seen)] = index

        submit()
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            done[running.pop(ready)] = with_tables(*ray.get(ready))
            submit()
            while emitted in done:
                yield from done.pop(emitted)
                emitted += 1


@contextmanager
def reserved_cpus(count: int) -> Iterator[PlacementGroupSchedulingStrategy]:
    """A placement group of `count` one-CPU bundles, or of all the cluster's CPUs if fewer."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if count > cpus:
        log.warning("decode.workers = %d, but the Ray cluster has %d CPUs", count, cpus)
    group = placement_group([{"CPU": 1}] * max(1, min(count, cpus)))
    try:
        ray.get(group.ready())
        yield PlacementGroupSchedulingStrategy(group)
    finally:
        remove_placement_group(group)


@dataclass
class ShardWriter:
    """Buffers clips per split and writes `part-NNNNN.parquet` shards of a fixed row count."""

    out_dir: Path
    rows_per_shard: int
    buffers: dict[str, list[pa.Table]] = field(default_factory=dict)
    shard_counts: dict[str, int] = field(default_factory=dict)
    clip_counts: dict[str, int] = field(default_factory=dict)

    def add(self, split: str, table: pa.Table) -> None:
        self.buffers.setdefault(split, []).append(table)
        self.clip_counts[split] = self.clip_counts.get(split, 0) + table.num_rows
        if sum(t.num_rows for t in self.buffers[split]) >= self.rows_per_shard:
            self._flush(split, final=False)

    def close(self) -> None:
        for split in list(self.buffers):
            self._flush(split, final=True)

    def _flush(self, split: str, final: bool) -> None:
        table = pa.concat_tables(self.buffers.pop(split, []))
        while table.num_rows >= self.rows_per_shard or (final and table.num_rows):
            self._write(split, table.slice(0, self.rows_per_shard))
            table = table.slice(self.rows_per_shard)
        if table.num_rows:
            self.buffers[split] = [table]

    def _write(self, split: str, table: pa.Table) -> None:
        index = self.shard_counts.get(split, 0)
        write_table_atomic(table, self.out_dir / split / f"part-{index:05d}.parquet")
        self.shard_counts[split] = index + 1


class NothingDecoded(UserInputError):
    """No input file became a clip: the message names the inputs, the reasons and where the
    rejects were written; the output folder is left as it was."""


def run_decode(
    entries: list[ManifestEntry], params: DecodeParams, out_dir: Path, inputs: str = ""
) -> dict:
    """Decode `entries` into shards under `out_dir`, built beside it and swapped in when
    complete (a failing run leaves the last `out_dir` as it was); return the metrics.
    `inputs` names where the entries came from (the manifest), for messages."""
    init_ray(num_cpus=params.workers)
    spec = clip_spec(params)
    rejects: list[dict] = []
    source_frames = clip_frames = 0
    with atomic_folder(out_dir) as building:
        writer = ShardWriter(building, params.clips_per_shard)
        started = time.perf_counter()
        results = decode_in_order(entries, spec, params.workers)
        for result in tqdm(results, total=len(entries), unit="file"):
            if result.reject:
                raise_if_unreachable(result.reject["error_type"], result.reject["message"])
                rejects.append(result.reject)
                log.warning("rejected %s: %s", result.source, result.reject["message"])
                continue
            writer.add(result.split, result.table)
            source_frames += result.source_frames
            clip_frames += sum(result.table["num_frames"].to_pylist())
        writer.close()
        seconds = time.perf_counter() - started
        reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
        clips = sum(writer.clip_counts.values())
        if clips == 0:
            raise nothing_decoded(reject_table, len(entries), inputs, out_dir)
        write_table_atomic(reject_table, building / "rejects.parquet")
    return {
        "files": len(entries),
        "clips": clips,
        "clips_per_split": {s: writer.clip_counts.get(s, 0) for s in SPLITS},
        "source_frames": source_frames,
        "clip_frames": clip_frames,
        "rejects": len(rejects),
        "seconds": round(seconds, 3),
        "frames_per_s": round(source_frames / seconds, 1),
    }


def nothing_decoded(rejects: pa.Table, files: int, inputs: str, out_dir: Path) -> NothingDecoded:
    """The one-line error of a decode in which every file was rejected."""
    kept = keep_rejects(rejects, "decode")
    reasons = Counter(rejects["error_type"].to_pylist()).most_common()
    example = ""
    for first in rejects.slice(0, 1).to_pylist():  # its message names the file, mostly
        named = Path(first["source"]).name in first["message"]
        example = f"; first: {'' if named else first['source'] + ': '}{first['message']}"
    where = f" of {inputs}" if inputs else ""
    by_type = ", ".join(f"{kind} {count}" for kind, count in reasons)
    return NothingDecoded(
        f"no clips: all {files} input files{where} were rejected ({by_type}{example}); "
        f"the rejects are listed in {kept}; {out_dir} is left as it was"
    )
