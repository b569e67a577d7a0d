"""Write the models and inputs the Azure ML-shaped files here use (tiny, generated with
fixed seeds): a scikit-learn regression in online/model-1/model/, a TorchScript MNIST-like
classifier in batch/torch/model/ with .npy digits to score, and an MLflow heart-disease
classifier in batch/mlflow/model/ with CSV files to score.

    python examples/azure-ml/make_models.py [FOLDER]   # default: this folder
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np

HERE = Path(__file__).parent
HEART_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "thalach", "oldpeak"]


def regression(root: Path) -> Path:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10))
    y = x @ np.arange(1, 11) + 3.0
    path = root / "online/model-1/model/sklearn_regression_model.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(LinearRegression().fit(x, y), path)
    return path


def digits(root: Path) -> Path:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    folder = root / "batch/torch/model"
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(net).save(str(folder / "model.pt"))
    inputs = root / "batch/torch/digits"
    inputs.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(12):
        np.save(inputs / f"digit-{i:02d}.npy", rng.random((8, 8), dtype=np.float32))
    return folder


def heart(root: Path) -> Path:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.normal(size=(300, len(HEART_COLUMNS))), columns=HEART_COLUMNS)
    y = (x["age"] + x["chol"] - x["thalach"] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    folder = root / "batch/mlflow/model"
    shutil.rmtree(folder, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.sklearn.save_model(
            model, folder, signature=infer_signature(x, model.predict(x)), input_example=x.head(2)
        )
    inputs = root / "batch/mlflow/heart-unlabeled"
    inputs.mkdir(exist_ok=True)
    for i in range(3):
        rows = pd.DataFrame(rng.normal(size=(50, len(HEART_COLUMNS))), columns=HEART_COLUMNS)
        rows.to_csv(inputs / f"part-{i}.csv", index=False)
    return folder


def make_all(root: Path) -> None:
    for made in (regression(root), digits(root), heart(root)):
        print(f"wrote {made}")


if __name__ == "__main__":
    make_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
