"""Write two small classifier models (model.onnx, model-v2.onnx) for the README tour."""

from pathlib import Path

from gateway.demo import build_classifier

here = Path(__file__).parent
(here / "model.onnx").write_bytes(build_classifier(seed=0))
(here / "model-v2.onnx").write_bytes(build_classifier(seed=1))
print(f"wrote {here / 'model.onnx'} and {here / 'model-v2.onnx'}")
