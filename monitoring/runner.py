"""One monitor run: the rows collected in a window against the baseline, feature by
feature and prediction by prediction; its state says what came of it."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from deploy.records import iso
from deploy.specs import CollectorDestination, MonitorSpec
from monitoring.drift import FeatureDrift, compare
from monitoring.windows import (
    MonitorDataError,
    between,
    collected,
    features_of,
    first_rows,
    read_baseline,
)

#: what the collector adds to a script's collection rows (not features)
METADATA = {"collection", "correlation_id", "endpoint", "deployment", "time"}


def _names(spec: MonitorSpec, columns: list[str]) -> list[str]:
    if spec.features:
        return list(spec.features)
    return [c for c in columns if c not in METADATA and c not in spec.predictions]


def run(
    spec: MonitorSpec, destination: CollectorDestination, start: float, end: float
) -> dict[str, Any]:
    """Judge the rows logged in (start, end]. States: ok, breach (`breached` names the
    features and predictions), no_data (nothing logged in the window), too_few_rows,
    no_baseline (first_rows not logged yet), failed (`error` says why)."""
    outcome: dict[str, Any] = {"window": {"start": iso(start), "end": iso(end)}, "rows": 0}
    try:
        # A baseline of the first rows logged needs the data from the start.
        since = start if spec.baseline.path is not None else None
        logged = collected(spec, destination, since)
        if spec.baseline.path is not None:
            reference = read_baseline(spec.baseline.path)
            names = _names(spec, reference.column_names)
        else:
            wanted = spec.baseline.first_rows
            assert wanted is not None
            # The first `wanted` records hold at least `wanted` rows (a request's
            # payload may hold many).
            first = first_rows(logged, wanted)
            names = _names(spec, first.column_names)
            reference = features_of(spec, first, names).slice(0, wanted)
            if reference.num_rows < wanted:
                return {
                    **outcome,
                    "state": "no_baseline",
                    "message": (
                        f"{reference.num_rows} of the baseline's first {wanted} rows are "
                        "logged so far"
                    ),
                }
        missing = [n for n in [*names] if n not in reference.column_names]
        if missing:
            raise MonitorDataError(f"the baseline has no column {', '.join(missing)}")
        window_rows = between(logged, start, end) if logged.num_rows else logged
        if window_rows.num_rows == 0:
            return {**outcome, "state": "no_data", "message": "nothing was logged in the window"}
        window = features_of(spec, window_rows, names)
        outcome["rows"] = window.num_rows
        if window.num_rows < spec.min_rows:
            return {
                **outcome,
                "state": "too_few_rows",
                "message": (f"{window.num_rows} rows in the window; min_rows is {spec.min_rows}"),
            }
        features = compare(reference, window, names, set(spec.categorical), spec.thresholds)
        predicted = [
            p for p in spec.predictions if p in reference.column_names and p in window.column_names
        ]
        predictions = compare(
            reference,
            window,
            predicted,
            {p for p in predicted if not pa.types.is_floating(reference.column(p).type)},
            spec.thresholds,
        )
    except MonitorDataError as exc:
        return {**outcome, "state": "failed", "error": str(exc)}
    breached = [d.feature for d in [*features, *predictions] if d.breaches]
    return {
        **outcome,
        "state": "breach" if breached else "ok",
        "breached": breached,
        "features": [d.to_dict() for d in features],
        "predictions": [d.to_dict() for d in predictions],
        "unjudged_predictions": sorted(set(spec.predictions) - set(predicted)),
    }


__all__ = ["FeatureDrift", "run"]
