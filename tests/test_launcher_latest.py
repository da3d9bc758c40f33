"""Tests never touch the user's real cache or runs (the session fixture in tests/conftest.py), and the bare
`status` shows this user's latest run under the runs folder in question (`<runs_dir>/.latest-<user>`, else the
newest run.json of this user there), not one pointer shared by every user of the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.paths import data_dir
from launcher.compose import compose
from launcher.runfolder import latest_pointer
from tests.conftest import REAL_CACHE, REAL_HOME
from tests.helpers.cli import run_cli


@pytest.mark.slow
def test_cli_runs_use_the_private_home_and_status_follows_each_runs_folder(tmp_path, private_home, monkeypatch):
    assert Path(os.environ["HOME"]) == private_home != REAL_HOME
    monkeypatch.chdir(tmp_path)  # the session fixture's working folder is shared: use this test's own
    # A dataset no other run makes (its folder is named by its fingerprint), so its absence from the real cache
    # means something even while other test suites on this machine write there.
    data = ["stages=[data]", "model.vocab_size=512", f"data.val_fraction={0.01 + (os.getpid() % 997) * 1e-6:.6f}"]
    first = run_cli([*data, "cluster.runs_dir=A", "run_dir=A/one"], cwd=tmp_path)  # no cache set by the test
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    private_cache = private_home / ".cache" / "trainium-launcher"
    made = data_dir(compose(data).cfg)
    assert made.parent == private_cache / "datasets" and (made / "_stage.json").is_file()
    assert not (REAL_CACHE / "datasets" / made.name).exists(), "a CLI run in the tests wrote into the real cache"
    pointer = REAL_CACHE / "last_run"  # the old global pointer (older versions): never ours
    assert not pointer.is_file() or str(tmp_path) not in pointer.read_text()

    second = run_cli([*data, "cluster.runs_dir=B", "run_dir=B/two"], cwd=tmp_path)
    third = run_cli(data, cwd=tmp_path)  # the default run folder, under the default runs folder `runs`
    assert second.returncode == 0 and third.returncode == 0, second.stderr + third.stderr
    assert latest_pointer(Path("A")).is_file() and latest_pointer(Path("B")).is_file()
    # Another user's pointer in the same runs folder is theirs, not ours.
    (tmp_path / "A" / ".latest-someone_else").write_text(str(tmp_path / "B" / "two"))

    def shown(*args: str) -> str:
        proc = run_cli(["status", *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()[0]

    assert shown("cluster.runs_dir=A").endswith("A/one")
    assert shown("B").endswith("B/two")
    assert shown() == f"run folder: {(tmp_path / 'runs' / 'tiny-none-local').resolve()}"
    latest_pointer(tmp_path / "A").unlink()  # no pointer: the newest run.json of this user there
    assert shown("A").endswith("A/one")
    empty = run_cli(["status", "cluster.runs_dir=C"], cwd=tmp_path)
    assert empty.returncode == 2 and "no run of yours under C" in empty.stderr
