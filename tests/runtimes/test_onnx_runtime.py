"""The onnxruntime runtime and the instance pool, on tiny models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtimes.base import RuntimeConfig
from runtimes.errors import DeviceUnavailable, InvalidInput, ModelLoadError
from runtimes.onnx_impl import OnnxRuntime, read_signature
from runtimes.registry import load_runtime
from runtimes.types import Signature, TensorSpec

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_signature_has_dynamic_dims(model_dir: Path) -> None:
    signature = read_signature(model_dir / "classifier.onnx")
    assert signature.inputs == (TensorSpec("input", "FP32", (-1, 4)),)
    assert signature.outputs == (
        TensorSpec("probabilities", "FP32", (-1, 3)),
        TensorSpec("label", "INT64", (-1,)),
    )


def test_infer_matches_a_plain_session_and_selects_outputs(model_dir: Path) -> None:
    runtime = load_runtime(
        "onnx", RuntimeConfig(model_dir / "classifier.onnx", options={"intra_op_num_threads": 1})
    )
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    plain = ort.InferenceSession(
        str(model_dir / "classifier.onnx"), providers=["CPUExecutionProvider"]
    )
    got = runtime.infer({"input": x}, ["label"])
    assert list(got) == ["label"]
    np.testing.assert_array_equal(got["label"], plain.run(["label"], {"input": x})[0])


def test_bytes_tensors_are_bytes_both_ways(model_dir: Path) -> None:
    runtime = OnnxRuntime(RuntimeConfig(model_dir / "text.onnx"))
    out = runtime.infer({"text": np.array([b"cat", b"owl"], dtype=object)})
    assert out["echo"].tolist() == [b"cat", b"owl"] and out["token_id"].tolist() == [1, 0]


def test_validation_messages_name_the_input() -> None:
    signature = Signature((TensorSpec("x", "FP32", (-1, 4)),), ())
    with pytest.raises(
        InvalidInput, match=r"input 'x': expected shape \[-1, 4\], received \[2, 3\]"
    ):
        signature.validate({"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(InvalidInput, match="input 'x': expected datatype FP32, received FP64"):
        signature.validate({"x": np.zeros((2, 4))})
    with pytest.raises(InvalidInput, match="missing input"):
        signature.validate({})


def test_options_and_bad_files(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="graph_optimization_level 'max'"):
        OnnxRuntime(
            RuntimeConfig(
                model_dir / "classifier.onnx", options={"graph_optimization_level": "max"}
            )
        )
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="bad.onnx"):
        OnnxRuntime(RuntimeConfig(tmp_path / "bad.onnx"))
    with pytest.raises(ModelLoadError, match="unknown runtime 'tf'"):
        load_runtime("tf", RuntimeConfig(tmp_path / "bad.onnx"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on hosts without CUDA")
def test_cuda_requested_but_absent_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(
        DeviceUnavailable, match="device 'cuda:1' needs onnxruntime's CUDAExecutionProvider"
    ):
        OnnxRuntime(RuntimeConfig(model_dir / "classifier.onnx", device="cuda:1"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_provider_runs_the_model(model_dir: Path) -> None:
    runtime = OnnxRuntime(RuntimeConfig(model_dir / "classifier.onnx", device="cuda"))
    assert runtime.providers[0] == "CUDAExecutionProvider"
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    cpu = OnnxRuntime(RuntimeConfig(model_dir / "classifier.onnx"))
    want = cpu.infer({"input": x})["probabilities"]
    # onnxruntime's CUDA provider multiplies FP32 in TF32 on Ampere and newer (its
    # default): ~1e-3 relative error on an H200. use_tf32: 0 gives FP32 results.
    np.testing.assert_allclose(
        runtime.infer({"input": x})["probabilities"], want, rtol=1e-2, atol=1e-3
    )
    exact = OnnxRuntime(
        RuntimeConfig(
            model_dir / "classifier.onnx", device="cuda", options={"cuda_options": {"use_tf32": 0}}
        )
    )
    np.testing.assert_allclose(
        exact.infer({"input": x})["probabilities"], want, rtol=1e-5, atol=1e-6
    )


def _tensorrt_usable() -> bool:
    """Compiled into onnxruntime-gpu is not enough: TensorRT's own libraries must load."""
    if not HAS_CUDA or "TensorrtExecutionProvider" not in ort.get_available_providers():
        return False
    from gateway.demo import build_classifier

    session = ort.InferenceSession(
        build_classifier(0), providers=["TensorrtExecutionProvider", "CPUExecutionProvider"]
    )
    return "TensorrtExecutionProvider" in session.get_providers()


HAS_TENSORRT = _tensorrt_usable()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_io_binding_and_batches_match_cpu(model_dir: Path) -> None:
    bound = OnnxRuntime(RuntimeConfig(model_dir / "classifier.onnx", device="cuda:0"))
    plain = OnnxRuntime(
        RuntimeConfig(model_dir / "classifier.onnx", device="cuda:0", options={"io_binding": False})
    )
    cpu = OnnxRuntime(RuntimeConfig(model_dir / "classifier.onnx"))
    for rows in (1, 7, 256):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        want = cpu.infer({"input": x})
        for runtime in (bound, plain):
            got = runtime.infer({"input": x})
            # TF32 (the CUDA provider's default on Ampere+): see the test above.
            np.testing.assert_allclose(
                got["probabilities"], want["probabilities"], rtol=1e-2, atol=1e-3
            )
            # Labels agree wherever the top two classes are not within TF32's error.
            top2 = np.sort(want["probabilities"], axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 1e-2
            np.testing.assert_array_equal(got["label"][clear], want["label"][clear])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs onnxruntime-gpu with TensorRT and a GPU")
def test_tensorrt_provider(model_dir: Path) -> None:
    runtime = OnnxRuntime(
        RuntimeConfig(model_dir / "classifier.onnx", device="cuda", options={"tensorrt": True})
    )
    assert runtime.providers[0] == "TensorrtExecutionProvider"
    x = np.ones((3, 4), np.float32)
    assert runtime.infer({"input": x})["probabilities"].shape == (3, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or HAS_TENSORRT, reason="needs a CUDA host without TensorRT")
def test_tensorrt_requested_but_absent_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="TensorrtExecutionProvider"):
        OnnxRuntime(
            RuntimeConfig(model_dir / "classifier.onnx", device="cuda", options={"tensorrt": True})
        )
