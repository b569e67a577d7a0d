"""The Ray Serve application `loadtests.ray_benchmark` compares servegate with: what a
Ray Serve user writes for the same model (imported once Ray's environment is set)."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve


class OnnxOverHttp:
    """Ray Serve's own path, as its documentation writes it: a Starlette request in, JSON
    out, `serve.batch` coalescing concurrent requests."""

    def __init__(self, model: bytes, max_batch_size: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        batched: Any = self.batched
        batched.set_max_batch_size(max_batch_size)

    async def __call__(self, request: Any) -> dict[str, Any]:
        x = np.asarray((await request.json())["input_data"], dtype=np.float32)
        return await self.batched(x)  # type: ignore[no-any-return]

    @serve.batch(batch_wait_timeout_s=0.0)
    async def batched(self, xs: list[np.ndarray]) -> list[dict[str, Any]]:
        rows = [len(x) for x in xs]
        outputs = self.session.run(None, {self.input: np.concatenate(xs)})
        names = [o.name for o in self.session.get_outputs()]
        answers, offset = [], 0
        for count in rows:
            answers.append(
                {
                    n: o[offset : offset + count].tolist()
                    for n, o in zip(names, outputs, strict=True)
                }
            )
            offset += count
        return answers
