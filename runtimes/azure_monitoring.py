"""Azure ML's custom logging API for scoring scripts, `azureml.ai.monitoring.Collector`,
so a script written for Azure ML runs unchanged:

    from azureml.ai.monitoring import Collector
    inputs_collector = Collector(name="model_inputs")
    context = inputs_collector.collect(input_df)          # in run()

Where Azure's package is not installed, `install` makes that import find this module.
`collect()` hands the rows to the deployment's data collector (the collection of that name
under `data_collector.collections`, when enabled), through `sink`; it never raises into
the script (errors go to `on_error`, as in Azure's client).
"""

from __future__ import annotations

import importlib.util
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

#: (collection, rows, correlation id) -> None; set by the host that runs the script
Sink = Callable[[str, list[dict[str, Any]], str], None]
_sink: Sink | None = None


class BasicCorrelationContext:
    """Azure's correlation context: ties the rows of one request's collections together."""

    def __init__(self, id: str | None = None, headers: dict[str, str] | None = None) -> None:
        self._id = id or str(uuid.uuid4())
        self._headers = headers or {}

    def get_id(self) -> str:
        return self._id

    def get_headers(self) -> dict[str, str]:
        return self._headers


def _rows(data: Any) -> list[dict[str, Any]]:
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas, without importing it
        return list(data.to_dict("records"))
    if isinstance(data, dict):
        return [data]
    return [dict(row) if isinstance(row, dict) else {"value": row} for row in data]


class Collector:
    def __init__(
        self,
        *,
        name: str,
        on_error: Callable[[Exception], None] | None = None,
        **_: Any,
    ) -> None:
        self.name = name
        self._on_error = on_error

    def collect(self, data: Any, correlation_context: Any = None) -> Any:
        context = correlation_context or BasicCorrelationContext()
        try:
            if _sink is not None:
                _sink(self.name, _rows(data), str(context.get_id()))
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)
        return context


def install(sink: Sink) -> None:
    """Send collected rows to `sink`; make `azureml.ai.monitoring` importable as this
    module unless Azure's own package is installed (then scripts use that one)."""
    global _sink
    _sink = sink
    try:
        found = importlib.util.find_spec("azureml.ai.monitoring")
    except ModuleNotFoundError:
        found = None
    if found is not None:
        return
    this = sys.modules[__name__]
    for name in ("azureml", "azureml.ai"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    sys.modules["azureml.ai.monitoring"] = this
    context = types.ModuleType("azureml.ai.monitoring.context")
    context.BasicCorrelationContext = BasicCorrelationContext  # type: ignore[attr-defined]
    sys.modules["azureml.ai.monitoring.context"] = context
