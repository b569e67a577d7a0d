"""A model saved by another scikit-learn: loaded with a note (refused when strict), also
under a scikit-learn older than 1.3, which has no InconsistentVersionWarning to import
(registration raised ImportError there: a 500)."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from runtimes.errors import ModelLoadError
from runtimes.sklearn_impl import load_estimator

pytestmark = pytest.mark.store_independent


@pytest.fixture
def aged_pickle(tmp_path: Path) -> Path:
    import sklearn
    from sklearn.linear_model import Ridge

    x = np.random.default_rng(0).normal(size=(20, 3))
    path = tmp_path / "ridge.pkl"
    joblib.dump(Ridge().fit(x, x[:, 0]), path)
    current = sklearn.__version__.encode()
    path.write_bytes(path.read_bytes().replace(current, b"0" * len(current)))
    return path


@pytest.mark.parametrize("without_the_warning_class", [False, True], ids=["now", "before-1.3"])
def test_another_version_is_a_note_and_strict_refuses(
    aged_pickle: Path, monkeypatch: pytest.MonkeyPatch, without_the_warning_class: bool
) -> None:
    import sklearn.exceptions

    if without_the_warning_class:
        monkeypatch.delattr(sklearn.exceptions, "InconsistentVersionWarning")
    estimator, notes = load_estimator(aged_pickle, {}, strict=False)
    assert hasattr(estimator, "predict")
    assert len(notes) == 1 and "ridge.pkl was saved with scikit-learn 0" in notes[0], notes
    with pytest.raises(ModelLoadError, match="was saved with scikit-learn 0"):
        load_estimator(aged_pickle, {}, strict=True)
