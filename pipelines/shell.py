"""Running the project's commands (`dvc`, `magvit`) from flows, output streamed to a logger."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
TAIL_LINES = 60  # output lines kept for the error message of a failed command


class CommandTimeout(RuntimeError):
    """A command ran longer than its time limit and was killed."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    tail: list[str]  # the last TAIL_LINES lines of stdout and stderr together

    @property
    def output(self) -> str:
        return "\n".join(self.tail)


def command_env() -> dict[str, str]:
    """The environment with this venv's bin first on PATH, so `dvc` and `magvit` resolve."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def stream_command(
    cmd: list[str],
    cwd: Path,
    timeout_s: float | None,
    logger: logging.Logger | logging.LoggerAdapter,
) -> CommandResult:
    """Run `cmd`, logging each output line as it comes; kill its process group on timeout."""
    logger.info("$ %s", " ".join(cmd))
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout kills the stage's children too
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):  # it may have just finished
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    if timer:
        timer.start()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
        returncode = process.wait()
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise CommandTimeout(f"`{' '.join(cmd)}` ran longer than {timeout_s:g} s and was killed")
    return CommandResult(returncode, list(tail))
