"""The package layout the design card fixes: the dependency direction between our
top-level packages, and no import cycle between them (deferred imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# Runs once, on the SQLite pass: what it checks does not depend on the store.
pytestmark = pytest.mark.store_independent

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("servegate", "gateway", "runtimes", "batch", "deploy", "monitoring", "loadtests")

# What each package may import. `runtimes` is the leaf; `servegate` is the top, and the
# one place that may import `loadtests` (for the `servegate loadtest` command).
ALLOWED = {
    "runtimes": set(),
    "deploy": {"runtimes"},
    "batch": {"deploy", "runtimes"},
    # reads what the data collector wrote (batch's storage locations), judges it
    "monitoring": {"deploy", "batch"},
    "gateway": {"deploy", "batch", "runtimes", "monitoring"},
    "loadtests": {"gateway", "runtimes"},
    "servegate": {"gateway", "batch", "deploy", "runtimes", "loadtests"},
}


def package_imports() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package:
                        graph[package].setdefault(top, []).append(str(path.relative_to(ROOT)))
    return graph


def test_every_import_follows_the_dependency_direction() -> None:
    wrong = {
        f"{package} -> {target} ({', '.join(sorted(set(files)))})"
        for package, targets in package_imports().items()
        for target, files in targets.items()
        if target not in ALLOWED[package]
    }
    assert not wrong, wrong


def test_no_package_cycle() -> None:
    graph = {p: set(targets) for p, targets in package_imports().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in graph[start] - seen)

    cyclic = [p for p in PACKAGES if reaches(p, p, set())]
    assert not cyclic, cyclic


def test_nothing_imports_the_top_package() -> None:
    importers = [p for p, targets in package_imports().items() if "servegate" in targets]
    assert importers == []


def _record_writes() -> set[str]:
    """The store's methods that write control-plane records (specs, models, keys,
    rollouts, jobs, mini-batches, admin tokens), and with them the audit log."""
    from deploy.store.base import Store

    return {name for name in vars(Store) if name.startswith(("put_", "add_", "update_", "delete_"))}


def test_only_the_control_plane_writes_records() -> None:
    """`deploy/` is the one writer: no other package calls (or hands out) a store
    method that writes a record; they go through the control plane (`ControlPlane`,
    its `JobLedger`)."""
    writes = _record_writes()
    assert {"put_job", "put_rollout", "put_endpoint", "put_mini_batch"} <= writes
    found = []
    for package in PACKAGES:
        if package == "deploy":
            continue
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Attribute) or node.attr not in writes:
                    continue
                receiver = node.value  # `store.put_job`, `self.store.put_job`, ...
                name = receiver.attr if isinstance(receiver, ast.Attribute) else None
                if isinstance(receiver, ast.Name):
                    name = receiver.id
                if name is not None and "store" in name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert not found, found


def test_the_declared_python_is_the_one_checked_and_documented() -> None:
    """requires-python is what the type checker, the linter and the README assume, and
    this interpreter satisfies it (the code uses 3.11's StrEnum and datetime.UTC)."""
    import re
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = project["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*3\.(\d+)", declared)
    assert minimum, declared
    minor = int(minimum.group(1))
    assert project["tool"]["mypy"]["python_version"] == f"3.{minor}"
    assert project["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert f"Python >= 3.{minor}" in (ROOT / "README.md").read_text()
    assert sys.version_info >= (3, minor)


def test_every_store_pass_runs_and_reports_when_an_earlier_one_fails(tmp_path: Path) -> None:
    """scripts/test's loop over the stores, with a pytest that fails on the first store:
    the second still runs, both are reported, and the script fails."""
    import subprocess

    script = (ROOT / "scripts" / "test").read_text()
    loop = script[script.index("first=1\n") :]
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        '#!/usr/bin/env bash\necho "ran $SERVEGATE_TEST_STORE: $*" >> calls.txt\n'
        '[ "$SERVEGATE_TEST_STORE" != sqlite ]\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nstores='sqlite postgresql'\n{loop}", "bash", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert [c.split(":")[0] for c in calls] == ["ran sqlite", "ran postgresql"], calls
    assert "not store_independent" in calls[1] and "-q" in calls[0]
    assert done.returncode == 1
    assert "the test suite failed on: sqlite" in done.stdout, done.stdout
