"""pytest fixtures for a real local Slurm cluster (see ``tests/helpers/slurm_cluster.py``).

Load from ``tests/conftest.py`` with ``pytest_plugins = ["tests.helpers.slurm_fixtures"]``.

- ``slurm_cluster``: a session-wide two-node cluster with accounting (slurmdbd on MariaDB, real ``sacct``).
- ``slurm_cluster_noacct``: the same without accounting (``sacct`` fails, as on many real clusters).
- ``slurm_env``: per test, puts ``SLURM_CONF`` of ``slurm_cluster`` into ``os.environ`` (and drops the variables
  of any enclosing Slurm job), for code that calls sbatch/submitit in-process.

A test that uses one of them is marked ``slurm`` automatically. When Slurm is missing or does not start, the
fixture fails loudly under CI (``CI`` set to true/1/yes) and skips with the reason otherwise. Outside CI the
packages are installed only with ``SLURM_TEST_INSTALL=1`` (``python3 -m tests.helpers.slurm_cluster install``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.slurm_cluster import _FOREIGN_PREFIXES, SlurmCluster, install, missing_packages

_FIXTURES = {"slurm_cluster", "slurm_cluster_noacct", "slurm_env"}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(why: str):
    if _truthy("CI"):
        pytest.fail(f"local Slurm cluster unavailable in CI: {why}", pytrace=False)
    pytest.skip(f"local Slurm cluster unavailable: {why}")


def _cluster(tmp_path_factory, accounting: bool):
    missing = missing_packages()
    if missing and (_truthy("CI") or _truthy("SLURM_TEST_INSTALL")):
        try:
            install(quiet=True)
        except Exception as e:
            _unavailable(f"installing {' '.join(missing)} failed: {e}")
        missing = missing_packages()
    if missing:
        _unavailable(f"packages missing: {' '.join(missing)} (python3 -m tests.helpers.slurm_cluster install)")
    folder = tmp_path_factory.mktemp("slurm-acct" if accounting else "slurm-noacct")
    own_tmp = None
    if len(str(folder)) > 60:  # unix socket paths are limited to 108 bytes: use a short temp folder instead
        folder = own_tmp = Path(tempfile.mkdtemp(prefix="slurm-"))
    cluster = SlurmCluster(folder, accounting=accounting)
    try:
        cluster.start()
    except Exception as e:
        _unavailable(f"start failed: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Two nodes (n1, n2; 2 CPUs each), partition ``debug``, with accounting."""
    yield from _cluster(tmp_path_factory, accounting=True)


@pytest.fixture(scope="session")
def slurm_cluster_noacct(tmp_path_factory):
    """Two nodes (n1, n2; 2 CPUs each), partition ``debug``, without accounting."""
    yield from _cluster(tmp_path_factory, accounting=False)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """``os.environ`` pointed at ``slurm_cluster`` for this test; returns the cluster."""
    for key in list(os.environ):
        if key.startswith(_FOREIGN_PREFIXES):
            monkeypatch.delenv(key)
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slurm)
