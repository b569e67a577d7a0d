"""How the CLI prints an answer, as `az` does: `--query` (a JMESPath expression) picks
part of it, then `-o/--output` renders it as JSON (the default), YAML, a table, or
tab-separated values for shell scripts (`-o tsv --query primaryKey` prints the bare key).
"""

from __future__ import annotations

import io
import shutil
import sys
from typing import Any

import click
import jmespath
import orjson
import yaml
from jmespath.exceptions import JMESPathError

FORMATS = ("json", "yaml", "table", "tsv")


def select(doc: Any, query: str | None) -> Any:
    if not query:
        return doc
    try:
        return jmespath.search(query, doc)
    except JMESPathError as exc:
        raise click.BadParameter(
            f"not a JMESPath expression: {exc}", param_hint="--query"
        ) from None


#: A table's width when the output is not a terminal (a pipe, a file, a CI log)
TABLE_WIDTH = 100


def render(doc: Any, fmt: str, columns: tuple[str, ...] = ()) -> str:
    """`columns`: the fields a table shows (a command's own pick of what fits a line);
    empty: every scalar field."""
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip("\n")
    if fmt == "tsv":
        return "\n".join(_tsv_lines(doc))
    if fmt == "table":
        return _table(doc, columns)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def _cell(value: Any) -> str:
    """One value as az's tsv and table print it: text bare, nothing for null."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


def _tsv_lines(doc: Any) -> list[str]:
    """az's tsv: a scalar alone; a mapping as one line of its scalar values (nested
    objects are left out, as az leaves them); a list of scalars as one line; another
    list as one line per item."""
    if isinstance(doc, list):
        if all(not isinstance(item, (dict, list)) for item in doc):
            return ["\t".join(_cell(item) for item in doc)] if doc else []
        return [line for item in doc for line in _tsv_lines(item)]
    if isinstance(doc, dict):
        return ["\t".join(_cell(v) for v in doc.values() if not isinstance(v, (dict, list)))]
    return [_cell(doc)]


def table_width() -> int:
    """The terminal's width, else TABLE_WIDTH."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    return TABLE_WIDTH


def _table(doc: Any, picked: tuple[str, ...] = ()) -> str:
    """A table of the scalar fields (or the `picked` ones): one row per item of a list,
    one row for a mapping, as wide as the terminal (long cells wrap)."""
    from rich.console import Console
    from rich.table import Table

    rows = doc if isinstance(doc, list) else [doc]
    if not all(isinstance(row, dict) for row in rows):
        return "\n".join(_cell(row) for row in rows)
    columns: list[str] = [c for c in picked if any(c in row for row in rows)]
    if not columns:
        for row in rows:
            for key, value in row.items():
                if key not in columns and not isinstance(value, (dict, list)):
                    columns.append(key)
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    sink = io.StringIO()
    Console(file=sink, width=table_width(), color_system=None).print(table)
    return "\n".join(line.rstrip() for line in sink.getvalue().rstrip("\n").splitlines())
