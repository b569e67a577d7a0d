"""What a batch job may touch: `--batch-roots` bounds its inputs and outputs (links
followed), the gateway's home is never an output, outputs are written through new
randomly named files (a link planted at a temporary name is not written through), and a
job's error never repeats what the input file holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.batch.test_jobs import batch_endpoint, features, invoke, write_input
from tests.conftest import Gateway, assert_clean_exit, start_gateway


def test_batch_roots_bound_inputs_and_outputs(
    tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    write_input(allowed / "in", "parquet", features(1, rows=20))
    write_input(outside / "in", "parquet", features(2, rows=20))
    (allowed / "linked").mkdir()
    os.symlink(outside / "in" / "data.parquet", allowed / "linked" / "data.parquet")
    gw = start_gateway(tmp_path / "home", "--batch-roots", f"{allowed},s3://bucket/prefix")
    try:
        batch_endpoint(gw, tmp_path, model_dir, unique_name)
        cases = {
            "input outside": (str(outside / "in"), str(allowed / "out1"), "field 'input'"),
            "output outside": (str(allowed / "in"), str(outside / "out"), "field 'output'"),
            "a link out": (str(allowed / "linked"), str(allowed / "out2"), "field 'input'"),
            "home": (str(allowed / "in"), str(gw.home / "jobs"), "gateway's home folder"),
        }
        for case, (source, target, message) in cases.items():
            code, out = invoke(gw, unique_name, source, target, ok=False)
            assert code != 0 and message in out, (case, out)
            assert "--batch-roots" in out or "home" in out, (case, out)
        assert not (outside / "out").exists() and not (allowed / "out1").exists()
        _, out = invoke(gw, unique_name, str(allowed / "in"), str(allowed / "out"), "--wait")
        assert pq.read_metadata(allowed / "out" / "predictions.parquet").num_rows == 20
    finally:
        assert_clean_exit(gw)


def test_outputs_never_go_into_the_home_even_without_roots(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    write_input(tmp_path / "in", "parquet", features(3, rows=10))
    code, out = invoke(gateway, unique_name, str(tmp_path / "in"), str(gateway.home), ok=False)
    assert code != 0 and "field 'output'" in out and "home folder" in out, out
    code, out = invoke(
        gateway, unique_name, str(gateway.home / "admin_token"), str(tmp_path / "o"), ok=False
    )
    assert code != 0 and "field 'input'" in out and "home folder" in out, out


def test_links_at_temporary_names_are_not_written_through(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    write_input(tmp_path / "in", "parquet", features(4, rows=30))
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in (".summary.json.incomplete", ".predictions.parquet.incomplete"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        os.symlink(victim, out / name)
        victims[name] = victim
    # A link at the final name is replaced, never written through.
    final_victim = tmp_path / "victim-final"
    final_victim.write_text("precious")
    os.symlink(final_victim, out / "summary.json")
    invoke(gateway, unique_name, str(tmp_path / "in"), str(out), "--wait")
    for victim in (*victims.values(), final_victim):
        assert victim.read_text() == "precious", victim
    assert not (out / "summary.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["state"] == "completed"
    assert pq.read_metadata(out / "predictions.parquet").num_rows == 30


def test_a_job_error_never_repeats_the_input_content(
    gateway: Gateway, tmp_path: Path, model_dir: Path, unique_name: str
) -> None:
    """A readable file named as input (here a CSV of secrets) fails with its path and the
    kind of mismatch, not its lines or its header."""
    batch_endpoint(gateway, tmp_path, model_dir, unique_name)
    secret_header = "root:$6$Hs8ecret$hash:19000:0:99999:7:::"
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "shadow.csv").write_text(
        f"{secret_header}\ndaemon:*:19000:0:99999:7:::,second-secret-field,x\n"
    )
    pq.write_table(
        pa.table({"s3cr3t_column": ["a"] * 3, "f1": [1.0] * 3, "f2": [1.0] * 3}),
        tmp_path / "shadow" / "named.parquet",
    )
    for source in ("shadow.csv", "named.parquet"):
        code, out = invoke(
            gateway, unique_name, str(tmp_path / "shadow" / source), str(tmp_path / "o"), ok=False
        )
        assert code != 0 and source in out, out
        for secret in ("Hs8ecret", "second-secret-field", "s3cr3t_column", "19000"):
            assert secret not in out, (source, out)
        _, listed = gateway.cli("batch", "list", "-e", unique_name)
        assert "Hs8ecret" not in listed and "s3cr3t" not in listed
