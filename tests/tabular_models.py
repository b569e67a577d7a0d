"""Tiny tabular models (scikit-learn, XGBoost, LightGBM), trained at test time on
generated data with fixed seeds, and the data they were trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ["age", "income", "score", "tenure"]
COLORS = ["red", "green", "blue"]


def numbers(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, len(FEATURES)))


def three_classes(x: np.ndarray) -> np.ndarray:
    s = x[:, 0] + 0.5 * x[:, 1] - x[:, 2]
    return np.digitize(s, [-0.5, 0.5])


def frame(x: np.ndarray) -> Any:
    import pandas as pd

    return pd.DataFrame(x, columns=FEATURES)


def mixed_frame(rows: int, seed: int = 0) -> Any:
    """Numbers and a text column (`color`)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.normal(size=rows),
            "color": rng.choice(COLORS, size=rows),
        }
    )


@dataclass
class TabularModels:
    folder: Path
    #: file name -> the fitted object (its in-process predict is the reference)
    fitted: dict[str, Any]


def build(folder: Path) -> TabularModels:
    import joblib
    import lightgbm as lgb
    import skops.io as sio
    import xgboost as xgb
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder.mkdir(parents=True, exist_ok=True)
    x = numbers(400)
    y = three_classes(x)
    fitted: dict[str, Any] = {}

    pipeline = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
    pipeline.fit(frame(x), y)
    sio.dump(pipeline, folder / "pipeline.skops")
    joblib.dump(pipeline, folder / "pipeline.joblib")
    fitted["pipeline.skops"] = fitted["pipeline.joblib"] = pipeline

    mixed = mixed_frame(400)
    colored = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["x1", "x2"]),
                        ("colors", OneHotEncoder(handle_unknown="ignore"), ["color"]),
                    ]
                ),
            ),
            ("model", LogisticRegression()),
        ]
    )
    colored.fit(mixed, np.where(mixed["color"] == "red", "hot", "cold"))
    sio.dump(colored, folder / "colored.skops")
    fitted["colored.skops"] = colored

    ridge = Ridge().fit(x, x @ np.array([1.0, -2.0, 0.5, 3.0]))
    joblib.dump(ridge, folder / "ridge.pkl")
    fitted["ridge.pkl"] = ridge

    booster = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0)
    booster.fit(frame(x), (y == 2).astype(int))
    booster.save_model(folder / "binary.json")
    fitted["binary.json"] = booster

    regressor = xgb.XGBRegressor(n_estimators=20, max_depth=3, random_state=0)
    regressor.fit(x, x[:, 0] * 2 + x[:, 3])
    regressor.save_model(folder / "regressor.ubj")
    fitted["regressor.ubj"] = regressor

    multiclass = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, random_state=0, verbose=-1)
    multiclass.fit(x, y)
    multiclass.booster_.save_model(folder / "multiclass.txt")
    fitted["multiclass.txt"] = multiclass
    return TabularModels(folder, fitted)
