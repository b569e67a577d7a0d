import json
import os

import joblib
import pandas as pd
from azureml.ai.monitoring import Collector


def init():
    """Load the model once per worker, and the collectors of Azure ML's custom logging."""
    global model, inputs_collector, outputs_collector
    model = joblib.load(
        os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model/sklearn_regression_model.pkl")
    )
    inputs_collector = Collector(name="model_inputs")
    outputs_collector = Collector(name="model_outputs")


def run(raw_data):
    """{"data": [[10 numbers], ...]} -> a prediction per row; the inputs and outputs are
    collected, tied by one correlation context."""
    rows = pd.DataFrame(json.loads(raw_data)["data"], columns=[f"x{i}" for i in range(10)])
    context = inputs_collector.collect(rows)
    predictions = pd.DataFrame({"prediction": model.predict(rows.to_numpy())})
    outputs_collector.collect(predictions, context)
    return predictions["prediction"].tolist()
