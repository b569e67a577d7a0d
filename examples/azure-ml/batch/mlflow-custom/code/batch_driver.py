import glob
import os

import mlflow.pyfunc
import pandas as pd


def init():
    """AZUREML_MODEL_DIR holds the registered model's folder (its name as registered)."""
    global model
    folder = glob.glob(os.path.join(os.environ["AZUREML_MODEL_DIR"], "*", ""))[0]
    model = mlflow.pyfunc.load_model(folder)


def run(mini_batch):
    """The mini-batch's file paths -> each CSV row with its file name and prediction."""
    print(f"scoring {len(mini_batch)} files")
    frames = [pd.read_csv(path).assign(filename=os.path.basename(path)) for path in mini_batch]
    data = pd.concat(frames, ignore_index=True)
    data["prediction"] = model.predict(data.drop(columns=["filename"]))
    return data
