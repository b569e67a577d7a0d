"""How batch jobs end when things go wrong: inputs that do not fit the model, rows that
all fail, a runner that is killed (its workers go with it), and runners reaped by the
gateway. Real gateway, runner and worker processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.batch.test_jobs import (
    batch_endpoint,
    features,
    invoke,
    start_sleeping_job,
    write_input,
)
from tests.conftest import Gateway, wait_for


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _gone(pid: int) -> bool:
    """Exited and reaped: no /proc entry at all (a zombie still has one)."""
    return not Path(f"/proc/{pid}").exists()


def test_inputs_that_do_not_fit_the_model_fail_at_planning(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """The classifier takes 4 values per row; a file with 3 columns (or a text column)
    fails the job at once, naming the file and the column; nothing runs, nothing is
    written, and nothing is retried."""
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    write_input(tmp_path / "narrow", "parquet", features(1, rows=50_000)[:, :3], "narrow")
    started = time.monotonic()
    code, out = invoke(
        gateway, unique_name, str(tmp_path / "narrow"), str(tmp_path / "out"), ok=False
    )
    assert code == 1
    assert time.monotonic() - started < 15
    summary = json.loads(out[out.index("{") :])
    reason = summary["reason"]
    assert f"input file '{tmp_path / 'narrow' / 'narrow.parquet'}'" in reason, reason
    assert "takes 4 values per row" in reason and "3 numeric columns" in reason
    # The file's column names are its content: never repeated in an error.
    assert "f0" not in reason and "f2" not in reason
    assert summary["state"] == "failed" and summary["mini_batches"]["total"] == 0
    assert not (tmp_path / "out").exists()
    # A text column among the four: named as the culprit.
    (tmp_path / "text").mkdir()
    x = features(2, rows=10)
    pq.write_table(
        pa.table({"f0": x[:, 0], "f1": x[:, 1], "note": ["a"] * 10, "f3": x[:, 3]}),
        tmp_path / "text" / "t.parquet",
    )
    code, out = invoke(
        gateway, unique_name, str(tmp_path / "text"), str(tmp_path / "out"), ok=False
    )
    assert code == 1 and "column #3 is string" in out and "t.parquet" in out, out
    assert "note" not in out
    assert not (tmp_path / "out").exists()


ALWAYS_FAILS = """
def init():
    pass
def run(mini_batch):
    raise ValueError("this model refuses everything")
"""


def test_a_job_where_every_row_fails_leaves_no_output_file(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch_endpoint(
        gateway,
        tmp_path,
        model_dir,
        unique_name,
        # The rows of the Parquet file, 300 a mini-batch, as one table each.
        settings="  retry_settings: {max_retries: 0}\n  error_threshold: -1\n"
        "  script_input: table\n",
        code=ALWAYS_FAILS,
    )
    write_input(tmp_path / "in", "parquet", features(3, rows=900))
    code, out = invoke(gateway, unique_name, str(tmp_path / "in"), str(tmp_path / "out"), ok=False)
    assert code == 3, out  # completed, with failed mini-batches
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["state"] == "completed" and summary["items"]["done"] == 0
    assert summary["mini_batches"]["failed"] == summary["mini_batches"]["total"] == 3
    assert "this model refuses everything" in summary["failures"][0]["error"]
    # An output file is valid or absent: here there is nothing to write.
    assert not (tmp_path / "out" / "predictions.parquet").exists()
    assert not list((tmp_path / "out").glob(".*incomplete"))


def test_workers_die_with_a_killed_runner_and_runners_are_reaped(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    job_id = start_sleeping_job(gateway, tmp_path, model_dir, unique_name, 8)
    job = wait_for(lambda: json.loads(gateway.cli("batch", "show", job_id)[1]).get("pid"), 30)
    runner = int(job)
    workers = wait_for(lambda: _children(runner) if len(_children(runner)) >= 2 else None, 30)
    os.kill(runner, signal.SIGKILL)
    # The kernel kills the workers with their runner (PR_SET_PDEATHSIG) ...
    wait_for(lambda: not any(_alive(w) for w in workers), 10)
    # ... and the gateway, the runner's parent, reaps it: no zombie left behind.
    wait_for(lambda: _gone(runner), 10)
    # A runner that finishes normally is reaped too.
    write_input(tmp_path / "small", "parquet", features(4, rows=10))
    batch_endpoint(gateway, tmp_path, model_dir, f"{unique_name}b")
    _, out = invoke(gateway, f"{unique_name}b", str(tmp_path / "small"), str(tmp_path / "o2"))
    finished = json.loads(out[out.index("{") :])["job"]
    pid = json.loads(gateway.cli("batch", "show", finished)[1])["pid"]
    wait_for(lambda: _gone(pid), 10)
    assert pq.read_table(tmp_path / "o2" / "predictions.parquet").num_rows == 10


@pytest.mark.parametrize(
    "script, cause",
    [
        (
            "def init():\n    raise AttributeError('no attribute predict_proba')\n"
            "def run(mini_batch):\n    return mini_batch\n",
            "init() of score.py raised AttributeError: no attribute predict_proba",
        ),
        (
            "import servegate_test_missing_torchvision\n"
            "def run(mini_batch):\n    return mini_batch\n",
            "No module named 'servegate_test_missing_torchvision'",
        ),
    ],
    ids=["init-raises", "import-fails"],
)
def test_a_script_that_cannot_start_fails_the_job_early_with_its_cause(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str, script: str, cause: str
) -> None:
    """Every mini-batch would fail the same way: the job stops after one retry of the
    workers, failed (not completed), with the cause in its error, summary.json and log;
    no mini-batch is spent."""
    batch_endpoint(gateway, tmp_path, model_dir, unique_name, code=script)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text("x")
    started = time.monotonic()
    code, out = invoke(gateway, unique_name, str(folder), str(tmp_path / "out"), ok=False)
    assert code == 1, out  # failed
    assert time.monotonic() - started < 60
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["state"] == "failed" and cause in summary["reason"], summary
    assert "could not start" in summary["reason"]
    assert summary["mini_batches"]["done"] == summary["mini_batches"]["failed"] == 0
    job = json.loads(gateway.cli("batch", "list", "-e", unique_name)[1])[0]
    assert job["state"] == "failed" and cause in job["reason"]
    _, log = gateway.cli("batch", "logs", job["id"])
    assert cause in log, log


@pytest.mark.parametrize("files", [20, 5000])
def test_workers_that_die_at_start_fail_the_job_with_how_they_died(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str, files: int
) -> None:
    """20 files: the workers die as the first mini-batch reaches them; 5,000: while the
    runner still plans, so the pool is broken before anything is sent to it."""
    script = (
        "import os\ndef init():\n    os._exit(3)\ndef run(mini_batch):\n    return mini_batch\n"
    )
    batch_endpoint(gateway, tmp_path, model_dir, unique_name, code=script)
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(files):
        (folder / f"doc{i:04d}.txt").write_text("x")
    code, out = invoke(gateway, unique_name, str(folder), str(tmp_path / "out"), ok=False)
    assert code == 1, out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["state"] == "failed", summary
    assert "worker processes died" in summary["reason"]
    assert "exited with status 3" in summary["reason"], summary["reason"]
    _, log = gateway.cli("batch", "logs", summary["job"])
    assert "exited with status 3" in log
