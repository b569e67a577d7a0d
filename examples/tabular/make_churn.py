"""Train a tiny churn classifier on generated data (numbers and a text column) and save it
with skops: examples/tabular/churn.skops. Needs `pip install "servegate[sklearn]"`."""

from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

rng = np.random.default_rng(0)
rows = 500
customers = pd.DataFrame(
    {
        "age": rng.integers(18, 80, rows).astype(float),
        "plan": rng.choice(["basic", "silver", "gold"], rows),
        "tenure": rng.exponential(4.0, rows),
    }
)
# Short tenure on the basic plan churns.
churned = ((customers["tenure"] < 2) & (customers["plan"] == "basic")).astype(int)
model = Pipeline(
    [
        (
            "columns",
            ColumnTransformer(
                [
                    ("numbers", StandardScaler(), ["age", "tenure"]),
                    ("plans", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                ]
            ),
        ),
        ("classifier", LogisticRegression()),
    ]
).fit(customers, churned)
target = Path(__file__).parent / "churn.skops"
sio.dump(model, target)
print(f"wrote {target}")
