"""The drift and quality measures on fixed-seed data: samples of one distribution do
not breach; a shifted feature (numeric or categorical), missing values and values out
of the baseline's range breach on exactly that feature and measure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from deploy.specs import MonitorThresholds
from monitoring.drift import compare

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

FEATURES = ["amount", "age", "score", "country"]


def sample(rows: int, seed: int, shift: dict[str, float] | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    shift = shift or {}
    countries = rng.choice(
        ["de", "fr", "nl", "us"], rows, p=[0.1, 0.1, 0.2, 0.6] if "country" in shift else None
    )
    return pa.table(
        {
            "amount": rng.lognormal(3.0 + shift.get("amount", 0.0), 0.5, rows),
            "age": rng.normal(40 + shift.get("age", 0.0), 10, rows),
            "score": rng.uniform(0, 1, rows),
            "country": countries,
        }
    )


def judge(window: pa.Table) -> dict[str, tuple[str, ...]]:
    baseline = sample(5000, seed=1)
    drifts = compare(baseline, window, FEATURES, {"country"}, MonitorThresholds())
    return {d.feature: d.breaches for d in drifts}


def test_the_same_distribution_does_not_breach() -> None:
    assert judge(sample(1000, seed=2)) == dict.fromkeys(FEATURES, ())


def test_shifted_features_breach_exactly() -> None:
    breaches = judge(sample(1000, seed=3, shift={"age": 15.0, "country": 1.0}))
    assert {f for f, b in breaches.items() if b} == {"age", "country"}
    assert "psi" in breaches["age"] and "js_distance" in breaches["country"]


def test_missing_and_out_of_range_values() -> None:
    window = sample(1000, seed=4)
    amount = window.column("amount").to_numpy().copy()
    mask = np.zeros(1000, dtype=bool)
    mask[:200] = True
    score = window.column("score").to_numpy().copy()
    score[:100] = 5.0  # the baseline's scores are all within [0, 1)
    window = window.set_column(0, "amount", pa.array(amount, mask=mask)).set_column(
        2, "score", pa.array(score)
    )
    breaches = judge(window)
    assert "null_rate" in breaches["amount"]
    assert "out_of_range_rate" in breaches["score"]
    assert breaches["age"] == () and breaches["country"] == ()
