"""`executor: ray`: a job's mini-batches on a Ray cluster, one actor per worker, each
holding the loaded model.

The runner keeps everything else as with local workers: the plan, the job's state in
the store, retries, timeouts, cancel and resume. An actor reads its mini-batch as a
local worker does (from the job folder's plan and the input itself: S3 inputs are read
by the actors directly, with the runner's S3 settings) and writes its output part into
the job folder, so the job folder must be where every node of the cluster sees it (one
node, or a shared mount at the same path).
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

import ray
import ray.exceptions

from batch import worker
from batch.executors import ExecutorRequest
from deploy.objectstore import s3_environment
from runtimes.base import RuntimeConfig
from runtimes.ray_impl import cluster_address, connect
from runtimes.ray_replica import Files, pack, unpack
from runtimes.registry import load_runtime


class BatchWorker:
    """One Ray actor: one loaded runtime, one mini-batch at a time."""

    def __init__(
        self,
        runtime_name: str,
        config: RuntimeConfig,
        model_files: Files,
        code_files: Files,
        input_uri: str,
        storage_environment: dict[str, str],
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="servegate-batch-")
        config = unpack(config, model_files, code_files, Path(self._folder.name))
        # The runner's S3 settings: the actor reads S3 inputs as the runner would (the
        # node's own AWS settings stay where the runner sets none).
        os.environ.update(storage_environment)
        os.environ.update(config.environment)
        worker.adopt_or_remember(
            lambda: load_runtime(runtime_name, config), runtime_name, input_uri
        )

    def score(self, job_dir: str, index: int, format_name: str) -> tuple[int, float]:
        return worker.score(job_dir, index, format_name)


class RayActors:
    """`Executor` over Ray actors."""

    worker_died: ClassVar[type[BaseException]] = ray.exceptions.RayActorError

    def __init__(self, request: ExecutorRequest) -> None:
        self.request = request
        self._actors: list[Any] = []
        self._pending: list[int] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        request = self.request
        connect(cluster_address(request.ray))
        model_files, code_files = pack(request.config)
        remote = ray.remote(BatchWorker).options(
            max_restarts=0, **(dict(request.ray.actor_options) or {"num_cpus": 1})
        )
        self._actors = [
            remote.remote(
                request.runtime_name,
                request.config,
                model_files,
                code_files,
                request.input_uri,
                s3_environment(),
            )
            for _ in range(request.workers)
        ]
        self._pending = [0] * len(self._actors)

    def submit(self, job_dir: str, index: int, format_name: str) -> Future[tuple[int, float]]:
        # The actor with the least work queued; each scores one mini-batch at a time.
        pending = self._pending  # this generation's (a restart makes a new list)
        with self._lock:
            slot = min(range(len(pending)), key=pending.__getitem__)
            pending[slot] += 1
        future: Future[tuple[int, float]] = (
            self._actors[slot].score.remote(job_dir, index, format_name).future()
        )

        def done(_: Future[tuple[int, float]]) -> None:  # on one of Ray's threads
            with self._lock:
                pending[slot] -= 1

        future.add_done_callback(done)
        return future

    def restart(self) -> None:
        self.stop()
        self.start()

    def death_cause(self) -> str:
        return ""  # Ray's RayActorError says it

    def stop(self) -> None:
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
