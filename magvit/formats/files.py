"""Files on disk: write-then-rename, and the one layout of shard folders.

Write-then-rename: a reader sees either the old file or the complete new one, never part.
The temporary file sits in the target's folder (same filesystem, so the rename is atomic)
under a hidden, unique name, and is removed when writing fails. A write that fails for want
of room or permission (a full disk, a file-size limit, a read-only folder) raises
OutputError naming the file, which the command line reports in one line.

Build-then-swap, for a folder (`atomic_folder`): a stage builds its output folder beside the
old one and swaps it in only when complete, so a failing stage leaves the last good output
as it was, and a new output holds nothing of an earlier one (dvc.yaml marks the outputs
`persist: true`, so DVC does not delete them before the stage runs either).

Shards: `<folder>/<split>/part-*.parquet`, the layout of clip and token shards alike.

Inputs may be local paths or URIs (`file://`, `s3://`, `gs://`: whatever pyarrow resolves),
so that every node of a cluster reads them from the same place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from magvit.errors import OutputError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it goes.

    An OSError while writing (no room, no permission) becomes OutputError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error, tmp) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_error(path: Path, error: OSError, *own: Path) -> OutputError:
    """OutputError `cannot write <path>: <reason>`; the file the OS named is added when it
    is neither `path` nor one of `own` (the folder that could not be made, say)."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.filename is not None and Path(error.filename) not in (path, *own):
        reason = f"{reason} ({error.filename})"
    return OutputError(f"cannot write {path}: {reason}")


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a new, empty folder to build `path` in; on success it replaces `path` whole,
    on failure (any exception, Ctrl-C included) it goes and `path` is left as it was.

    The new folder is `<parent>/.<name>.<random>.tmp/<name>`: on the same filesystem as
    `path` (so the swap is two renames) and with the same name, so what records a folder's
    name (an MLflow artifact, say) records the final one. A path written inside that points
    outside the folder needs one more `..` than it will after the swap. The swap renames the
    old `path` into that hidden folder, the new folder to `path`, then deletes the hidden
    folder and the old output with it; between the two renames `path` is briefly absent.
    OutputError messages (atomic_path's) and OSErrors about files inside name the file by its
    final path, `cannot write <path>/...: <reason>`. A process killed outright (SIGKILL)
    leaves the hidden folder behind: delete it."""
    path = Path(path)
    holder = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    building = holder / path.name
    try:
        try:
            building.mkdir(parents=True)
        except OSError as error:
            raise write_error(path, error, holder, building) from error
        try:
            yield building
        except OutputError as error:
            raise OutputError(_final_names(str(error), building, path)) from error
        except OSError as error:
            inside = _relative_inside(error.filename, building)
            if inside is None:
                raise
            raise write_error(path / inside, error, Path(error.filename)) from error
        _swap_in(building, path, holder / f"{path.name}.replaced")
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextmanager
def atomic_folders(*paths: Path) -> Iterator[tuple[Path, ...]]:
    """atomic_folder for the output folders of one command: yields their new folders, in
    order. A folder inside another one is built inside that one's new folder and comes in
    with it; the others are swapped in one after another when the block succeeds."""
    paths = tuple(Path(p) for p in paths)
    built: dict[Path, Path] = {}
    with ExitStack() as stack:
        for path in sorted(paths, key=lambda p: len(_absolute(p).parts)):  # outer ones first
            outer = next((p for p in built if _absolute(path).is_relative_to(_absolute(p))), None)
            if outer is None:
                built[path] = stack.enter_context(atomic_folder(path))
            else:
                built[path] = built[outer] / _absolute(path).relative_to(_absolute(outer))
                built[path].mkdir(parents=True, exist_ok=True)
        yield tuple(built[path] for path in paths)


def _absolute(path: str | Path) -> Path:
    """`path` made absolute without resolving links (a symlinked folder keeps its name)."""
    return Path(os.path.abspath(path))


def _final_names(text: str, building: Path, path: Path) -> str:
    """`text` with the new folder's path, absolute or as given, replaced by `path`'s."""
    text = text.replace(str(_absolute(building)), str(_absolute(path)))
    return text.replace(str(building), str(path))


def _relative_inside(filename: object, folder: Path) -> Path | None:
    """An OSError's `filename` relative to `folder` when it lies inside it, else None."""
    if not isinstance(filename, str | os.PathLike):
        return None
    file, root = _absolute(filename), _absolute(folder)
    return file.relative_to(root) if file.is_relative_to(root) else None


def _swap_in(new: Path, path: Path, aside: Path) -> None:
    """Rename `path` (if any) to `aside`, then `new` to `path`; on failure put `path` back."""
    moved = False
    try:
        if os.path.lexists(path):
            os.rename(path, aside)
            moved = True
        os.rename(new, path)
    except OSError as error:
        if moved and not os.path.lexists(path):
            os.rename(aside, path)
        raise write_error(path, error, new, aside) from error


def write_text_atomic(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file (zstd) atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


SHARD_GLOB = "part-*.parquet"


def shard_paths(folder: str | Path, split: str | None = None) -> list[Path]:
    """The shard files of one split (`split`) or of every split folder, sorted."""
    return sorted(Path(folder).glob(f"{split or '*'}/{SHARD_GLOB}"))


# ------------------------------------------------------------------- inputs named by a URI


def is_uri(path: str | Path) -> bool:
    """Whether `path` names a file through a scheme that pyarrow's filesystems resolve
    (`file://`, `s3://`, `gs://`, ...) rather than as a plain local path."""
    return "://" in str(path)


def input_size(path: str | Path) -> int | None:
    """The size in bytes of an input (a local path or a URI), None when it does not exist."""
    if not is_uri(path):
        try:
            return os.path.getsize(path)
        except OSError:
            return None
    filesystem, fs_path = pafs.FileSystem.from_uri(str(path))
    info = filesystem.get_file_info(fs_path)
    return None if info.type == pafs.FileType.NotFound else info.size


def read_uri(uri: str) -> bytes:
    filesystem, fs_path = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_file(fs_path) as handle:
        return handle.readall()
