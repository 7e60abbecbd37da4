"""Running a Great Expectations suite over a DataFrame, with JSON results and Data Docs.

Shared by the validation stages: each defines its expectations; this module runs them in an
ephemeral GX context, writes `<out_dir>/<name>.json` and Data Docs HTML under
`<out_dir>/<name>_docs/`, and raises `ValidationFailed` with a readable summary.

The results JSON is a DVC dependency of the training stages, so it holds only what follows
from the data and the expectations: the same data and params give a byte-identical file.
GX's run-dependent fields (run id and time, validation and checkpoint ids, load time,
expectation ids, exception tracebacks) are left out of it; the Data Docs keep them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from magvit.errors import UserInputError
from magvit.formats.files import atomic_folder, write_text_atomic

if TYPE_CHECKING:  # great_expectations is slow to import: only _validate imports it
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationSuiteValidationResult

log = logging.getLogger("gx_suite")


class ValidationFailed(UserInputError, RuntimeError):
    """At least one expectation failed; the message lists them."""


@dataclass(frozen=True)
class SuiteResult:
    success: bool
    failures: list[str]
    results_path: Path
    docs_index: Path


def _describe_failure(result) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    details = result.result or {}
    seen = {
        key: details[key]
        for key in ("observed_value", "unexpected_count", "partial_unexpected_list")
        if key in details
    }
    if "partial_unexpected_list" in seen:
        seen["partial_unexpected_list"] = [str(v)[:60] for v in seen["partial_unexpected_list"][:5]]
    return f"{config.type} {kwargs} -> {seen}"


# Fields of a validation's `meta` that follow from the data and the suite alone.
STABLE_META = ("great_expectations_version", "batch_spec", "active_batch_definition")


def _stable_meta(meta: dict) -> dict:
    stable = {key: meta[key] for key in STABLE_META if key in meta}
    fingerprint = meta.get("batch_markers", {}).get("pandas_data_fingerprint")
    if fingerprint is not None:
        stable["batch_markers"] = {"pandas_data_fingerprint": fingerprint}
    return stable


def _stable_result(result: dict) -> dict:
    """One expectation's result without its random id and tracebacks (absolute paths)."""
    config = {k: v for k, v in result["expectation_config"].items() if k != "id"}
    exception = _without_tracebacks(result.get("exception_info") or {})
    return {**result, "expectation_config": config, "exception_info": exception}


def _without_tracebacks(info: dict) -> dict:
    """`exception_info` is flat or keyed by metric; either way drop each traceback."""
    return {
        key: _without_tracebacks(value) if isinstance(value, dict) else value
        for key, value in info.items()
        if key != "exception_traceback"
    }


def stable_results(validation: ExpectationSuiteValidationResult, suite: ExpectationSuite) -> dict:
    """The validation as a JSON dict that depends only on the data and the suite.

    Results follow the suite's order: GX returns them in the order its metrics resolved.
    """
    as_json = validation.to_json_dict()
    position = _suite_positions(suite)
    results = sorted(as_json["results"], key=lambda r: position[r["expectation_config"]["id"]])
    return {
        "success": as_json["success"],
        "suite_name": as_json["suite_name"],
        "suite_parameters": as_json["suite_parameters"],
        "statistics": as_json["statistics"],
        "results": [_stable_result(result) for result in results],
        "meta": _stable_meta(as_json["meta"]),
    }


def _suite_positions(suite: ExpectationSuite) -> dict[str, int]:
    return {expectation.id: index for index, expectation in enumerate(suite.expectations)}


def run_suite(
    frame: pd.DataFrame,
    name: str,
    expectations: list,
    results_path: Path,
    docs_dir: Path,
    raise_on_failure: bool = True,
) -> SuiteResult:
    """Validate `frame` against `expectations` (GX 1.x expectation objects); write the
    results JSON to `results_path` and the Data Docs site to `docs_dir`, each replaced when
    complete (an error on the way leaves the last ones as they were). Failed expectations
    are a complete result: it is written, then ValidationFailed raised."""
    with atomic_folder(docs_dir) as building:
        outcome, validation, suite = _validate(frame, name, expectations, building)
    position = _suite_positions(suite)
    in_order = sorted(validation.results, key=lambda r: position[r.expectation_config.id])
    failures = [_describe_failure(r) for r in in_order if not r.success]

    results = stable_results(validation, suite)
    write_text_atomic(json.dumps(results, indent=2, default=str) + "\n", results_path)
    stats = validation.statistics
    log.info(
        "%s: %d/%d expectations passed; results %s, docs %s/index.html",
        name,
        stats["successful_expectations"],
        stats["evaluated_expectations"],
        results_path,
        docs_dir,
    )
    result = SuiteResult(outcome.success, failures, results_path, docs_dir / "index.html")
    if raise_on_failure and not outcome.success:
        summary = "\n".join(f"  - {line}" for line in failures)
        raise ValidationFailed(
            f"{name}: {len(failures)} of {stats['evaluated_expectations']} expectations failed "
            f"(details in {results_path}):\n{summary}"
        )
    return result


def _validate(frame: pd.DataFrame, name: str, expectations: list, docs_dir: Path):
    """Run the suite in an ephemeral GX context that builds its Data Docs in `docs_dir`;
    returns the checkpoint's outcome, the validation result and the suite."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        f"{name}_site",
        {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{name}_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format="SUMMARY",
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = outcome.run_results.values()
    return outcome, validation, suite
