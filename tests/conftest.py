"""Shared fixtures. Every test that runs the launcher does so in a temporary working directory with its own
cache folder, so nothing leaks between tests or into the checkout.

The whole session runs with HOME, the XDG folders, the Hugging Face folders and TRAINIUM_LAUNCHER_CACHE pointed
at a session tmp folder, and in a tmp working directory (the default runs folder `runs` is relative to it):
no test can write into the user's real cache or runs, whether or not it asks for `isolated`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
