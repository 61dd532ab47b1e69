"""The scale-out engines started for real on 127.0.0.1 (PostgreSQL, an MLflow tracking server, a SLURM
cluster on this machine — one node, and the machine emulated as two for multi-node DDP): every test in this
folder is marked ``engines`` — ``make test-engines`` runs them, ``make test`` does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engines.servers import mlflow_server, postgres  # noqa: F401 - fixtures
from tests.engines.slurm_cluster import slurm_cluster  # noqa: F401 - fixture

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.engines)
