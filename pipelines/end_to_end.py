"""`end_to_end`: the DVC stages in graph order, one Prefect task per stage, as one DVC experiment.

How a run becomes a DVC experiment: the first stage runs as
`dvc exp run --name NAME -S key=value ... --single-item STAGE`, so DVC itself writes the
overrides into params.yaml, runs the stage and records the workspace as experiment NAME.
Each later stage runs as `dvc repro --single-item STAGE` followed by
`dvc exp save --force --name NAME STAGE`, which moves NAME to the new state: the experiment
always holds the last stage that succeeded, and DVC still skips stages whose deps and params
did not change. Like any workspace `dvc exp run`, the overrides stay in params.yaml afterwards.

Only one DVC process may work in a workspace at a time (`.dvc/tmp/lock`). A DVC command that
finds the workspace locked is retried every `lock_poll_s` seconds for up to `lock_timeout_s`,
then the task fails with `DvcLockTimeout`; the lock file is never touched.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.shell import CommandResult, stream_command

# what DVC prints when another process holds the repo lock or one of the paths' rwlock
LOCK_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
ERROR_LINES = 40  # output lines of a failed stage quoted in the task's error


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message quotes the end of its output."""


class DvcLockTimeout(RuntimeError):
    """Another DVC process held the workspace for longer than the flow would wait."""


def stage_order(repo: Path, until: str | None = None) -> list[str]:
    """The dvc.yaml stages in dependency order (ties in dvc.yaml order).

    With `until`, only that stage and the stages it depends on.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
        stages = [stage for stage in dvc_repo.index.stages if isinstance(stage, PipelineStage)]
        by_name = {stage.name: stage for stage in stages}
        position = {stage: index for index, stage in enumerate(stages)}
        wanted = set(stages)
        if until is not None:
            if until not in by_name:
                raise ValueError(f"unknown stage {until!r}; dvc.yaml has {sorted(by_name)}")
            wanted = {by_name[until], *nx.descendants(graph, by_name[until])} & wanted
        ordered = nx.lexicographical_topological_sort(
            graph.reverse(),
            key=lambda stage: position.get(stage, -1),  # -1: .dvc files
        )
        return [stage.name for stage in ordered if stage in wanted]


def run_dvc(
    args: list[str], repo: Path, timeout_s: float, lock_timeout_s: float, lock_poll_s: float
) -> CommandResult:
    """`dvc ARGS` in `repo`, waiting (bounded) while another DVC process holds the workspace."""
    logger = get_run_logger()
    deadline = time.monotonic() + lock_timeout_s
    while True:
        result = stream_command(["dvc", *args], repo, timeout_s, logger)
        if result.returncode == 0 or not any(busy in result.output for busy in LOCK_BUSY):
            return result
        if time.monotonic() >= deadline:
            raise DvcLockTimeout(
                f"the DVC workspace {repo} stayed locked by another DVC process for more than "
                f"{lock_timeout_s:g} s (`dvc {' '.join(args)}` could not start). Let that "
                "process finish, or stop it, and run the flow again; the flow never removes "
                "DVC's lock files."
            )
        logger.warning(
            "the DVC workspace is locked by another DVC process; trying again in %g s", lock_poll_s
        )
        time.sleep(lock_poll_s)


def _check(result: CommandResult, stage: str, args: list[str]) -> None:
    if result.returncode:
        output = "\n".join(result.tail[-ERROR_LINES:])
        raise StageFailed(
            f"stage {stage!r} failed (`dvc {' '.join(args)}` exited {result.returncode}):\n{output}"
        )


def files_to_save(repo: Path) -> list[str]:
    """Untracked files the experiment commit must hold, as `dvc exp run` would add them: the
    uncached outputs (metrics, reports, plots) of every stage run so far, and the .gitignore
    files DVC wrote. Each save starts again from the baseline commit, so an earlier stage's
    outputs must be named again or the experiment loses them."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        uncached = [
            out.def_path.rstrip("/")
            for stage in dvc_repo.index.stages
            for out in stage.outs
            if not out.use_cache
        ]
        untracked = dvc_repo.scm.untracked_files()
    return [
        path
        for path in untracked
        if Path(path).name == ".gitignore"
        or any(path == out or path.startswith(f"{out}/") for out in uncached)
    ]


def _retry_unless_locked(task, task_run, state) -> bool:
    """A lock timeout has already waited its time: retrying it would only wait again."""
    return not isinstance(state.data, DvcLockTimeout)


# DVC decides what is up to date: Prefect never caches a stage
@task(task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_locked)
def run_stage(
    stage: str,
    repo: Path,
    experiment: str,
    opens_experiment: bool,
    overrides: list[str],
    force: bool,
    timeout_s: float,
    lock_timeout_s: float,
    lock_poll_s: float,
) -> None:
    """Run one stage; the first one opens the experiment, later ones save onto it."""
    limits = (timeout_s, lock_timeout_s, lock_poll_s)
    flags = ["--single-item", *(["--force"] if force else [])]
    if opens_experiment:
        set_params = [arg for override in overrides for arg in ("--set-param", override)]
        args = ["exp", "run", "--name", experiment, *set_params, *flags, stage]
        _check(run_dvc(args, repo, *limits), stage, args)
        return
    args = ["repro", *flags, stage]
    _check(run_dvc(args, repo, *limits), stage, args)
    include = [arg for path in files_to_save(repo) for arg in ("--include-untracked", path)]
    save = ["exp", "save", "--force", "--name", experiment, *include, stage]
    _check(run_dvc(save, repo, *limits), stage, save)


def _summary(experiment: str, stages: list[str], overrides: list[str]) -> str:
    lines = [f"# DVC experiment `{experiment}`", "", "| # | stage |", "|---|---|"]
    lines += [f"| {index} | {stage} |" for index, stage in enumerate(stages, 1)]
    lines += ["", "Overrides: " + (", ".join(f"`{o}`" for o in overrides) or "none")]
    lines += ["", f"Compare with `dvc exp show`; restore with `dvc exp apply {experiment}`."]
    return "\n".join(lines)


@flow(name="end_to_end")
def end_to_end(
    repo_dir: str = ".",
    overrides: list[str] | None = None,
    until: str | None = None,
    force: list[str] | None = None,
    experiment: str | None = None,
    retries: int = 1,
    retry_delay_s: float = 30,
    stage_timeout_s: float = 6 * 3600,
    lock_timeout_s: float = 600,
    lock_poll_s: float = 10,
) -> str:
    """Run the DVC graph (up to `until`) as one DVC experiment; returns the experiment name.

    `overrides` are `dvc exp run -S` values such as `train_tokenizer.steps=100`; `force`
    names stages that run even when unchanged.
    """
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    overrides = list(overrides or [])
    force = set(force or [])
    bad = [override for override in overrides if "=" not in override]
    if bad:
        raise ValueError(f"overrides must look like key=value, got {bad}")
    stages = stage_order(repo, until)
    if force - set(stages):
        raise ValueError(f"force names stages not in this run: {sorted(force - set(stages))}")
    experiment = experiment or f"e2e-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    logger.info("experiment %s: stages %s, overrides %s", experiment, stages, overrides)

    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=retry_delay_s)
    for index, stage in enumerate(stages):
        stage_task(
            stage,
            repo,
            experiment,
            opens_experiment=index == 0,
            overrides=overrides,
            force=stage in force,
            timeout_s=stage_timeout_s,
            lock_timeout_s=lock_timeout_s,
            lock_poll_s=lock_poll_s,
        )
    create_markdown_artifact(
        _summary(experiment, stages, overrides), key="end-to-end", description=experiment
    )
    return experiment
