"""The import contracts of DESIGN.md, checked without import-linter too.

import-linter (run by tests/run.sh) checks the import graph; this test
independently greps the sources so the rule holds even when only pytest runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
CRYPTO_ONLY = ("cryptography", "gmssl", "gmpy2")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_pipeline_never_imports_airflow() -> None:
    offenders = [p for p in PIPELINE.rglob("*.py") if "airflow" in _imports(p)]
    assert offenders == []


def test_only_crypto_imports_crypto_libraries() -> None:
    offenders = [
        (str(p.relative_to(PIPELINE)), sorted(_imports(p) & set(CRYPTO_ONLY)))
        for p in PIPELINE.rglob("*.py")
        if "crypto" not in p.relative_to(PIPELINE).parts and _imports(p) & set(CRYPTO_ONLY)
    ]
    assert offenders == []


def test_nothing_on_airflow_path_is_named_pipeline() -> None:
    root = PIPELINE.parent
    clashes = [
        p for d in ("dags", "plugins", "config") for p in (root / d).rglob("pipeline*")
    ]
    assert clashes == []
