import os

import numpy as np
import pandas as pd
import torch


def init():
    """Load the model once per worker; AZUREML_MODEL_DIR holds the registered folder."""
    global model
    model = torch.jit.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", "model.pt"))


def run(mini_batch):
    """A list of .npy files (8x8 digits) -> one row per file: its class and probability."""
    results = []
    for path in mini_batch:
        image = torch.from_numpy(np.load(path)).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(image), dim=1)[0]
        results.append(
            {
                "file": os.path.basename(path),
                "class": int(probabilities.argmax()),
                "probability": float(probabilities.max()),
            }
        )
    return pd.DataFrame(results)
