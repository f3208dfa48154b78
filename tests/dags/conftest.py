"""Airflow test harness: an isolated Airflow for the DAG tests.

AIRFLOW_NOTES "Tests": everything Airflow reads at import time is set here,
at conftest import, BEFORE any test module imports airflow: a temporary
``AIRFLOW_HOME`` and SQLite metadata database, our committed secret-free
``config/airflow/cardprep.cfg``, the repository's ``dags/`` and ``plugins/``
folders, no examples, and none of the caller's ``AIRFLOW_VAR_*`` /
``AIRFLOW_CONN_*`` variables (an operator's shell must not leak a Connection
into a test).  The tables are created once per session with
``airflow.utils.db.resetdb()`` (well under a second on SQLite).

Every test under tests/dags is marked ``airflow`` automatically.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
_HOME = Path(tempfile.mkdtemp(prefix="cardprep-airflow-test-"))

for _name in [n for n in os.environ if n.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))]:
    del os.environ[_name]
for _name in [n for n in os.environ if n.startswith("AIRFLOW__")]:
    del os.environ[_name]
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW_CONFIG": str(REPO / "config" / "airflow" / "cardprep.cfg"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
    }
)


# Airflow puts plugins_folder on sys.path when it runs tasks; tests that import
# the plugin package directly need the same.
if str(REPO / "plugins") not in sys.path:
    sys.path.append(str(REPO / "plugins"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.airflow)


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Iterator[Path]:
    """Create the metadata tables once; remove the temporary AIRFLOW_HOME at the end."""
    from airflow.utils import db  # noqa: PLC0415 (after the environment above)

    db.resetdb()
    yield _HOME
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bag(airflow_db: Path) -> Any:
    """Every DAG file of ``dags/``, parsed once for the whole session."""
    from airflow.dag_processing.dagbag import DagBag  # noqa: PLC0415 (after the environment)

    return DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
