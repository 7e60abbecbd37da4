"""One job at a time in an output folder: a lock file holding the writer's pid, host and
start time.

`<folder>/<name>` is created (or opened) and locked with flock(2) for as long as the job
runs; it then holds `{"pid", "host", "started"}` (JSON). The kernel drops a flock when its
process ends, however it ends (SIGKILL included), so a lock file that can be locked again
is stale: its job is gone, and the next job takes the file over with a warning naming the
job it belonged to. A lock that is held refuses the next job with a one-line error naming
the holder, before that job touches anything in the folder. On a shared filesystem this
relies on the filesystem's locks (NFS has them).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from magvit.errors import UserInputError
from magvit.formats.files import write_error

log = logging.getLogger("output_lock")


class OutputLocked(UserInputError):
    """Another job holds the output folder's lock (the message names it)."""


def describe_holder(text: str) -> str:
    """`pid 123 on host-a since 2025-01-01 12:00:00 UTC` from a lock file's contents."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a job that has not yet written its pid"


@contextmanager
def output_lock(folder: Path, name: str) -> Iterator[Path]:
    """Hold `folder/name` (created with `folder`) while the block runs; yields its path.

    Raises OutputLocked when a live job holds it; takes over a stale one (a warning says
    whose it was). The file is removed when the block ends."""
    path = Path(folder) / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # still holding the flock: no one can take it meanwhile
        os.close(fd)


def _acquire(path: Path) -> int:
    """A descriptor of `path`, flocked, holding this process's pid, host and start time."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if _lock(fd, path):
                _claim(fd, path)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed the file between our open and our flock: again


def _lock(fd: int, path: Path) -> bool:
    """flock `fd`; False when the file is no longer the one at `path`. OutputLocked when a
    live job holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = describe_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        raise OutputLocked(
            f"{path.parent} is in use by another job ({holder}); wait for it to end or use "
            f"another output folder (lock file: {path})"
        ) from None
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _claim(fd: int, path: Path) -> None:
    """Write this process's pid, host and start time into the lock file, after a warning
    naming the ended job it held before, if any."""
    previous = os.pread(fd, 4096, 0).decode(errors="replace")
    if previous:
        ended = describe_holder(previous)
        log.warning("%s: taking over the stale lock of %s: that job has ended", path, ended)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
