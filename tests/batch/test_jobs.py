"""Batch jobs end to end through a real gateway and real runner processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Gateway,
    assert_clean_exit,
    metric_samples,
    s3_bucket,
    start_gateway,
    wait_for,
    write_yaml,
)
from tests.gateway.test_server import in_process

ROWS = 2500


def features(seed: int = 0, rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def write_input(folder: Path, fmt: str, x: np.ndarray, name: str = "data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({f"f{i}": x[:, i] for i in range(x.shape[1])})
    path = (
        folder
        / f"{name}.{ {'parquet': 'parquet', 'csv': 'csv', 'json': 'jsonl'}[fmt] }".replace(" ", "")
    )
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("\n".join(json.dumps(row) for row in table.to_pylist()))
    return path


def batch_endpoint(
    gw: Gateway,
    tmp_path: Path,
    model_dir: Path,
    name: str,
    settings: str = "",
    code: str | None = None,
    compute: str = "{instance_count: 2}",
    model: Path | None = None,
) -> None:
    """A batch endpoint `name` with deployment `main`: the classifier (or `model`, or a
    scoring script `code`), 300-row mini-batches into predictions.parquet."""
    gw.cli(
        "batch",
        "endpoint",
        "create",
        "-f",
        str(write_yaml(tmp_path / f"{name}-be.yml", f"name: {name}\n")),
    )
    if code is not None:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / "score.py").write_text(code)
        source = "code_configuration: {code: src, scoring_script: score.py}\n"
    else:
        model = model or model_dir / "classifier.onnx"
        (tmp_path / f"model{model.suffix}").write_bytes(model.read_bytes())
        source = f"model: {{path: model{model.suffix}}}\n"
    gw.cli(
        "batch",
        "deployment",
        "create",
        "-f",
        str(
            write_yaml(
                tmp_path / f"{name}-bd.yml",
                f"""
name: main
endpoint_name: {name}
{source}compute: {compute}
settings:
  mini_batch_size: 300
  output_file_name: predictions.parquet
{settings}""",
            )
        ),
    )


def invoke(
    gw: Gateway, endpoint: str, input_uri: str, output_uri: str, *extra: str, ok: bool = True
) -> tuple[int, str]:
    return gw.cli(
        "batch",
        "invoke",
        "-e",
        endpoint,
        "--input",
        input_uri,
        "--output-path",
        output_uri,
        "--wait",
        *extra,
        ok=ok,
    )


def check_predictions(table: pa.Table, model_dir: Path, inputs: dict[str, np.ndarray]) -> None:
    """Every input row exactly once, in order, and equal to onnxruntime in-process."""
    for source, x in inputs.items():
        names = table["source_file"].cast(pa.string())
        part = table.filter(pa.compute.ends_with(names, source))
        assert part["row"].to_pylist() == list(range(len(x)))
        want = in_process(model_dir / "classifier.onnx", {"input": x})
        np.testing.assert_array_equal(part["label"].to_numpy(), want["label"])
        got = np.stack(part["probabilities"].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got, want["probabilities"], rtol=1e-6)
    assert table.num_rows == sum(len(x) for x in inputs.values())


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_tabular_formats_match_in_process_inference(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str, fmt: str
) -> None:
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    a, b = features(1), features(2, rows=777)
    write_input(tmp_path / "in", fmt, a, "a")
    write_input(tmp_path / "in", fmt, b, "b")
    _, out = invoke(gateway, unique_name, str(tmp_path / "in"), str(tmp_path / "out"))
    summary = json.loads(out[out.index("{") :])
    assert summary["state"] == "completed" and summary["items"]["done"] == ROWS + 777
    ext = "jsonl" if fmt == "json" else fmt
    check_predictions(
        pq.read_table(tmp_path / "out" / "predictions.parquet"),
        model_dir,
        {f"a.{ext}": a, f"b.{ext}": b},
    )
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["output_rows"] == ROWS + 777


def test_csv_output_and_glob_and_an_online_deployment(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """An online endpoint's deployment runs a batch job with its own model and settings."""
    gateway.create_endpoint(tmp_path, unique_name)
    gateway.deploy(tmp_path, unique_name, "blue", model_dir / "classifier.onnx")
    x = features(3)
    write_input(tmp_path / "in", "parquet", x, "keep")
    write_input(tmp_path / "in", "parquet", features(4), "skip")
    invoke(
        gateway,
        unique_name,
        str(tmp_path / "in" / "kee*.parquet"),
        str(tmp_path / "out"),
        "--output-file-name",
        "scores.csv",
        "--mini-batch-size",
        "1000",
    )
    table = pacsv.read_csv(tmp_path / "out" / "scores.csv")
    assert table.column_names == [
        "probabilities_0",
        "probabilities_1",
        "probabilities_2",
        "label",
        "source_file",
        "row",
    ]
    want = in_process(model_dir / "classifier.onnx", {"input": x})
    np.testing.assert_array_equal(table["label"].to_numpy(), want["label"])
    np.testing.assert_allclose(
        table["probabilities_1"].to_numpy(), want["probabilities"][:, 1], rtol=1e-6
    )
    # The job's progress in /metrics (refreshed every 5 s): its mini-batches all done.
    deadline = time.monotonic() + 15
    while not any(
        labels["endpoint"] == unique_name and labels["state"] == "done" and value >= 1
        for labels, value in metric_samples(gateway.url, "servegate_batch_job_mini_batches")
    ):
        assert time.monotonic() < deadline, "no progress series for the job"
        time.sleep(0.5)


FILES_SCRIPT = """
import os
def init():
    pass
def run(mini_batch):
    rows = []
    for path in mini_batch:
        text = open(path).read()
        if "crash-once" in text and not os.path.exists(os.environ["MARKER"]):
            open(os.environ["MARKER"], "w").close()
            os._exit(1)
        if "sleep" in text:
            import time; time.sleep(30)
        if "bad" in text and os.path.exists(os.environ["MARKER"] + ".bad"):
            raise ValueError("cannot score " + os.path.basename(path))
        rows.append({"name": os.path.basename(path), "length": len(text)})
    return rows
"""


def files_endpoint(
    gateway: Gateway, tmp_path: Path, model_dir: Path, name: str, settings: str = ""
) -> None:
    marker = tmp_path / "marker"
    batch_endpoint(
        gateway,
        tmp_path,
        model_dir,
        name,
        code=FILES_SCRIPT,
        settings=(
            f"  mini_batch_size: 2\n  environment_variables: {{MARKER: '{marker}'}}\n" + settings
        ).replace("  mini_batch_size: 300\n", ""),
    )


def test_folder_of_files_with_a_scoring_script_and_a_crashed_worker(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    files_endpoint(gateway, tmp_path, model_dir, unique_name)
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = {f"doc{i:02d}.txt": "x" * (i + 1) for i in range(9)}
    texts["doc04.txt"] = "crash-once"
    for name, text in texts.items():
        (folder / name).write_text(text)
    _, out = invoke(gateway, unique_name, str(folder), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table["name"].to_pylist() == sorted(texts)
    assert table["length"].to_pylist() == [len(texts[n]) for n in sorted(texts)]
    assert (tmp_path / "marker").exists()  # the worker did crash once
    job_id = json.loads(out[out.index("{") :])["job"]
    _, shown = gateway.cli("batch", "show", job_id)
    errors = json.loads(shown)["errors"]
    assert any("a worker process died" in e["error"] for e in errors)


def test_error_threshold_retries_timeout_and_retry_failed_only(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    files_endpoint(
        gateway,
        tmp_path,
        model_dir,
        unique_name,
        "  retry_settings: {max_retries: 1, timeout: 2}\n",
    )
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(6):
        (folder / f"doc{i}.txt").write_text("bad" if i == 1 else "good")
    (folder / "doc5.txt").write_text("sleep")
    (tmp_path / "marker.bad").write_text("")
    # Tolerated (-1): the job completes; the failures are listed with their reasons, and
    # `--wait` exits 3 (completed with failed mini-batches), so scripts can tell.
    code, out = invoke(gateway, unique_name, str(folder), str(tmp_path / "out"), ok=False)
    assert code == 3, out
    summary = json.loads(out[out.index("{") :])
    assert summary["state"] == "completed"
    reasons = {f["mini_batch"]: f["error"] for f in summary["failures"]}
    assert "ValueError: cannot score doc1.txt" in reasons[0]
    assert "timed out after 2 s" in reasons[2]
    assert all(f["attempts"] == 2 for f in summary["failures"])  # 1 retry each
    assert pq.read_table(tmp_path / "out" / "predictions.parquet")["name"].to_pylist() == [
        "doc2.txt",
        "doc3.txt",
    ]
    # Exceeded: with error_threshold 1, two failed files fail the job, with the reason.
    code, out = invoke(
        gateway,
        unique_name,
        str(folder),
        str(tmp_path / "out2"),
        "--error-threshold",
        "1",
        ok=False,
    )
    assert code == 1 and "exceed error_threshold=1" in out
    assert not (tmp_path / "out2" / "predictions.parquet").exists()
    # retry --failed-only: after the cause is fixed, only the failed mini-batches run again.
    (tmp_path / "marker.bad").unlink()
    (folder / "doc5.txt").write_text("good now")
    _, out = gateway.cli("batch", "retry", summary["job"], "--failed-only", "--wait")
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table["name"].to_pylist() == [f"doc{i}.txt" for i in range(6)]


def sigkill_runner_midway(
    gw: Gateway, job_id: str, before: int, wait_s: float, restart_s: float
) -> dict:
    """SIGKILL the job's runner once 10 (and fewer than `before`) mini-batches are done,
    then wait for the supervising replica to start a new runner once the lease expires
    (a new pid, the same job); the job as the new runner shows it."""

    def some_done() -> dict | None:
        job = json.loads(gw.cli("batch", "show", job_id)[1])
        return job if 10 <= job["mini_batch_states"].get("done", 0) < before else None

    job = wait_for(some_done, wait_s, every_s=0.05)
    os.kill(job["pid"], signal.SIGKILL)  # no heartbeat from now on: its lease runs out

    def new_runner() -> dict | None:
        shown = json.loads(gw.cli("batch", "show", job_id)[1])
        return shown if shown["pid"] != job["pid"] and shown["runner_alive"] else None

    again: dict = wait_for(new_runner, restart_s, every_s=0.1)
    return again


def test_a_sigkilled_runner_is_resumed_automatically_with_the_uninterrupted_output(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch_endpoint(
        gateway, tmp_path, model_dir, unique_name, settings="  max_concurrency_per_instance: 1\n"
    )
    x = features(5, rows=60_000)
    write_input(tmp_path / "in", "parquet", x, "big")
    invoke(
        gateway,
        unique_name,
        str(tmp_path / "in"),
        str(tmp_path / "whole"),
        "--mini-batch-size",
        "200",
        "--instance-count",
        "1",
    )
    _, out = gateway.cli(
        "batch",
        "invoke",
        "-e",
        unique_name,
        "--input",
        str(tmp_path / "in"),
        "--output-path",
        str(tmp_path / "resumed"),
        "--mini-batch-size",
        "200",
        "--instance-count",
        "1",
    )
    job_id = json.loads(out)["id"]
    again = sigkill_runner_midway(gateway, job_id, before=250, wait_s=60, restart_s=30)
    code, out = gateway.cli("batch", "resume", job_id, ok=False)  # it runs: nothing to resume
    assert code == 1 and "is running" in out
    wait_for(
        lambda: json.loads(gateway.cli("batch", "show", job_id)[1])["state"] == "completed", 120
    )
    audit = json.loads(gateway.cli("audit", "list", "--target", f"jobs/{job_id}")[1])
    assert any(
        e["action"] == "batch_job.resume" and e["actor"].startswith("batch supervisor")
        for e in audit
    ), audit
    assert again["mini_batch_states"].get("done", 0) >= 10  # resumed, not restarted
    resumed = pq.read_table(tmp_path / "resumed" / "predictions.parquet")
    whole = pq.read_table(tmp_path / "whole" / "predictions.parquet")
    assert resumed.num_rows == 60_000 and resumed["row"].to_pylist() == list(range(60_000))
    assert resumed.equals(whole)


def start_sleeping_job(
    gateway: Gateway, tmp_path: Path, model_dir: Path, name: str, files: int
) -> str:
    """A job (not waited for) over `files` documents whose scoring sleeps 30 s each."""
    files_endpoint(gateway, tmp_path, model_dir, name, "  retry_settings: {timeout: 60}\n")
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(files):
        (folder / f"doc{i}.txt").write_text("sleep")
    _, out = gateway.cli(
        "batch",
        "invoke",
        "-e",
        name,
        "--input",
        str(folder),
        "--output-path",
        str(tmp_path / "out"),
    )
    return str(json.loads(out)["id"])


def test_cancel(gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str) -> None:
    job_id = start_sleeping_job(gateway, tmp_path, model_dir, unique_name, 10)
    time.sleep(2)
    gateway.cli("batch", "cancel", job_id)
    job = wait_for(
        lambda: (
            (j := json.loads(gateway.cli("batch", "show", job_id)[1]))["state"] == "cancelled" and j
        ),
        30,
    )
    assert job["reason"] == "cancelled by request"
    assert not (tmp_path / "out" / "predictions.parquet").exists()


def test_bad_inputs_name_the_file_and_write_nothing(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    code, out = invoke(
        gateway, unique_name, str(tmp_path / "nowhere"), str(tmp_path / "out"), ok=False
    )
    assert code != 0 and f"input '{tmp_path / 'nowhere'}': no such file or folder" in out
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "broken.parquet").write_bytes(b"not parquet at all")
    code, out = invoke(
        gateway, unique_name, str(tmp_path / "junk"), str(tmp_path / "out"), ok=False
    )
    assert code != 0
    (tmp_path / "mixed").mkdir()
    pacsv.write_csv(
        pa.table({"f0": [1.5], "f1": [2.5], "f2": [3.5], "f3": [4.5]}), tmp_path / "mixed" / "a.csv"
    )
    pacsv.write_csv(
        pa.table({"f0": [1.5], "f1": [2.5], "f2": ["x"], "f3": [4.5]}), tmp_path / "mixed" / "b.csv"
    )
    code, out = invoke(
        gateway, unique_name, str(tmp_path / "mixed"), str(tmp_path / "out"), ok=False
    )
    assert code != 0
    jobs = json.loads(gateway.cli("batch", "list", "-e", unique_name)[1])
    reasons = [j["reason"] for j in jobs]
    assert any(
        "broken.parquet" in r and ("cannot be read as parquet" in r or "not a parquet file" in r)
        for r in reasons
    ), reasons
    assert any("b.csv" in r and "column #3 is string, expected double" in r for r in reasons), (
        reasons
    )
    assert not (tmp_path / "out").exists()  # nothing written


def test_inputs_and_outputs_on_s3(s3: dict[str, str], tmp_path: Path, model_dir: Path) -> None:
    gw = start_gateway(tmp_path / "home")  # started with the S3 settings in its environment
    try:
        fs = s3_bucket(s3, "data")
        x = features(6)
        local = write_input(tmp_path / "in", "parquet", x, "s3rows")
        with fs.open_output_stream("data/in/s3rows.parquet") as out:
            out.write(local.read_bytes())
        batch_endpoint(gw, tmp_path, model_dir, "s3-scorer")
        invoke(gw, "s3-scorer", "s3://data/in/", "s3://data/out")
        with fs.open_input_file("data/out/predictions.parquet") as f:
            table = pq.read_table(f)
        check_predictions(table, model_dir, {"s3rows.parquet": x})
        with fs.open_input_stream("data/out/summary.json") as f:
            assert json.loads(f.read())["state"] == "completed"
        # A folder of files on S3 for a scoring script: workers get local copies.
        texts = {f"doc{i}.txt": "y" * (i + 3) for i in range(5)}
        for name, text in texts.items():
            with fs.open_output_stream(f"data/docs/{name}") as out:
                out.write(text.encode())
        files_endpoint(gw, tmp_path, model_dir, "s3-files")
        invoke(gw, "s3-files", "s3://data/docs", "s3://data/docs-out")
        with fs.open_input_file("data/docs-out/predictions.parquet") as f:
            table = pq.read_table(f)
        assert table["length"].to_pylist() == [len(texts[n]) for n in sorted(texts)]
        assert table["source_file"].to_pylist() == [f"data/docs/{n}" for n in sorted(texts)]
    finally:
        assert_clean_exit(gw)
