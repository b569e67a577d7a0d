import json
import logging
import os

import joblib
import numpy


def init():
    """Load the model once per worker; AZUREML_MODEL_DIR holds the registered folder."""
    global model
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model/sklearn_regression_model.pkl")
    model = joblib.load(model_path)
    logging.info("Init complete")


def run(raw_data):
    """{"data": [[10 numbers], ...]} -> a prediction per row."""
    logging.info("model 1: request received")
    data = numpy.array(json.loads(raw_data)["data"])
    result = model.predict(data)
    logging.info("Request processed")
    return result.tolist()
