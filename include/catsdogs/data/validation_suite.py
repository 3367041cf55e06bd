"""The Great Expectations suite that gates the raw data (run by the validate stage).

Two tables are validated in an ephemeral GX context:
- `files`: one row per manifest entry (extension, label, decodable, width, height);
- `classes`: one row per configured class (count, imbalance = largest class / this class).
Each table has its own checkpoint; their UpdateDataDocsAction writes the Data Docs HTML site into the report folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.config import Params


@dataclass
class SuiteOutcome:
    success: bool
    failures: list[dict[str, Any]]
    evaluated: int
    result: list[dict[str, Any]]


def tables(rows: list[dict[str, Any]], classes: list[str]) -> tuple[Any, Any]:
    """The `files` and `classes` data frames the suite validates."""
    import pandas as pd

    files = pd.DataFrame(rows, columns=["path", "label", "extension", "decodable", "width",
                                        "height"])
    counts = Counter(str(row["label"]) for row in rows)
    largest = max((counts.get(label, 0) for label in classes), default=0)
    per_class = pd.DataFrame(
        [{"label": label, "count": counts.get(label, 0),
          "imbalance": round(largest / max(counts.get(label, 0), 1), 4)} for label in classes])
    return files, per_class


def _expectations(params: Params) -> dict[str, list[Any]]:
    import great_expectations.expectations as gxe

    rules = params.validation
    usable = rules.min_decodable_fraction
    return {
        "raw_files": [
            gxe.ExpectColumnValuesToBeUnique(column="path"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(params.data.classes)),
            gxe.ExpectColumnValuesToBeInSet(column="extension",
                                            value_set=list(rules.allowed_extensions),
                                            mostly=usable),
            gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True], mostly=usable),
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=rules.min_width,
                                              mostly=usable),
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=rules.min_height,
                                              mostly=usable),
        ],
        "raw_classes": [
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(params.data.classes)),
            gxe.ExpectColumnValuesToBeBetween(column="count",
                                              min_value=rules.min_samples_per_class),
            gxe.ExpectColumnValuesToBeBetween(column="imbalance",
                                              max_value=rules.max_imbalance_ratio),
        ],
    }


def _context(docs_dir: Path) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False),
                               analytics_enabled=False)
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.add_data_docs_site(site_name="report", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context


def _examples(observed: dict[str, Any], frame: Any) -> list[str]:
    """Up to five failing values, named by the row's path (files) or label (classes)."""
    values = observed.get("partial_unexpected_list") or []
    indices = observed.get("partial_unexpected_index_list") or []
    key = "path" if "path" in frame.columns else "label"
    if len(indices) == len(values):
        return [f"{frame.at[i, key]}={v}" for i, v in zip(indices[:5], values[:5], strict=True)]
    return [str(v) for v in values[:5]]


def _failure(result: Any, frame: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    observed = result.result or {}
    unexpected = observed.get("unexpected_count")
    if unexpected is not None:
        seen = f"{unexpected} of {observed.get('element_count')} rows fail"
        examples = _examples(observed, frame)
        if examples:
            seen += f", e.g. {', '.join(examples)}"
    else:
        seen = str(observed.get("observed_value", ""))
    return {"expectation": config.type, "column": config.kwargs.get("column", ""),
            "rule": json.dumps(kwargs, default=str), "observed": seen}


def run_suite(files: Any, classes: Any, params: Params, docs_dir: Path) -> SuiteOutcome:
    """Run both suites; Data Docs go to `docs_dir`."""
    import great_expectations as gx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _context(docs_dir)
        source = context.data_sources.add_pandas("manifest")
        frames = {"raw_files": files, "raw_classes": classes}
        outcome = SuiteOutcome(success=True, failures=[], evaluated=0, result=[])
        # One checkpoint per table: a checkpoint hands the same data frame to all its definitions.
        for name, expectations in _expectations(params).items():
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            suite = context.suites.add(gx.ExpectationSuite(name=name))
            for expectation in expectations:
                suite.add_expectation(expectation)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"{name}_gate", validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs",
                                                            site_names=["report"])],
                result_format={"result_format": "SUMMARY"}))
            run = checkpoint.run(batch_parameters={"dataframe": frames[name]})
            for validation in run.run_results.values():
                outcome.result.append(validation.to_json_dict())
                outcome.evaluated += len(validation.results)
                outcome.success &= bool(validation.success)
                outcome.failures += [_failure(r, frames[name]) for r in validation.results
                                     if not r.success]
    return outcome


def failure_table(failures: list[dict[str, Any]]) -> str:
    """A plain-text table of failed expectations for the terminal."""
    header = ("expectation", "column", "rule", "observed")
    rows = [header] + [tuple(str(f[key]) for key in header) for f in failures]
    widths = [min(70, max(len(row[i]) for row in rows)) for i in range(len(header))]
    lines = ["  ".join(cell[:70].ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
