"""Fixtures shared by the gateway tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Gateway


@pytest.fixture
def scored(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> tuple[str, dict[str, str]]:
    """An endpoint with the classifier as `blue` (100%), and its key header."""
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    return unique_name, gateway.auth(unique_name)
