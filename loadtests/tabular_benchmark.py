"""Tabular models without a scoring script: the native runtimes against `convert: onnx`,
the framework's own predict in-process (the limit) and a scoring-script deployment doing
the same (what users write today), in one run.

Per framework, one model trained here on 20,000 generated rows of 32 named float columns
(`x0`..`x31`, a DataFrame, as users train): XGBoost and LightGBM with 100 trees (depth 6,
binary), and a scikit-learn Pipeline (StandardScaler, then GradientBoostingClassifier with
100 trees of depth 3; skl2onnx 1.20 cannot convert HistGradientBoosting). One gateway
pinned to core 0 with its defaults; `wrk` on core 1.

- online: batch-1 JSON in pandas' split orientation (`{"input_data": {"columns": [...],
  "data": [[...]]}}`), 32 connections; native and converted deployments with
  `batching: {max_batch_size: 32}` as the README configures ONNX ones, the scoring script
  on 16 worker processes (its default host, one request each); the cases alternate in
  slices (medians). The limit: the framework's predict on one row, in-process, one
  thread, on core 0 (a float array for the boosters, a DataFrame for the pipeline).
- batch: a 1M-row Parquet file of the same columns, 10,000-row mini-batches, one worker;
  rows/s end to end (planning, reading, scoring, writing); the limit: the framework's
  predict on 10,000-row chunks already in memory, one thread, on core 0.

    python -m loadtests.tabular_benchmark [--rows 1000000] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loadtests.batch_benchmark import run_job
from loadtests.benchmark import LOAD_CORE, SERVER_CORE, interleaved, wrk
from loadtests.gateway_process import GatewayProcess

COLUMNS = [f"x{i}" for i in range(32)]
SCRIPT = """
import json, os
import numpy as np
import pandas as pd

def init():
    global model, predict
    folder = os.environ["AZUREML_MODEL_DIR"]
    name = os.listdir(folder)[0]
    path = os.path.join(folder, name)
    if name.endswith(".skops"):
        import skops.io as sio
        model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        predict = lambda frame: model.predict_proba(frame)
    elif name.endswith(".json"):
        import xgboost as xgb
        model = xgb.Booster(model_file=path)
        model.set_param({"nthread": 1})
        predict = lambda frame: model.inplace_predict(frame)
    else:
        import lightgbm as lgb
        model = lgb.Booster(model_file=path)
        predict = lambda frame: model.predict(frame, num_threads=1)

def run(raw_data):
    doc = json.loads(raw_data)["input_data"]
    frame = pd.DataFrame(doc["data"], columns=doc["columns"])
    return {"probabilities": np.asarray(predict(frame)).tolist()}
"""


def train(folder: Path) -> dict[str, tuple[Path, Any]]:
    import lightgbm as lgb
    import pandas as pd
    import skops.io as sio
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(20_000, len(COLUMNS))), columns=COLUMNS)
    y = ((x["x0"] + x["x1"] * x["x2"] - x["x3"]) > 0).astype(int)
    booster = xgb.XGBClassifier(n_estimators=100, max_depth=6, random_state=0, n_jobs=1)
    booster.fit(x, y)
    booster.save_model(folder / "xgboost.json")
    gbm = lgb.LGBMClassifier(n_estimators=100, max_depth=6, random_state=0, n_jobs=1, verbose=-1)
    gbm.fit(x, y)
    gbm.booster_.save_model(folder / "lightgbm.txt")
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("model", GradientBoostingClassifier(n_estimators=100))]
    ).fit(x, y)
    sio.dump(pipeline, folder / "sklearn.skops")
    return {
        "xgboost": (folder / "xgboost.json", booster.get_booster()),
        "lightgbm": (folder / "lightgbm.txt", gbm.booster_),
        "sklearn": (folder / "sklearn.skops", pipeline),
    }


def predictor(framework: str, model: Any) -> Any:
    """The framework's own predict, one thread, on what it takes fastest: a float array
    for the boosters, the DataFrame the pipeline was fitted on."""
    if framework == "xgboost":
        model.set_param({"nthread": 1})
        return lambda frame: model.inplace_predict(frame.to_numpy(), validate_features=False)
    if framework == "lightgbm":
        return lambda frame: model.predict(frame.to_numpy(), num_threads=1)
    return model.predict_proba


def in_process(framework: str, model: Any, frame: Any, seconds: float) -> float:
    """Calls/s of predict on `frame`, pinned to the server's core."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    try:
        predict = predictor(framework, model)
        predict(frame)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predict(frame)
            calls += 1
        return calls / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, before)


def in_process_rows(framework: str, model: Any, table: Any, chunk: int) -> float:
    """Rows/s of predict on `chunk`-row slices of data already in memory, as the
    framework takes it fastest (a float array for the boosters)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    try:
        if framework == "xgboost":
            model.set_param({"nthread": 1})
            data: Any = table.to_numpy()
            predict = lambda part: model.inplace_predict(part, validate_features=False)  # noqa: E731
        elif framework == "lightgbm":
            data = table.to_numpy()
            predict = lambda part: model.predict(part, num_threads=1)  # noqa: E731
        else:
            data, predict = table, model.predict_proba
        started = time.perf_counter()
        for start in range(0, len(table), chunk):
            predict(data[start : start + chunk])
        return len(table) / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, before)


def scoring_rows_per_s(gateway: GatewayProcess, job: dict[str, Any], rows: int) -> float:
    """The worker's own rate: rows over the seconds its mini-batches took (reading,
    scoring, writing), without the job's start (process, imports, model load)."""
    seconds = float(gateway.call("GET", f"/management/batch/jobs/{job['id']}")["worker_seconds"])
    return rows / seconds if seconds else 0.0


def deploy(gateway: GatewayProcess, work: Path, framework: str, path: Path) -> None:
    gateway.call(
        "POST",
        f"/management/models/{framework}/versions",
        params={"filename": path.name},
        content=path.read_bytes(),
    )
    gateway.call("POST", "/management/endpoints", json={"name": framework, "auth_mode": "none"})
    # As the README configures ONNX deployments (and the benchmark measures them).
    served = {"batching": {"max_batch_size": 32}}
    for name, extra in (
        ("native", served),
        ("converted", {**served, "runtime_options": {"convert": "onnx"}}),
    ):
        gateway.call(
            "POST",
            f"/management/endpoints/{framework}/deployments",
            json={"name": name, "model": f"{framework}:1", **extra},
        )
    code = work / f"code-{framework}"
    code.mkdir()
    (code / "score.py").write_text(SCRIPT)
    gateway.call(
        "POST",
        f"/management/endpoints/{framework}/deployments",
        json={
            "name": "script",
            "model": f"{framework}:1",
            "code_configuration": {"code": str(code), "scoring_script": "score.py"},
            # 16 worker processes (its default host): room for the 32 connections
            # without 429s (2 x 16 in flight).
            "request_settings": {"max_concurrent_requests_per_instance": 16},
        },
    )
    gateway.call("POST", "/management/batch/endpoints", json={"name": f"{framework}-batch"})
    for name, options in (("native", {}), ("converted", {"convert": "onnx"})):
        gateway.call(
            "POST",
            f"/management/batch/endpoints/{framework}-batch/deployments",
            json={
                "name": name,
                "model": f"{framework}:1",
                "runtime_options": options,
                "compute": {"instance_count": 1},
                "settings": {"mini_batch_size": 10_000, "output_file_name": "out.parquet"},
            },
        )


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per online case")
    parser.add_argument("--slice", type=float, default=2.0)
    parser.add_argument("--report", type=Path, default=Path("reports/tabular_benchmark.json"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    work = Path(tempfile.mkdtemp(prefix="sg-tabular-bench-"))
    models = train(work)
    rng = np.random.default_rng(1)
    one = pd.DataFrame(rng.normal(size=(1, len(COLUMNS))), columns=COLUMNS)
    body = json.dumps(
        {"input_data": {"columns": COLUMNS, "data": one.to_numpy().tolist()}}
    ).encode()
    table = pd.DataFrame(rng.normal(size=(args.rows, len(COLUMNS))), columns=COLUMNS)
    pq.write_table(pa.Table.from_pandas(table), work / "rows.parquet", row_group_size=100_000)
    report: dict[str, Any] = {"rows": args.rows, "columns": len(COLUMNS)}
    with GatewayProcess(work / "home", core=SERVER_CORE) as gateway:
        for framework, (path, _) in models.items():
            deploy(gateway, work, framework, path)
        for framework, (_, model) in models.items():
            limit = in_process(framework, model, one, 3.0)
            cases = {
                name: lambda s, n=name, f=framework: wrk(
                    f"{gateway.url}/endpoints/{f}/score",
                    body,
                    {"Content-Type": "application/json", "azureml-model-deployment": n},
                    32,
                    s,
                    work,
                )
                for name in ("native", "converted", "script")
            }
            online = interleaved(cases, max(1, round(args.duration / args.slice)), args.slice)
            batch, scoring = {}, {}
            for name in ("native", "converted"):
                wall, job = run_job(
                    gateway, work, str(work / f"out-{framework}-{name}"), f"{framework}-batch"
                )
                batch[name] = args.rows / wall
                scoring[name] = scoring_rows_per_s(gateway, job, args.rows)
            rows_limit = in_process_rows(framework, model, table, 10_000)
            report[framework] = {
                "online_rps": {k: round(v["rps"], 1) for k, v in online.items()},
                "online_p99_ms": {k: round(v.get("p99_ms", 0.0), 2) for k, v in online.items()},
                "online_non_2xx": {k: v["non_2xx"] for k, v in online.items()},
                "in_process_batch1_calls_per_s": round(limit, 1),
                "native_vs_script (>= 3)": round(
                    online["native"]["rps"] / online["script"]["rps"], 2
                ),
                "batch_rows_per_s_end_to_end": {k: round(v) for k, v in batch.items()},
                "batch_worker_rows_per_s": {k: round(v) for k, v in scoring.items()},
                "in_process_rows_per_s": round(rows_limit),
                "worker_native_vs_in_process (>= 0.8)": round(scoring["native"] / rows_limit, 2),
                "end_to_end_native_vs_in_process": round(batch["native"] / rows_limit, 2),
            }
            print(json.dumps({framework: report[framework]}, indent=2), flush=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
