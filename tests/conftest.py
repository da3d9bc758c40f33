"""Shared fixtures (helpers live in tests/helpers/). Every test that runs the launcher does so in a temporary
working directory with its own cache folder, so nothing leaks between tests or into the checkout.

The whole session runs with HOME, the XDG folders, the Hugging Face folders and TRAINIUM_LAUNCHER_CACHE pointed
at a session tmp folder, and in a tmp working directory (the default runs folder `runs` is relative to it):
no test can write into the user's real cache or runs, whether or not it asks for `isolated`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.helpers.slurm_fixtures"]

# The user's real home and launcher cache, as they were before the session fixture moved them.
REAL_HOME = Path(os.path.expanduser("~"))
REAL_CACHE = Path(os.environ.get("TRAINIUM_LAUNCHER_CACHE") or REAL_HOME / ".cache" / "trainium-launcher")
_HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE")


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    """HOME, XDG_*, HF_* and the launcher cache in a session tmp folder; cwd a tmp folder. Returns the home."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        mp.setenv(var, str(home / sub))
    for var in _HF_VARS:
        mp.delenv(var, raising=False)
    mp.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    mp.setenv("TRAINIUM_LAUNCHER_CACHE", str(home / ".cache" / "trainium-launcher"))
    work = home / "work"
    work.mkdir()
    mp.chdir(work)
    yield home
    mp.undo()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """cwd = an empty folder, cache = a folder beside it; returns the cwd."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TRAINIUM_LAUNCHER_CACHE", str(tmp_path / "cache"))
    return work


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The cache folder holding the sample corpus prepared for the small test model (made once per session)."""
    from core.marker import STAGE_MARKER
    from core.paths import data_dir
    from tests.helpers.training import ROOT as _root
    from tests.helpers.training import env, job_command, small_config, write_config

    cache = tmp_path_factory.getbasetemp() / "train-cache"
    cfg = small_config(cache)
    if not (data_dir(cfg) / STAGE_MARKER).exists():
        run_dir = tmp_path_factory.getbasetemp() / "train-data-run"
        write_config(run_dir, cfg)
        proc = subprocess.run(
            job_command(run_dir, "data"), env=env(2), capture_output=True, text=True, timeout=600, cwd=_root
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return cache


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="run the whole suite, slow tests included (the README's test command and CI use it)",
    )


def pytest_collection_modifyitems(config, items):
    """Without --full, tests marked slow (and every Slurm or multi-process test) are skipped: `pytest` alone is the
    fast development run."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="slow: `python -m pytest --full` runs the whole suite")
    for item in items:
        if {"slow", "slurm", "distributed"} & set(item.keywords):
            item.add_marker(skip)
