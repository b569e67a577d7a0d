"""Score the `fraud` endpoint with a standard Open Inference Protocol client.

pip install 'tritonclient[http]'
python examples/triton_client.py KEY
"""

import sys

import numpy as np
import tritonclient.http as triton

key = sys.argv[1]
client = triton.InferenceServerClient(url="127.0.0.1:8000")
headers = {"Authorization": f"Bearer {key}"}
print(client.get_model_metadata("fraud", headers=headers))

x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
infer_input = triton.InferInput("input", list(x.shape), "FP32")
infer_input.set_data_from_numpy(x)  # binary tensor data, the client's default
result = client.infer("fraud", [infer_input], headers=headers)
print("probabilities", result.as_numpy("probabilities"))
print("label", result.as_numpy("label"))
