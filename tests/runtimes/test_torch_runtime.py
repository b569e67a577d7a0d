"""The torch runtime on TorchScript and torch.export files built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runtimes.base import RuntimeConfig
from runtimes.errors import DeviceUnavailable, ModelLoadError
from runtimes.torch_impl import TorchRuntime, read_signature
from runtimes.types import Signature, TensorSpec
from tests import models

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

HAS_CUDA = torch.cuda.is_available()
SIG = Signature(
    (TensorSpec("x", "FP32", (-1, 4)),),
    (TensorSpec("p", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models.torch_models(tmp_path_factory.mktemp("torch"))


def test_signatures(files: tuple[Path, Path]) -> None:
    script, exported = files
    assert read_signature(script) == Signature((), ())
    signature = read_signature(exported)
    assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert signature.outputs[1] == TensorSpec("output_1", "INT64", (-1,))
    with pytest.raises(ModelLoadError, match="not a loadable torch.export program"):
        read_signature(script.with_suffix(".pt2").parent / "missing.pt2")


def test_both_formats_give_the_same_answers(files: tuple[Path, Path]) -> None:
    script, exported = files
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    from_script = TorchRuntime(RuntimeConfig(script, signature=SIG)).infer({"x": x})
    from_export = TorchRuntime(RuntimeConfig(exported)).infer({"x": x}, ["output_1"])
    assert list(from_export) == ["output_1"]
    np.testing.assert_array_equal(from_script["label"], from_export["output_1"])
    assert from_script["p"].shape == (6, 3)


def test_torchscript_needs_a_signature(files: tuple[Path, Path]) -> None:
    with pytest.raises(ModelLoadError, match="carries no signature"):
        TorchRuntime(RuntimeConfig(files[0]))


def test_torch_compile_option(files: tuple[Path, Path]) -> None:
    plain = TorchRuntime(RuntimeConfig(files[1]))
    compiled = TorchRuntime(RuntimeConfig(files[1], options={"compile": True}))
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(
        compiled.infer({"x": x})["output_0"], plain.infer({"x": x})["output_0"], rtol=1e-5
    )


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on hosts without CUDA")
def test_cuda_requested_but_absent(files: tuple[Path, Path]) -> None:
    with pytest.raises(DeviceUnavailable, match="device 'cuda:0' needs CUDA"):
        TorchRuntime(RuntimeConfig(files[1], device="cuda:0"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs torch with CUDA and a GPU")
def test_cuda_matches_cpu_at_several_batch_sizes(files: tuple[Path, Path]) -> None:
    cpu = TorchRuntime(RuntimeConfig(files[1]))
    gpu = TorchRuntime(RuntimeConfig(files[1], device="cuda"))
    for rows in (1, 33, 1024):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        np.testing.assert_allclose(
            gpu.infer({"x": x})["output_0"], cpu.infer({"x": x})["output_0"], rtol=1e-4, atol=1e-6
        )
