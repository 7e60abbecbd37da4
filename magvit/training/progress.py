"""Training progress on the driver: a bar fed by the run's MLflow metrics.

The workers log to MLflow (rank 0, every `log_every` steps); while `fit` blocks, a thread
on the driver reads the run back and draws one bar: step, ETA and the latest loss and
validation figures. Reading the tracking store rather than the workers' output keeps the
bar working on a cluster, where the workers run on other hosts.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm import tqdm


@dataclass(frozen=True)
class ProgressSpec:
    """The bar's label and the metrics it reads: `step_metric` is logged at every log step;
    `shown` maps a short label to a metric key whose latest value is printed beside the bar."""

    label: str
    step_metric: str
    shown: dict[str, str]


class _Poller(threading.Thread):
    def __init__(self, bar: tqdm, client: MlflowClient, run_id: str, spec: ProgressSpec,
                 interval_s: float):  # fmt: skip
        super().__init__(name="training-progress", daemon=True)
        self.bar, self.client, self.run_id, self.spec = bar, client, run_id, spec
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.refresh()
            except MlflowException:  # a busy store: the next poll catches up
                continue

    def refresh(self) -> None:
        metrics = self.client.get_run(self.run_id).data.metrics  # latest value of each key
        history = self.client.get_metric_history(self.run_id, self.spec.step_metric)
        step = max((m.step for m in history), default=0)
        shown = {label: metrics[key] for label, key in self.spec.shown.items() if key in metrics}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self.bar.update(step - self.bar.n)


@contextmanager
def training_progress(
    tracking_uri: str, run_id: str, total_steps: int, spec: ProgressSpec
) -> Iterator[None]:
    """Show a progress bar of the run on stderr until the block ends (a final refresh then).

    On a terminal it redraws every few seconds; into a file or pipe it writes a line every
    30 s, so a log of `dvc repro` stays short.
    """
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total_steps, desc=spec.label, unit="step", dynamic_ncols=True,
               mininterval=1.0 if interactive else 30.0)  # fmt: skip
    poller = _Poller(bar, MlflowClient(tracking_uri), run_id, spec, 2.0 if interactive else 10.0)
    poller.start()
    try:
        yield
    finally:
        poller.stopped.set()
        poller.join()
        poller.refresh()
        bar.close()
