"""The measures, column by column, with pyarrow compute and numpy (no Python loop over
rows): population stability index and Jensen-Shannon distance of the distributions
(numbers binned by the baseline's deciles; categories as they are), null rate, and the
share of values outside the baseline (its range, or its categories)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: numbers are binned by the baseline's quantiles into this many bins
BINS = 10
#: an empty bin's share, so that logarithms stay finite (as PSI is usually computed)
EPSILON = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    js_distance: float
    null_rate: float
    out_of_range_rate: float
    baseline_null_rate: float
    rows: int
    #: the measures past their limits (empty: no breach)
    breaches: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "breaches": list(self.breaches)}


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros_like(counts, dtype=float)
    shares = np.maximum(shares, EPSILON)
    return shares / shares.sum()


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    middle = (expected + actual) / 2
    divergence = 0.5 * np.sum(expected * np.log2(expected / middle)) + 0.5 * np.sum(
        actual * np.log2(actual / middle)
    )
    return float(np.sqrt(max(divergence, 0.0)))


def _null_rate(column: pa.ChunkedArray | pa.Array) -> float:
    return column.null_count / len(column) if len(column) else 0.0


def numeric(feature: str, baseline: pa.ChunkedArray, window: pa.ChunkedArray) -> FeatureDrift:
    base = pc.drop_null(pc.cast(baseline, pa.float64())).to_numpy()
    live = pc.drop_null(pc.cast(window, pa.float64())).to_numpy()
    base, live = base[np.isfinite(base)], live[np.isfinite(live)]
    edges = np.unique(np.quantile(base, np.linspace(0, 1, BINS + 1))) if len(base) else np.array([])
    # Outer bins open-ended: values beyond the baseline's range still land in a bin.
    inner = edges[1:-1]
    expected = _shares(np.bincount(np.searchsorted(inner, base, "right"), minlength=len(inner) + 1))
    actual = _shares(np.bincount(np.searchsorted(inner, live, "right"), minlength=len(inner) + 1))
    outside = (
        float(np.mean((live < base.min()) | (live > base.max())))
        if len(live) and len(base)
        else 0.0
    )
    return FeatureDrift(
        feature,
        "numeric",
        psi(expected, actual),
        js_distance(expected, actual),
        _null_rate(window),
        outside,
        _null_rate(baseline),
        len(window),
    )


def categorical(feature: str, baseline: pa.ChunkedArray, window: pa.ChunkedArray) -> FeatureDrift:
    base = pc.value_counts(pc.drop_null(pc.cast(baseline, pa.string())))
    live = pc.value_counts(pc.drop_null(pc.cast(window, pa.string())))
    base_counts = dict(
        zip(base.field("values").to_pylist(), base.field("counts").to_pylist(), strict=True)
    )
    live_counts = dict(
        zip(live.field("values").to_pylist(), live.field("counts").to_pylist(), strict=True)
    )
    categories = sorted(set(base_counts) | set(live_counts))
    expected = _shares(np.array([base_counts.get(c, 0) for c in categories], dtype=float))
    actual = _shares(np.array([live_counts.get(c, 0) for c in categories], dtype=float))
    seen = sum(live_counts.values())
    unseen = sum(n for c, n in live_counts.items() if c not in base_counts)
    return FeatureDrift(
        feature,
        "categorical",
        psi(expected, actual),
        js_distance(expected, actual),
        _null_rate(window),
        unseen / seen if seen else 0.0,
        _null_rate(baseline),
        len(window),
    )


def judged(drift: FeatureDrift, thresholds: Any) -> FeatureDrift:
    """The drift with the measures that pass `thresholds` (a MonitorThresholds)."""
    breaches = tuple(
        name
        for name in ("psi", "js_distance", "null_rate", "out_of_range_rate")
        if getattr(drift, name) > getattr(thresholds, name)
    )
    return FeatureDrift(**{**asdict(drift), "breaches": breaches})


def compare(
    baseline: pa.Table,
    window: pa.Table,
    features: list[str],
    categorical_features: set[str],
    thresholds: Any,
) -> list[FeatureDrift]:
    """Every feature's drift and quality, judged against the thresholds. A feature the
    window lacks counts as all null."""
    results = []
    for feature in features:
        base = baseline.column(feature)
        live = (
            window.column(feature)
            if feature in window.column_names
            else pa.chunked_array([pa.nulls(window.num_rows, base.type)])
        )
        measure = categorical if feature in categorical_features else numeric
        results.append(judged(measure(feature, base, live), thresholds))
    return results
